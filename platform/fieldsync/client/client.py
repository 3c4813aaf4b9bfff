"""`Client`: the device side of fieldsync sync, over a local SQLite store.

Local writes are instant and offline (row + outbox entry in one transaction; `transaction()` and
`insert_many()` make many writes one commit); `sync()` talks
to the server; `start()` keeps syncing in a background thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import threading
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

from fieldsync.backoff import Backoff
from fieldsync.client import conflicts, outbox
from fieldsync.client.background import BASE_DELAY, CAP_DELAY, BackgroundSync, Wait
from fieldsync.client.engine import SyncEngine
from fieldsync.client.bundles import BundleProgress
from fieldsync.client.media import MediaQueue
from fieldsync.client.outbox_bundle import BUNDLE_OVER, BUNDLE_OVER_BYTES, UPLOAD_CHUNK, OutboxBundles
from fieldsync.errors import ClientError, StoreLocked, ValidationError, ValueProblem, WrongStoreKey
from fieldsync.client.reports import Conflict, QuarantinedMutation, Status, SyncReport
from fieldsync.client.schema import DeviceSchema, quote
from fieldsync.client.store import LocalStore
from fieldsync.client.store_key import StoreHeader, StoreKey
from fieldsync.client.transport import Transport
from fieldsync.client.wire import TokenSource, Wire
from fieldsync.defs.values import FieldProblem, normalize_value


class Client:
    """One device: its store at `path`, talking to a server through `transport`.

    `token` is a bearer token, or a callable returning the current one: it is asked on every
    request (answer from a cache) and once more after a 401. `schema` is the device schema JSON (`generated/device/schema.json`) the store is
    created from on first open; with None it is fetched from the server then (the only time
    the constructor uses the network). A newer `schema` than the store's (an app update)
    migrates the store additively. `clock` returns the current UTC time; `rng` drives the
    backoff jitter.

    `store_key` (a `StoreKey`: the device secret from `enroll()`, and the user's PIN when the
    app sets one) opens the store with SQLCipher; a plain store is encrypted in place on the
    way. Without it the store is plain SQLite: apps that hold PHI must set one
    (docs/device-store.md). A wrong key raises `WrongStoreKey`, an encrypted store opened
    without one `StoreLocked`.

    An outbox holding `bundle_over` sendable writes or more, or `bundle_over_bytes` bytes of
    their fields, is pushed as one resumable, encrypted upload (an outbox bundle, protocol
    §4.7) in PATCHes of `upload_chunk` bytes when the server offers bundles; None for both
    thresholds pushes in batches of `push_batch` only.
    """

    def __init__(self, path: str | Path, transport: Transport, token: TokenSource, *,
                 schema: Mapping[str, Any] | None = None, install_info: Mapping[str, Any] | None = None,
                 clock: Callable[[], dt.datetime] | None = None, rng: random.Random | None = None,
                 push_batch: int = 500, pull_limit: int = 1000, store_key: StoreKey | None = None,
                 bundles: bool = True, bundle_over: int | None = BUNDLE_OVER,
                 bundle_over_bytes: int | None = BUNDLE_OVER_BYTES, upload_chunk: int = UPLOAD_CHUNK):
        self._clock = clock or outbox.now_utc
        self._rng = rng or random.Random()
        self._path = str(path)
        self._header = StoreHeader.read(self._path) if self._path != ":memory:" else None
        self._store = self._open_store(store_key)
        self._wire = Wire(transport, token, device_version=lambda: self._store.schema_version, clock=self._clock)
        outbox_bundles = OutboxBundles(self._store, self._wire, clock=self._clock, over=bundle_over,
                                       over_bytes=bundle_over_bytes, upload_chunk=upload_chunk)
        self._engine = SyncEngine(self._store, self._wire, clock=self._clock, install_info=install_info,
                                  push_batch=push_batch, pull_limit=pull_limit, bundles=bundles,
                                  outbox_bundles=outbox_bundles)
        self._sync_lock = threading.Lock()
        self._writes = threading.local()   # last_seq, per thread: another thread's writes never show
        self._progress: Callable[[int, int], None] | None = None
        self._error: Callable[[BaseException], None] | None = None
        self._background: BackgroundSync | None = None
        try:
            self._open(schema)
        except BaseException:
            self._store.close()
            raise
        self._media = MediaQueue(self._store, self._wire, clock=self._clock,
                                 backoff=Backoff(base=5.0, cap=3600.0, rng=self._rng))

    def _open_store(self, store_key: StoreKey | None) -> LocalStore:
        if store_key is None:
            return LocalStore(self._path)
        header = self._enrolled_header()
        try:
            store = LocalStore(self._path, key=header.derive(store_key))
        except WrongStoreKey:
            if header.pin and store_key.pin is None:
                why = "the store is protected by a PIN and none was given"
            elif not header.pin and store_key.pin is not None:
                why = "a PIN was given but the store has none"
            else:
                why = "a wrong device secret or PIN, or a damaged file"
            raise WrongStoreKey(self._path, f"the store at {self._path} does not open with this key ({why})") \
                from None
        # the key that opened the store says whether it has a PIN: a new store records it, and
        # a crash between a rekey and its header update heals here
        try:
            self._record_pin(store_key)
        except BaseException:
            store.close()
            raise
        return store

    def _enrolled_header(self) -> StoreHeader:
        if self._header is None:
            raise StoreLocked(self._path, f"there is no store header at {StoreHeader.path_for(self._path)}: "
                                          "enroll the device first (fieldsync.client.enroll), which writes it")
        return self._header

    def _open(self, schema: Mapping[str, Any] | None) -> None:
        if not self._store.initialised:
            document = schema if schema is not None else self._engine.fetch_schema()
            self._store.create(DeviceSchema(document))
        if self._header is not None and self._store.state("install_id") is None:
            # enroll() registered this install id: the first sync registers it again (idempotent,
            # the same device) instead of making a second device
            with self._store.transaction() as conn:
                self._store.set_state(conn, install_id=self._header.install_id)
        elif schema is not None:
            wanted = DeviceSchema(schema)
            current = self._store.schema
            assert current is not None
            if wanted.version > current.version or (wanted.version == current.version
                                                    and wanted.fingerprint != current.fingerprint):
                self._store.migrate(wanted)

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop background sync and close the store."""
        self.stop()
        self._store.close()
        close = getattr(self._wire.transport, "close", None)
        if close is not None:
            close()

    def rekey(self, store_key: StoreKey) -> None:
        """Re-encrypt the store under `store_key` (a new PIN, no PIN, or a new device secret);
        a plain store is encrypted in place, its outbox and everything else kept. Safe while
        background sync runs: local work waits for the rekey. Afterwards only `store_key` opens
        the store."""
        self._store.rekey(self._enrolled_header().derive(store_key))
        self._record_pin(store_key)   # after the rekey: a crash in between leaves a stale hint only

    def _record_pin(self, store_key: StoreKey) -> None:
        header = self._enrolled_header()
        pin = store_key.pin is not None
        if header.pin != pin:
            self._header = header.with_pin(pin)
            self._header.write(self._path)

    @property
    def encrypted(self) -> bool:
        """True when the store is encrypted (SQLCipher)."""
        return self._store.encrypted

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- local data ------------------------------------------------------------------------------

    def insert(self, entity: str | type, fields: Mapping[str, Any]) -> str:
        """Create a record on the device; returns its id (a UUIDv7), and `last_seq` its outbox
        seq. No network."""
        record_id, seq = outbox.write_insert(self._store, self._entity_name(entity), fields, self._clock())
        self._written(seq)
        return record_id

    def insert_many(self, entity: str | type, rows: Iterable[Mapping[str, Any]]) -> list[str]:
        """Create many records on the device in one commit; returns their ids in the order of
        `rows` (`last_seq`: the last one's outbox seq; their seqs ascend in that order).

        All or nothing: every row is checked first, and one bad row refuses the whole call
        with a ValidationError whose problems name the row and field (`rows[3].notes`) and
        the reason; nothing is written then. Inside `transaction()` the rows join it."""
        ids, seq = outbox.write_insert_many(self._store, self._entity_name(entity), rows, self._clock())
        if seq is not None:
            self._written(seq)
        return ids

    def update(self, entity: str | type, id: str, fields: Mapping[str, Any]) -> int | None:
        """Change fields of a record on the device; returns the outbox seq of the change (also
        `last_seq`), or None when nothing changed. Only changed fields are queued, and fields of
        a quarantined write of the record that the app sets again (the row may already hold
        the refused value)."""
        seq = outbox.write_update(self._store, self._entity_name(entity), id, fields, self._clock())
        self._written(seq)
        return seq

    def delete(self, entity: str | type, id: str) -> int:
        """Delete a record on the device (hidden at once, removed when the server confirms);
        returns the outbox seq of the delete (also `last_seq`)."""
        seq = outbox.write_delete(self._store, self._entity_name(entity), id, self._clock())
        self._written(seq)
        return seq

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Make every `insert`, `insert_many`, `update`, `delete` (and `resubmit`, `discard`,
        `attach_media`) inside the block one local commit: all of them or, when an exception
        leaves the block, none (rows and outbox entries alike)::

            with client.transaction():
                order_id = client.insert("order", {...})
                for line in lines:
                    client.insert("order_line", {"order_id": order_id, **line})

        Reads inside see the block's own writes; other threads wait for the commit (the block
        holds the store), and background sync pushes its writes only after it. A nested block
        is a savepoint: an exception leaving it undoes its writes only, and the outer block
        may go on. The background sync is told once, after the commit; after a rollback
        `last_seq` is what it was before the block. `sync()` inside a block is refused."""
        local = self._writes
        depth = getattr(local, "depth", 0)
        seq_before = getattr(local, "seq", None)
        wrote_before = getattr(local, "wrote", False)
        local.depth = depth + 1
        committed = False
        try:
            with self._store.batch():
                yield
            committed = True
        finally:
            local.depth = depth
            if not committed:
                local.seq = seq_before
                local.wrote = wrote_before
        if depth == 0:
            wrote, local.wrote = getattr(local, "wrote", False), False
            background = self._background
            if wrote and background is not None:
                background.notify_write()

    @property
    def last_seq(self) -> int | None:
        """The outbox seq of this thread's latest `insert`, `update`, `delete` or `resubmit`
        through this client (None before one, or when that update changed nothing): the key its result,
        quarantine entry (`quarantined()`, `resubmit`, `discard`) and conflict (`conflicts()`)
        are listed under."""
        return getattr(self._writes, "seq", None)

    def get(self, entity: str | type, id: str) -> Any:
        """A record in wire form (decimals as strings, ...), or None if absent or deleted here.
        Pass a generated model class (`generated/sdk/python/fieldsync_models.py`, e.g. `Visit`)
        instead of the entity name to get a typed instance."""
        table = self._store.table(self._entity_name(entity))
        with self._store.lock:
            row = self._store.row(self._store.conn, table, id)
        if row is None or row["_deleted"]:
            return None
        return _typed(entity, self._store.to_wire(table, row))

    def query(self, entity: str | type, where: Mapping[str, Any] | None = None, order_by: str = "id",
              limit: int | None = None) -> list[Any]:
        """Records of `entity` whose fields equal `where`'s values, ordered by `order_by`
        (a field or `id`; prefix `-` for descending). A generated model class as `entity`
        returns typed instances."""
        table = self._store.table(self._entity_name(entity))
        clauses, params = ["_deleted = 0"], []
        for name, value in (where or {}).items():
            if name == "id":
                stored = value
            else:
                column = self._column(table, name)
                try:
                    stored = column.to_storage(normalize_value(table.entity.field(name), value))
                except ValueProblem as exc:
                    raise ValidationError(table.name, [FieldProblem(name, str(exc))]) from None
            if stored is None:
                clauses.append(f"{quote(name)} IS NULL")
            else:
                clauses.append(f"{quote(name)} = ?")
                params.append(stored)
        descending = order_by.startswith("-")
        key = order_by.lstrip("-")
        if key != "id":
            self._column(table, key)
        sql = (f"SELECT * FROM {quote(table.table)} WHERE {' AND '.join(clauses)} "
               f"ORDER BY {quote(key)} {'DESC' if descending else 'ASC'}, id")
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        with self._store.lock:
            rows = self._store.conn.execute(sql, params).fetchall()
        return [_typed(entity, self._store.to_wire(table, r)) for r in rows]

    def _entity_name(self, entity: str | type) -> str:
        assert self._store.schema is not None
        entity = getattr(entity, "ENTITY", entity)   # a generated model class names its entity
        if entity not in self._store.schema.entities:
            raise ClientError(f"no entity {entity!r} in this device's schema")
        return entity

    @staticmethod
    def _column(table, name: str):
        try:
            return table.column(name)
        except KeyError:
            raise ClientError(f"{table.name} has no field {name!r}") from None

    # -- sync ------------------------------------------------------------------------------------

    def sync(self, *, max_pages: int | None = None) -> SyncReport:
        """Push the outbox, pull changes, settle results and ack; one cycle at a time.

        Raises TransportError/ServerUnavailable (try again later; nothing is lost), SchemaTooNew,
        DeviceRevoked or ProtocolError. Local data and the outbox survive every error.
        """
        self._refuse_in_transaction("sync()")
        with self._sync_lock:
            report = self._engine.run(max_pages=max_pages, progress=self._progress)
            # after the records, so a record holding a reference reaches the server first; a
            # media failure never fails the sync (it is retried and shown in status())
            media = self._media.run()
            report.media_uploaded, report.media_failed = media.uploaded, media.failed
            return report

    def attach_media(self, entity: str | type, field: str, source: Any, content_type: str) -> str:
        """Queue a file for media field `entity.field` and return its reference (`fsmedia:<uuid>`)
        to put in the record; no network. `source` is the file's bytes (kept in the store until
        uploaded) or its path (the app keeps the file until `media()` says `uploaded`)."""
        name = self._entity_name(entity)
        column = self._column(self._store.table(name), field)
        if column.type != "media":
            raise ClientError(f"{name}.{field} is not a media field")
        return self._media.attach(name, field, source, content_type)

    def sync_media(self):
        """Upload the queued files that are due now (also done by every `sync()`); a MediaReport."""
        self._refuse_in_transaction("sync_media()")
        with self._sync_lock:
            return self._media.run()

    def media(self) -> list[dict[str, Any]]:
        """The media queue: each file's ref, entity, field, size, state (pending, uploaded,
        failed), attempts, next attempt and last error."""
        return self._media.items()

    def on_progress(self, callback: Callable[[int, int], None] | None) -> None:
        """`callback(pulled, remaining)` after every applied page, and after every chunk of a
        snapshot bundle (rows so far, rows still to come)."""
        self._progress = callback

    def on_bundle_progress(self, callback: Callable[[BundleProgress], None] | None) -> None:
        """`callback(progress)` after every applied chunk of a snapshot bundle: bytes and rows
        done of their totals (`BundleProgress`), for a first sync's progress bar; and after
        every confirmed PATCH of an outbox bundle's upload (rows: the writes in the chunks
        wholly sent)."""
        self._engine.on_bundle = callback

    def on_error(self, callback: Callable[[BaseException], None] | None) -> None:
        """`callback(error)` when a background sync fails."""
        self._error = callback

    def start(self, interval: float = 300.0, *, debounce: float = 2.0, wait: Wait | None = None) -> None:
        """Sync in a background thread: now, every `interval` seconds, and `debounce` seconds
        after local writes; failures back off exponentially (1 s to 300 s, full jitter)."""
        if self._background is not None and self._background.running:
            raise ClientError("background sync is already running")
        self._background = BackgroundSync(self.sync, interval=interval, debounce=debounce,
                                          backoff=Backoff(base=BASE_DELAY, cap=CAP_DELAY, rng=self._rng), wait=wait,
                                          on_error=lambda exc: self._error and self._error(exc))
        self._background.start()

    def pause(self) -> None:
        if self._background is not None:
            self._background.pause()

    def resume(self) -> None:
        if self._background is not None:
            self._background.resume()

    def stop(self) -> None:
        if self._background is not None:
            self._background.stop()
            self._background = None

    def _written(self, seq: int | None) -> None:
        local = self._writes
        local.seq = seq
        if seq is None:
            return
        if getattr(local, "depth", 0):
            local.wrote = True   # told after the commit (transaction())
            return
        background = self._background
        if background is not None:
            background.notify_write()

    def _refuse_in_transaction(self, what: str) -> None:
        # a push inside an open local transaction could send writes that then roll back, and
        # their seqs would be used again (invariant 2)
        if getattr(self._writes, "depth", 0):
            raise ClientError(f"{what} cannot run inside client.transaction(); call it after the block")

    # -- status and quarantine -------------------------------------------------------------------

    def status(self) -> Status:
        """Where the device stands, from the store alone (no network). `fully_synced`: every
        local write has its result (nothing pending, sent or received), no pull phase or
        refetch is open, and the cursor is at the server's head as of the last pull."""
        with self._store.lock:   # one consistent reading, even while a sync runs
            c = outbox.counts(self._store)
            media = self._media.counts()
            cursor = int(self._store.state("cursor", 0))
            head = self._store.state("head")
            open_work = (self._store.state("resume") is not None or bool(self._store.state("refetch"))
                         or self._store.state("bundle") is not None)   # a snapshot bundle half applied
            return Status(pending=c["pending"], sent=c["sent"], received=c["received"], quarantined=c["quarantined"],
                          last_sync_at=self._store.state("last_sync_at"), cursor=cursor,
                          write_checkpoint=int(self._store.state("write_checkpoint", 0)),
                          lag=None if head is None else max(0, int(head) - cursor),
                          device_id=self._store.state("device_id"),
                          head=None if head is None else int(head),
                          conflicts=conflicts.count_conflicts(self._store),
                          media_pending=media["pending"], media_failed=media["failed"],
                          fully_synced=(head is not None and cursor >= int(head) and not open_work
                                        and c["pending"] + c["sent"] + c["received"] == 0))

    def quarantined(self) -> list[QuarantinedMutation]:
        """Writes that will not take effect as made, oldest first."""
        return outbox.list_quarantined(self._store)

    def resubmit(self, seq: int, fields: Mapping[str, Any] | None = None) -> int:
        """Queue a quarantined write again with `fields` merged in (a new seq, returned)."""
        new_seq = outbox.resubmit(self._store, seq, fields, self._clock())
        self._written(new_seq)
        return new_seq

    def discard(self, seq: int) -> None:
        """Drop a quarantined write; the record is fetched again on the next pull."""
        outbox.discard(self._store, seq)

    def conflicts(self) -> list[Conflict]:
        """Writes the server applied but whose values did not all take effect (the entity's
        conflict policy kept another writer's), oldest first, until cleared."""
        return conflicts.list_conflicts(self._store)

    def clear_conflicts(self, seqs: Iterable[int] | None = None) -> int:
        """Forget the conflicts of `seqs` (every one when None), once the app has shown or
        resolved them; returns how many were forgotten."""
        return conflicts.clear_conflicts(self._store, seqs)


def _typed(entity: str | type, row: dict[str, Any]) -> Any:
    """`row` as an instance of the generated model class `entity`, or as it is for a name."""
    if isinstance(entity, type) and hasattr(entity, "from_row"):
        return entity.from_row(row)
    return row
