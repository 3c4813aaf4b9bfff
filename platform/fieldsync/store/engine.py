"""Creating SQLAlchemy engines for the server database (SQLite or PostgreSQL).

SQLite gets WAL (readers never block the single writer), a busy timeout (a second writer
waits instead of failing at once) and `synchronous=FULL`: a commit is on disk when it returns.
NORMAL would survive a process crash but could lose the last commits on power loss, while the
queue (also FULL) had already forgotten the batch — a lost write (invariant 1). Writes are
batched, so the fsync per commit is paid once per push batch. PostgreSQL goes through psycopg 3; a plain
`postgresql://` URL is rewritten to use it.
"""

from __future__ import annotations

import contextvars
import os
import threading
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from fieldsync.json_text import dumps_text

SQLITE_BUSY_TIMEOUT_MS = 30_000

# True while this thread (or task) is inside `write_transaction`: on SQLite it then holds the
# write lock, so work that would open a second writing connection (creating a data key) must
# have been done before (crypto/keyring.py).
in_write_transaction: contextvars.ContextVar[bool] = contextvars.ContextVar("fs_in_write_txn", default=False)


def normalize_url(url: str) -> str:
    """`url` with PostgreSQL pointed at the psycopg 3 driver (`postgresql+psycopg://`)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(cursor)
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def _switch_to_wal(cursor: Any) -> None:
    """`PRAGMA journal_mode=WAL`, waiting while another process holds the new database's lock:
    SQLite answers that pragma "database is locked" at once, without its busy handler, when
    several processes open one brand-new file together (a server and a worker starting, two
    `fieldsync users add`). Waits at most the busy timeout, in short steps."""
    import time
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except Exception as exc:   # the driver's OperationalError (sqlite3 or sqlcipher3)
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


@contextmanager
def write_transaction(engine: Engine, *, sqlite_synchronous: str | None = None) -> Iterator[sa.Connection]:
    """A connection in a write transaction, committed on success and rolled back on error.

    On SQLite the transaction is BEGIN IMMEDIATE: it takes the write lock up front, because a
    deferred transaction that reads and then writes can fail with SQLITE_BUSY without waiting
    for busy_timeout (the sqlite3 module would only begin before the first write).
    `sqlite_synchronous` (e.g. "NORMAL") relaxes the commit's durability for this transaction
    only, for data that may be lost on power failure; the connection returns to FULL after.
    """
    # SQLite: this process's writers queue on a lock first (_writer_lock), and wait inside
    # BEGIN IMMEDIATE only for other processes
    lock = _writer_lock(engine) if engine.dialect.name == "sqlite" else None
    held = lock is not None and lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        with _write_transaction(engine, sqlite_synchronous) as conn:
            yield conn
    finally:
        if held:
            lock.release()


# One lock per SQLite engine. While one thread holds SQLite's write lock, a second writer in
# BEGIN IMMEDIATE polls it from SQLite's busy handler, sleeping up to 100 ms between tries, so
# the lock often stands free while every waiter sleeps: push receipts, pulls' bookkeeping and
# two listeners applying batches lost a good part of their time so. A writer waiting on this
# lock starts the moment the previous one commits. An RLock, so a thread that opens a second
# write transaction inside one behaves as before (SQLite's busy timeout); a writer waits for it
# at most the busy timeout, then goes on to BEGIN IMMEDIATE as before (never a new deadlock).
_WRITER_LOCKS: "weakref.WeakKeyDictionary[Engine, threading.RLock]" = weakref.WeakKeyDictionary()
_WRITER_LOCKS_GUARD = threading.Lock()


def _writer_lock(engine: Engine) -> threading.RLock:
    lock = _WRITER_LOCKS.get(engine)
    if lock is None:
        with _WRITER_LOCKS_GUARD:
            lock = _WRITER_LOCKS.setdefault(engine, threading.RLock())
    return lock


@contextmanager
def _write_transaction(engine: Engine, sqlite_synchronous: str | None) -> Iterator[sa.Connection]:
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        relaxed = sqlite and sqlite_synchronous is not None
        if relaxed:
            conn.exec_driver_sql(f"PRAGMA synchronous={sqlite_synchronous}")
        token = in_write_transaction.set(True)
        try:
            if sqlite:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                conn.begin()
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            in_write_transaction.reset(token)
            if relaxed:
                conn.exec_driver_sql("PRAGMA synchronous=FULL")
                conn.commit()


def _create_private(path: str) -> None:
    """Create the SQLite file readable by its owner only before sqlite3 creates it with the
    umask's mode (0644): it holds the records, the change log and the audit trail. SQLite gives
    the -wal and -shm files the database file's permissions. An existing file keeps the mode its
    operator gave it; a missing directory is left for sqlite3 to report."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
    except FileNotFoundError:
        pass


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url` (SQLite file or memory, or PostgreSQL), configured for fieldsync."""
    url = normalize_url(url)
    parsed = make_url(url)
    # JSON columns (geopoint, json fields) are written on every pushed row: orjson, read back by json
    kwargs.setdefault("json_serializer", dumps_text)
    if parsed.get_backend_name() == "sqlite":
        # a file database is shared between the server's threads; each gets its own connection
        kwargs.setdefault("connect_args", {}).setdefault("check_same_thread", False)
        engine = sa.create_engine(url, **kwargs)
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:") and not parsed.query.get("uri"):
            # on the first connection (where sqlite3 would create it), not when the engine is made
            sa.event.listen(engine, "do_connect", lambda *_args: None if os.path.exists(database)
                            else _create_private(database))
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


def create_tables(engine: Engine, metadata: sa.MetaData) -> None:
    """`metadata.create_all(engine)`, safe when several processes set up one new database at
    once (two `fieldsync users add`, a server and a worker starting together): create_all checks
    then creates, so a table another process created in between fails with "already exists"
    (PostgreSQL: a duplicate pg_type row). Such a failure is retried; the next check skips the
    tables that now exist; each failure means one more table exists, so one attempt per table
    (and one more) always reaches the end."""
    attempts = len(metadata.tables) + 2
    for attempt in range(attempts):
        try:
            metadata.create_all(engine, checkfirst=True)
            return
        except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as exc:
            text = str(exc.orig if exc.orig is not None else exc).lower()
            if attempt == attempts - 1 or ("already exists" not in text and "duplicate key" not in text):
                raise
