"""Opening the device store file: plain SQLite (stdlib `sqlite3`) without a key, SQLCipher 4
(`sqlcipher3`) with one; encrypting a plain store in place; rekeying an encrypted one.

A key is SQLCipher's raw 256-bit form (`PRAGMA key = "x'<64 hex>'"`): SQLCipher uses it as
is, without its own PBKDF2 (the key is already derived, `store_key.py`), so opening costs no
key stretching. Pages of the database and of its `-wal` are encrypted and authenticated
(AES-256-CBC with HMAC-SHA512 per page); temporary tables and sorts stay in memory.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from sqlcipher3 import dbapi2 as sqlcipher

from fieldsync.errors import ClientError, StoreLocked, WrongStoreKey
from fieldsync.client.store_key import KEY_BYTES, fsync_directory

PLAIN_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT = 30
EXCLUSIVE_WAIT = 5.0   # seconds an in-place encryption waits for another writer to finish

Connection = sqlite3.Connection | sqlcipher.Connection


def store_kind(path: str) -> str:
    """`new` (no file, or an empty one), `plain` (an SQLite file) or `encrypted` (anything else:
    an SQLCipher file starts with its random salt, never with SQLite's magic string)."""
    if path == ":memory:":
        return "new"
    try:
        with open(path, "rb") as f:
            head = f.read(len(PLAIN_MAGIC))
    except FileNotFoundError:
        return "new"
    if not head:
        return "new"
    return "plain" if head == PLAIN_MAGIC else "encrypted"


def key_literal(key: bytes) -> str:
    """SQLCipher's raw key syntax, `x'<hex>'` (the key itself never reaches a log or message)."""
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_BYTES:
        raise ValueError(f"a store key is {KEY_BYTES} bytes")
    return f"x'{bytes(key).hex()}'"


def open_connection(path: str, key: bytes | None) -> Connection:
    """The store's connection, shared between threads (callers serialise with a lock).

    Without a key an encrypted file raises StoreLocked; with a key a plain file is first
    encrypted in place (`encrypt_plain_store`), and a key that does not open the file raises
    WrongStoreKey. Nothing is read or changed before the key is known to be right.
    """
    kind = store_kind(path)
    if key is None:
        if kind == "encrypted":
            raise StoreLocked(path, f"the store at {path} is encrypted: open it with store_key (the device "
                                    "secret enroll() returned, and the PIN when one is set)")
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
        conn.row_factory = sqlite3.Row
        return conn
    if kind == "plain":
        encrypt_plain_store(path, key)
    conn = sqlcipher.connect(path, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT)
    try:
        conn.execute(f'PRAGMA key = "{key_literal(key)}"')
        _check_key(conn, path)
        conn.execute("PRAGMA temp_store = MEMORY")   # no plaintext temporary files
        conn.row_factory = sqlcipher.Row
    except BaseException:
        conn.close()
        raise
    return conn


def _check_key(conn: Connection, path: str) -> None:
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlcipher.DatabaseError as exc:
        if "not a database" not in str(exc):
            raise
        # SQLCipher's page HMAC failed on page 1: the key is wrong (or the file is damaged)
        raise WrongStoreKey(path, f"the store at {path} does not open with this key") from None


def rekey(conn: Connection, path: str, key: bytes) -> None:
    """Re-encrypt every page of an open encrypted store under `key` (`PRAGMA rekey`, one
    transaction: a crash leaves the store under the old key or the new one)."""
    if not isinstance(conn, sqlcipher.Connection):
        raise ClientError(f"the store at {path} is not encrypted; encrypt it with a key first")
    conn.execute(f'PRAGMA rekey = "{key_literal(key)}"')
    _check_key(conn, path)


def encrypt_plain_store(path: str, key: bytes) -> None:
    """Turn the plain store at `path` into an encrypted one under `key`, keeping every table,
    row, outbox entry, AUTOINCREMENT counter and the user_version.

    `sqlcipher_export` copies the store into `<path>.encrypting`; after the copy is checked
    (the same tables with the same row counts) and synced, it atomically replaces the plain
    file. A crash before the rename leaves the plain store untouched (the partial copy is
    removed next time); after it, the encrypted one. The store must not be open elsewhere.
    """
    target = f"{path}.encrypting"
    for leftover in (target, target + "-journal", target + "-wal", target + "-shm"):
        _remove(leftover)
    try:
        _export(path, target, key)
    except BaseException:
        _remove(target)
        raise
    with open(target, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(target, path)
    for stale in (f"{path}-wal", f"{path}-shm"):   # the plain store's (empty) WAL files
        _remove(stale)
    fsync_directory(Path(path).resolve().parent)


def _export(path: str, target: str, key: bytes) -> None:
    source = sqlcipher.connect(path, isolation_level=None, timeout=EXCLUSIVE_WAIT)   # no key: plain
    try:
        version = int(source.execute("PRAGMA user_version").fetchone()[0])
        # an exclusive lock, held until the connection closes: no other process writes the
        # plain store while it is copied (the SDK itself keeps one connection per store)
        source.execute("PRAGMA locking_mode = EXCLUSIVE")
        source.execute("ATTACH DATABASE ? AS encrypted KEY ?", (target, key_literal(key)))
        try:
            try:
                source.execute("BEGIN EXCLUSIVE")
            except sqlcipher.OperationalError:
                raise ClientError(f"the store at {path} is in use by another connection; close it "
                                  "before encrypting") from None
            try:
                source.execute("SELECT sqlcipher_export('encrypted')")
                source.execute(f"PRAGMA encrypted.user_version = {version}")
                _check_copy(source, path)
            except BaseException:
                source.execute("ROLLBACK")
                raise
            source.execute("COMMIT")
        finally:
            source.execute("DETACH DATABASE encrypted")
        # everything into the main file, so the -wal left behind is empty and can go
        busy, _, _ = source.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if busy:
            raise ClientError(f"the store at {path} is in use by another connection; close it before encrypting")
    finally:
        source.close()
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size:
        raise ClientError(f"the store at {path} was written to while being encrypted; try again with it closed")


def _check_copy(conn: Connection, path: str) -> None:
    tables = [r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")]
    copied = {r[0] for r in conn.execute("SELECT name FROM encrypted.sqlite_master WHERE type = 'table'")}
    for name in tables:
        quoted = '"' + name.replace('"', '""') + '"'
        plain = conn.execute(f"SELECT count(*) FROM main.{quoted}").fetchone()[0]
        encrypted = conn.execute(f"SELECT count(*) FROM encrypted.{quoted}").fetchone()[0] if name in copied else None
        if plain != encrypted:
            raise ClientError(f"encrypting the store at {path} copied {encrypted} rows of {name} "
                              f"instead of {plain}; the plain store is kept")
    if "sqlite_sequence" in tables:
        # the outbox's seqs are AUTOINCREMENT: a counter set back would reuse a seq (invariant 2)
        counters = [sorted(conn.execute(f"SELECT name, seq FROM {db}.sqlite_sequence").fetchall())
                    for db in ("main", "encrypted")]
        if counters[0] != counters[1]:
            raise ClientError(f"encrypting the store at {path} did not keep its sequence counters; "
                              "the plain store is kept")


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
