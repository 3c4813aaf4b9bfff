"""The device store: one SQLite file holding the entity tables, `_outbox`, `_quarantine`,
`_sync_state` and `_meta` (schema created from the device schema JSON, WAL journal), encrypted
with SQLCipher when opened with a key (`store_cipher.py`, docs/device-store.md).

Every change goes through `transaction()`, a `BEGIN IMMEDIATE ... COMMIT` on the one connection
the client shares between the app's threads and the background sync thread (a re-entrant lock
serialises them). The app's own writes go through `write()`, which joins the `batch()` the
calling thread holds open (`client.transaction()`) or else is a transaction of its own. Nothing
here talks to the network.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterator, Mapping

from fieldsync.client.schema import DeviceSchema, EntityTable, quote
from fieldsync.client.store_cipher import encrypt_plain_store, open_connection, rekey
from fieldsync.errors import ClientError

STORE_FORMAT = "1"


class LocalStore:
    """The open device store and its schema.

    `key` (32 bytes, from `StoreHeader.derive`) opens the store with SQLCipher; a plain store
    opened with a key is encrypted in place first. Without a key the store is plain SQLite.
    """

    def __init__(self, path: str | Path, *, key: bytes | None = None):
        self.path = str(path)
        self.lock = threading.RLock()
        self.conn = open_connection(self.path, key)
        self.encrypted = key is not None
        self._configure()
        self._in_transaction = False
        self.batch_depth = 0          # batch() levels open (only the thread holding `lock` sees > 0)
        self._batch_broken = False    # a write inside the batch failed part way: it cannot commit
        self.schema: DeviceSchema | None = None
        stored = self._meta_value("schema")
        if stored is not None:
            self.schema = DeviceSchema(json.loads(stored))

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def initialised(self) -> bool:
        return self.schema is not None

    def _configure(self) -> None:
        self.conn.execute("PRAGMA busy_timeout = 30000")
        if self.path != ":memory:":
            self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")  # a committed page survives a power cut

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def rekey(self, key: bytes) -> None:
        """Encrypt the store under `key`: `PRAGMA rekey` when it is encrypted, an in-place
        migration when it is plain. Other threads wait on the lock meanwhile, and find the
        (new) connection when they get it."""
        with self.lock:
            if self._in_transaction:
                raise RuntimeError("cannot rekey inside a local transaction")
            if self.encrypted:
                rekey(self.conn, self.path, key)
                return
            if self.path == ":memory:":
                raise ValueError("an in-memory store cannot be encrypted")
            self.conn.close()
            try:
                encrypt_plain_store(self.path, key)
            except BaseException:
                self.conn = open_connection(self.path, None)   # the plain store, untouched
                self._configure()
                raise
            self.conn = open_connection(self.path, key)
            self.encrypted = True
            self._configure()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One local transaction: everything inside commits together or not at all."""
        with self.lock:
            if self._in_transaction:
                raise RuntimeError("local transactions do not nest")
            self.conn.execute("BEGIN IMMEDIATE")
            self._in_transaction = True
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            else:
                _commit(self.conn)
            finally:
                self._in_transaction = False

    def write(self) -> "WriteScope":
        """The transaction of one local write (row and outbox entry): the open `batch()` of the
        calling thread when there is one, else its own `BEGIN IMMEDIATE ... COMMIT`."""
        return WriteScope(self)

    @contextlib.contextmanager
    def batch(self) -> Iterator[sqlite3.Connection]:
        """Many local writes in one transaction (`client.transaction()`): the outermost level
        is `BEGIN IMMEDIATE ... COMMIT`, a nested one a SAVEPOINT, so an exception leaving a
        level undoes that level's writes only. A level whose block ends normally although a
        write inside it failed part way (the app caught a database error) is rolled back and
        raises ClientError: a row never commits without its outbox entry."""
        with self.lock:
            depth = self.batch_depth
            conn = self.conn
            if depth == 0:
                if self._in_transaction:
                    raise ClientError("client.transaction() cannot start inside another local transaction")
                conn.execute("BEGIN IMMEDIATE")
                self._in_transaction = True
                self._batch_broken = False
            else:
                conn.execute(f'SAVEPOINT "batch_{depth}"')
            broken_before = self._batch_broken
            self.batch_depth = depth + 1
            finished = False
            try:
                yield conn
                finished = True
            finally:
                self.batch_depth = depth
                keep = finished and not self._batch_broken
                try:
                    if depth == 0:
                        self._in_transaction = False
                        if keep:
                            _commit(conn)
                        else:
                            conn.execute("ROLLBACK")
                    else:
                        if not keep:
                            conn.execute(f'ROLLBACK TO "batch_{depth}"')
                            self._batch_broken = broken_before   # the partial write is undone
                        conn.execute(f'RELEASE "batch_{depth}"')
                finally:
                    if depth == 0:
                        self._batch_broken = False
                if finished and not keep:
                    raise ClientError("the transaction was rolled back: a write inside it failed part way "
                                      "and its error was caught inside the block")

    def create(self, schema: DeviceSchema) -> None:
        """Create a fresh store from `schema`, in one transaction (a crash leaves no half store)."""
        with self.transaction() as conn:
            for statement in schema.create_statements():
                conn.execute(statement)
            self._write_meta(conn, schema)
        self.schema = schema

    def migrate(self, schema: DeviceSchema) -> list[str]:
        """Bring the store to `schema` additively in one transaction; returns the steps run.

        Never drops a table, a column or an outbox entry (invariant 9). A schema older than
        the store's is refused (ValueError): versions only move forward.
        """
        current = self.schema
        if current is not None and schema.version < current.version:
            raise ValueError(f"schema version {schema.version} is older than the store's {current.version}")
        with self.transaction() as conn:
            existing = {row["name"]: [c["name"] for c in conn.execute(f"PRAGMA table_info({quote(row['name'])})")]
                        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            steps = schema.migration_statements(existing)
            for statement in steps:
                conn.execute(statement)
            _rename_unsent_fields(conn, schema)
            self._write_meta(conn, schema)
        self.schema = schema
        return steps

    def _write_meta(self, conn: sqlite3.Connection, schema: DeviceSchema) -> None:
        meta = {"app": schema.app, "schema_version": str(schema.version), "fingerprint": schema.fingerprint,
                "schema": schema.to_json(), "store_format": STORE_FORMAT}
        conn.executemany('INSERT OR REPLACE INTO "_meta" (key, value) VALUES (?, ?)', meta.items())
        conn.execute(f"PRAGMA user_version = {int(schema.version)}")

    def _meta_value(self, key: str) -> str | None:
        exists = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_meta'").fetchone()
        if not exists:
            return None
        row = self.conn.execute('SELECT value FROM "_meta" WHERE key = ?', (key,)).fetchone()
        return row["value"] if row else None

    @property
    def schema_version(self) -> int:
        assert self.schema is not None
        return self.schema.version

    # -- _sync_state ------------------------------------------------------------------------------

    def state(self, key: str, default: Any = None) -> Any:
        """A `_sync_state` value, JSON-decoded."""
        with self.lock:
            row = self.conn.execute('SELECT value FROM "_sync_state" WHERE key = ?', (key,)).fetchone()
        return default if row is None or row["value"] is None else json.loads(row["value"])

    @staticmethod
    def state_in(conn: sqlite3.Connection, key: str, default: Any = None) -> Any:
        """A `_sync_state` value read inside the caller's transaction."""
        row = conn.execute('SELECT value FROM "_sync_state" WHERE key = ?', (key,)).fetchone()
        return default if row is None or row["value"] is None else json.loads(row["value"])

    def set_state(self, conn: sqlite3.Connection, **values: Any) -> None:
        """Set `_sync_state` keys inside the caller's transaction."""
        conn.executemany('INSERT OR REPLACE INTO "_sync_state" (key, value) VALUES (?, ?)',
                         [(k, None if v is None else json.dumps(v)) for k, v in values.items()])

    # -- entity rows ------------------------------------------------------------------------------

    def table(self, entity: str) -> EntityTable:
        assert self.schema is not None
        return self.schema.entity(entity)

    def row(self, conn: sqlite3.Connection, table: EntityTable, record_id: str) -> sqlite3.Row | None:
        return conn.execute(f"SELECT * FROM {quote(table.table)} WHERE id = ?", (record_id,)).fetchone()

    def to_wire(self, table: EntityTable, row: sqlite3.Row) -> dict[str, Any]:
        """A stored row as the app sees it: `id`, fields in wire form, server version and times."""
        keys = row.keys()
        record = {"id": row["id"]}
        for c in table.columns:
            if c.name in keys:
                record[c.name] = c.from_storage(row[c.name])
        record["version"] = row["_version"]
        record["created_at"] = row["_created_at"]
        record["updated_at"] = row["_updated_at"]
        return record

    def write_server_row(self, conn: sqlite3.Connection, table: EntityTable, record_id: str,
                         row: Mapping[str, Any], version: int) -> None:
        """Replace the local row with the server's: every field from `row` (absent ones NULL,
        so a field hidden from the role is cleared), server version and times, clean."""
        conn.execute(table.server_row_sql, table.server_row_values(record_id, row, int(version)))

    def delete_row(self, conn: sqlite3.Connection, table: EntityTable, record_id: str, *,
                   only_clean: bool = True) -> None:
        """Delete a local row (a clean one unless told otherwise) and, since a child is in scope
        exactly when its parent is, the clean rows of its children (decision 7)."""
        clean = " AND _dirty = 0" if only_clean else ""
        cursor = conn.execute(f"DELETE FROM {quote(table.table)} WHERE id = ?{clean}", (record_id,))
        if cursor.rowcount:
            self.delete_children(conn, table, [record_id])

    def delete_clean_rows(self, conn: sqlite3.Connection, table: EntityTable, record_ids: list[str]) -> None:
        """`delete_row` of many clean rows at once (the same rows go, children included)."""
        doomed = self._clean_ids(conn, table, "id", record_ids)
        self._delete_ids(conn, table, doomed)
        if doomed and self.schema is not None and self.schema.children_of(table.name):
            self.delete_children(conn, table, doomed)

    def delete_children(self, conn: sqlite3.Connection, table: EntityTable, parent_ids: list[str]) -> None:
        assert self.schema is not None
        for child in self.schema.children_of(table.name):
            if not child.parent_field:
                continue
            ids = self._clean_ids(conn, child, child.parent_field, parent_ids)
            self._delete_ids(conn, child, ids)
            if ids:
                self.delete_children(conn, child, ids)

    @staticmethod
    def _clean_ids(conn: sqlite3.Connection, table: EntityTable, column: str, values: list[str]) -> list[str]:
        """The ids of the clean rows whose `column` is one of `values` (500 bound values a query)."""
        ids: list[str] = []
        for start in range(0, len(values), 500):
            chunk = values[start:start + 500]
            ids += [r[0] for r in conn.execute(
                f"SELECT id FROM {quote(table.table)} WHERE {quote(column)} IN ({', '.join('?' for _ in chunk)}) "
                "AND _dirty = 0", chunk)]
        return ids

    @staticmethod
    def _delete_ids(conn: sqlite3.Connection, table: EntityTable, ids: list[str]) -> None:
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            conn.execute(f"DELETE FROM {quote(table.table)} WHERE id IN ({', '.join('?' for _ in chunk)})", chunk)


class WriteScope:
    """`with store.write() as conn:` (a class, not a generator: it runs once per local write).

    Inside a batch, a write that fails after it may have changed something (any error but a
    ClientError, which the write functions raise before their first change) marks the batch
    broken, so it rolls back instead of committing a row without its outbox entry."""

    __slots__ = ("store", "own")

    def __init__(self, store: LocalStore):
        self.store = store
        self.own = False

    def __enter__(self) -> sqlite3.Connection:
        store = self.store
        store.lock.acquire()
        try:
            if not store.batch_depth:
                if store._in_transaction:
                    raise RuntimeError("local transactions do not nest")
                store.conn.execute("BEGIN IMMEDIATE")
                store._in_transaction = True
                self.own = True
        except BaseException:
            store.lock.release()
            raise
        return store.conn

    def __exit__(self, exc_type, exc, tb) -> None:
        store = self.store
        try:
            if self.own:
                store._in_transaction = False
                if exc_type is None:
                    _commit(store.conn)
                else:
                    store.conn.execute("ROLLBACK")
            elif exc_type is not None and not issubclass(exc_type, ClientError):
                store._batch_broken = True
        finally:
            store.lock.release()


def _commit(conn: sqlite3.Connection) -> None:
    """COMMIT, or ROLLBACK when the commit itself fails (a full disk): never left half open."""
    try:
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _rename_unsent_fields(conn: sqlite3.Connection, schema: DeviceSchema) -> None:
    """docs/protocol.md §7.2: an outbox entry has no schema version of its own; a push carries the
    store's. So the migration renames, in the fields of every entry not sent yet (`pending`) and
    of every quarantined one (resubmitted later), each name a column lists in `renamed_from`.
    Entries already `sent` are not rewritten: they may have been received as they are; the SDK
    migrates only at a pull, after its pushes were answered, so it has none then."""
    for table in schema.entities.values():
        renames = {old: c["name"] for c in table.raw.get("columns", ()) for old in c.get("renamed_from") or ()}
        if not renames:
            continue
        for source, where in (("_outbox", "AND status = 'pending'"), ("_quarantine", "")):
            rows = conn.execute(f'SELECT seq, fields FROM "{source}" WHERE entity = ? {where}', (table.name,)).fetchall()
            for seq, text in rows:
                fields = json.loads(text)
                if any(name in renames for name in fields):
                    fields = {renames.get(name, name): value for name, value in fields.items()}
                    conn.execute(f'UPDATE "{source}" SET fields = ? WHERE seq = ?', (json.dumps(fields, sort_keys=True), seq))
