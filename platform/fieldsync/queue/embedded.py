"""The queue between "received" and "applied": push batches wait here for the listener pool.

`Queue` is the interface; `SqliteQueue` is the embedded default (`var/queue.db`), and the queue
issue adds SQS and STOMP behind the same interface. `open_queue(url)` picks the backend.

What the server relies on (DESIGN.md §3):

* **Durable send** (invariant 1). `send` and `send_batch` return only after the message is
  committed with `synchronous=FULL` in WAL mode: the server may say "received" at that point.
* **FIFO per group** (sync-design.md decision 2). A group's messages are handed out in send
  order, one at a time: only the oldest unacked message of a group is eligible, and not while
  it is in flight. Messages without a group are independent of each other.
* **At-least-once delivery** (invariant 2 is the ledger's job). A claimed message that is not
  acked within its visibility timeout becomes visible again and is redelivered with
  `receive_count + 1`. After `max_receives` deliveries it moves to the dead letters instead.

Receipts. Every delivery gets a new receipt; `ack`, `extend` and `release` act only when the
receipt is the message's current one. A stale receipt (the message was redelivered since, or
released, or already acked) is a silent no-op: it must never ack or extend someone else's
delivery. A receipt whose visibility expired stays current until the message is claimed
again, so a slow handler that finishes before anyone else took the message still acks it.

How it is stored. One table, `fs_queue`, ordered by `seq` (send order). The column `ready`
marks the head of each group (and every message without a group); it is maintained in the same
transaction as every send, ack and dead-lettering, so a claim walks only the ready rows, in
send order, however long a device's backlog. It skips heads still in flight or waiting out a
retry delay inside the index; there are few of those (consumers × batch size, plus failing
devices). Dead letters move to `fs_queue_dead`. Receipts are `"<seq>:<delivery>:<token>"`,
the token a random number drawn on every claim and release.

Concurrency. Each `SqliteQueue` has one connection guarded by a lock, so one object may be
shared by threads; several objects and several processes on the same file coordinate through
SQLite's write lock (every change is one `BEGIN IMMEDIATE` transaction) and a busy timeout.

Durability of each write (docs/decisions.md, "Embedded queue: acks ride on the next claim"):

* a send (`send`, `send_batch`, `replay_dead`) commits with `synchronous=FULL` before it returns:
  the server may answer "received" (invariant 1);
* a claim, extend or release commits with `synchronous=NORMAL` before it returns: it survives a
  crash of the process; a power loss can undo the latest ones, which redelivers messages;
* an ack of a consumer draining a backlog (its last claim came back full) is *written behind*:
  `ack` returns at once and the deletes go into the transaction of this object's next claim,
  ahead of the claim itself, so a batch costs one write transaction instead of two. Any other
  call on the object (pending, depth, release, close, …) writes them first, and a timer writes
  them when no claim came within `ACK_LINGER` seconds, so in a live process an ack waits about
  that long at most (longer only while the file refuses writes). An ack made when the last claim was not full is written before `ack` returns.
  A process that dies before the write leaves the message in flight: it is redelivered after
  its visibility timeout with `receive_count + 1`, the same outcome as a consumer that died just
  before acking — harmless, because the ledger makes redelivery exact-once (invariant 2).

Long polls (`wait_seconds`) wake at once when a message is sent, released or unblocked by an
object on the same file in this process, and re-check the file every `POLL_INTERVAL` seconds
for other processes (and for visibility timeouts running out).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import uuid
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

from fieldsync.errors import ConfigError, QueueClosed

__all__ = [
    "ACK_LINGER", "BACKENDS", "DEFAULT_MAX_RECEIVES", "POLL_INTERVAL", "Message", "Queue", "QueueClosed", "QueueDepth",
    "SqliteQueue", "open_queue",
]

DEFAULT_MAX_RECEIVES = 5
POLL_INTERVAL = 0.05          # seconds between re-checks of the file during a long poll
ACK_LINGER = 0.05             # seconds a written-behind ack waits for the next claim at most
BUSY_TIMEOUT_S = 30.0         # a writer waits this long for another process's transaction
SCHEMA_VERSION = 1            # PRAGMA user_version of a queue file
_MAX_SQL_VARIABLES = 400      # receipts per `IN (...)` chunk (two variables each in ack)


@dataclass(frozen=True)
class Message:
    """One delivery of a queued message."""

    id: str                 # queue-assigned id (safe to log; the body is not)
    body: bytes
    group: str | None       # FIFO group (the device id); None = no ordering
    receipt: str            # handle for ack/extend/release; new on every delivery ("" for dead letters)
    receive_count: int      # 1 on the first delivery
    enqueued_at: float      # epoch seconds


def _delivery(id: str, body: bytes, group: str | None, receipt: str, receive_count: int,
              enqueued_at: float) -> Message:
    """`Message(...)` for the claim's hot path: the same frozen object, its fields set in one
    step instead of the frozen dataclass's six `object.__setattr__` calls (about 1 µs of the
    ~12 µs of CPU a claimed and acked message costs). tests/sync/test_queue.py checks it equals
    the constructor's result, so a field added to Message without it here fails there."""
    message = object.__new__(Message)
    message.__dict__.update(id=id, body=body, group=group, receipt=receipt,
                            receive_count=receive_count, enqueued_at=enqueued_at)
    return message


class Queue(Protocol):
    """What the sync server needs from a queue; see the module docstring for the semantics."""

    def send(self, body: bytes, *, group: str | None = None) -> str:
        """Enqueue one message durably; returns its id."""

    def send_batch(self, items: Sequence[tuple[bytes, str | None]]) -> list[str]:
        """Enqueue `(body, group)` pairs in one durable commit; returns their ids in order."""

    def receive(self, max_messages: int = 10, *, visibility_timeout: float = 60.0,
                wait_seconds: float = 0.0) -> list[Message]:
        """Claim up to `max_messages` eligible messages, hidden for `visibility_timeout`
        seconds; waits up to `wait_seconds` for one when none is eligible."""

    def ack(self, receipts: Sequence[str]) -> None:
        """Delete the delivered messages (stale receipts are ignored). The delete may be written
        behind (the embedded queue's draining consumers): a crash right after `ack` returned
        may redeliver them, never lose another message."""

    def extend(self, receipt: str, seconds: float) -> None:
        """Keep a delivery hidden for `seconds` from now (a heartbeat; stale receipt: no-op)."""

    def release(self, receipts: Sequence[str], delay: float = 0.0) -> None:
        """Give deliveries back, visible again after `delay` seconds (stale receipts ignored)."""

    def pending(self, group: str | None = None) -> int:
        """Messages not yet acked (visible or in flight), of `group` or of all groups."""

    def dead_letters(self, limit: int = 100) -> list[Message]:
        """Messages that exceeded `max_receives`, oldest first."""

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        """Move dead letters (those named, or all) back to the queue as new deliveries
        (`receive_count` starts again); returns how many were moved."""

    def depth(self) -> "QueueDepth":
        """How many messages wait, are in flight and are dead (None where the backend cannot tell)."""

    def close(self) -> None:
        """Release the backend's resources; further calls raise QueueClosed."""


@dataclass(frozen=True)
class QueueDepth:
    """A queue's size for `fieldsync workers status`; SQS and brokers report approximations."""

    visible: int | None
    in_flight: int | None
    dead: int | None


# scheme -> "module:function" building the queue from (url, **options); imported on first use,
# so boto3 and stomp.py load only when configured
BACKENDS: dict[str, str] = {
    "sqlite": "fieldsync.queue.embedded:_open_sqlite",
    "sqs": "fieldsync.queue.sqs:open_sqs_queue",
    "sqs+fifo": "fieldsync.queue.sqs:open_sqs_queue",
    "stomp": "fieldsync.queue.stomp:open_stomp_queue",
    "stomp+ssl": "fieldsync.queue.stomp:open_stomp_queue",
}


def open_queue(url: str, **options) -> Queue:
    """The queue at `url`: `sqlite:///var/queue.db` (relative) or `sqlite:////srv/queue.db`
    (absolute) for the embedded queue, `sqs://…` for Amazon SQS, `stomp://…` for a JMS broker
    (docs/queues.md). `options` go to the backend."""
    import importlib
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigError("a queue URL needs a scheme, like sqlite:///var/queue.db")
    if scheme not in BACKENDS:
        raise ConfigError(f"queue URL scheme {scheme!r} is not supported; available: "
                          + ", ".join(repr(k) for k in BACKENDS))
    module, _, function = BACKENDS[scheme].partition(":")
    return getattr(importlib.import_module(module), function)(url, **options)


def _open_sqlite(url: str, **options) -> "SqliteQueue":
    rest = url.partition("://")[2]
    if not rest.startswith("/") or len(rest) < 2:
        raise ConfigError("a sqlite queue URL needs a path: sqlite:///var/queue.db (relative) "
                          "or sqlite:////srv/fieldsync/queue.db (absolute)")
    return SqliteQueue(rest[1:], **options)


# -- wake-ups within one process ----------------------------------------------------------------

class _Doorbell:
    """Wakes long polls in this process when a message may have become eligible."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._rings = 0

    def rings(self) -> int:
        with self._cond:
            return self._rings

    def ring(self) -> None:
        with self._cond:
            self._rings += 1
            self._cond.notify_all()

    def wait(self, since: int, timeout: float) -> None:
        with self._cond:
            if self._rings == since:
                self._cond.wait(timeout)


_doorbells: weakref.WeakValueDictionary[str, _Doorbell] = weakref.WeakValueDictionary()
_doorbells_lock = threading.Lock()


def _doorbell_for(path: str) -> _Doorbell:
    """The doorbell shared by every queue object on the file `path` in this process."""
    with _doorbells_lock:
        bell = _doorbells.get(path)
        if bell is None:
            bell = _doorbells[path] = _Doorbell()
        return bell


# -- SQL ----------------------------------------------------------------------------------------

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS fs_queue (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL,
        grp TEXT,
        body BLOB NOT NULL,
        enqueued_at REAL NOT NULL,
        visible_at REAL NOT NULL,
        ready INTEGER NOT NULL,
        token INTEGER NOT NULL,
        receive_count INTEGER NOT NULL DEFAULT 0)""",
    # the claim scan: heads of groups (and ungrouped messages) in send order. visible_at rides
    # along so in-flight heads are skipped inside the index, and a claim rewrites its entry in
    # place (the key starts with seq) instead of moving it to another page
    "CREATE INDEX IF NOT EXISTS fs_queue_ready ON fs_queue (seq, visible_at) WHERE ready = 1",
    # the next message of a group, when its head is acked or dead-lettered
    "CREATE INDEX IF NOT EXISTS fs_queue_group ON fs_queue (grp, seq) WHERE grp IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS fs_queue_dead (
        seq INTEGER NOT NULL,
        id TEXT NOT NULL,
        grp TEXT,
        body BLOB NOT NULL,
        enqueued_at REAL NOT NULL,
        receive_count INTEGER NOT NULL,
        died_at REAL NOT NULL)""",
)

# ?2 is the group: a message is its group's head when the group has no unacked message yet
_INSERT = """INSERT INTO fs_queue (id, grp, body, enqueued_at, visible_at, ready, token)
    VALUES (?1, ?2, ?3, ?4, ?4, ?2 IS NULL OR NOT EXISTS (SELECT 1 FROM fs_queue WHERE grp = ?2),
            random())"""
# one statement claims a batch; every delivery draws a new random token for its receipt
_CLAIM = """UPDATE fs_queue SET receive_count = receive_count + 1, visible_at = ?, token = random()
    WHERE seq IN (SELECT seq FROM fs_queue WHERE ready = 1 AND visible_at <= ?
                  ORDER BY seq LIMIT ?)
    RETURNING seq, id, grp, body, enqueued_at, receive_count, token"""
_ANY_CANDIDATE = "SELECT 1 FROM fs_queue WHERE ready = 1 AND visible_at <= ? LIMIT 1"
_PROMOTE = """UPDATE fs_queue SET ready = 1
    WHERE seq = (SELECT min(seq) FROM fs_queue WHERE grp = ?)"""
# a claim that picked an exhausted message has already counted one delivery too many: min()
_BURY = """INSERT INTO fs_queue_dead (seq, id, grp, body, enqueued_at, receive_count, died_at)
    SELECT seq, id, grp, body, enqueued_at, min(receive_count, ?), ? FROM fs_queue WHERE seq = ?"""


# the WHERE clause of an ack of n receipts, built once per n (the SQL text is also sqlite3's
# statement cache key, so equal batch sizes reuse one prepared statement)
_ACK_TERMS = {n: " OR ".join(["(seq = ? AND token = ?)"] * n) for n in range(1, _MAX_SQL_VARIABLES + 1)}


def _parse_receipt(receipt: str) -> tuple[int, int]:
    """`(seq, token)` of a receipt `"<seq>:<delivery>:<token>"`."""
    try:
        seq, _, token = receipt.split(":")
        return int(seq), int(token)
    except ValueError:
        raise ValueError(f"not a receipt of this queue: {receipt!r}") from None


def _parse_receipts(receipts: Sequence[str]) -> dict[int, int]:
    """`{seq: token}` of receipts; one comprehension on the hot path (an ack of 10 per claim),
    `_parse_receipt` only to name the first bad one."""
    try:
        return {int(seq): int(token) for seq, _, token in (receipt.split(":") for receipt in receipts)}
    except (ValueError, AttributeError):
        for receipt in receipts:
            _parse_receipt(receipt)
        raise


def _chunks(items: list, size: int = _MAX_SQL_VARIABLES) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _create_private_file(path: Path) -> None:
    """Create the queue file readable by its owner only (messages hold PHI until the security
    issue encrypts them, sync-design.md decision 10). SQLite gives the -wal and -shm files the
    database file's permissions. An existing file keeps the mode its operator gave it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


class SqliteQueue:
    """The embedded queue in one SQLite file; see the module docstring.

    `path` may be `":memory:"` (one object only, for tests). `clock` gives epoch seconds for
    visibility and enqueue times; tests pass a controllable one so expiry needs no sleeping.
    Long polls always wait in real time.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_receives: int = DEFAULT_MAX_RECEIVES,
                 clock: Callable[[], float] = time.time, secure_delete: bool = True) -> None:
        if max_receives < 1:
            raise ConfigError(f"max_receives must be at least 1, not {max_receives}")
        self._path = os.fspath(path)
        self._max_receives = max_receives
        self._clock = clock
        self._lock = threading.Lock()
        self._closed = False
        self._synchronous: str | None = None
        self._secure_delete = secure_delete
        self._busy = False  # the last claim filled its batch: more is probably waiting
        # acks written behind (seq -> token), since monotonic time _acks_since; the next claim,
        # any other call, or the flusher thread after ACK_LINGER writes them
        self._acks: dict[int, int] = {}
        self._acks_since = 0.0
        self._acks_due = threading.Condition(self._lock)
        self._flusher: threading.Thread | None = None
        memory = self._path == ":memory:"
        if memory:
            self._doorbell = _Doorbell()
        else:
            _create_private_file(Path(self._path))
            self._doorbell = _doorbell_for(os.path.realpath(self._path))
        self._conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                     check_same_thread=False)
        try:
            self._prepare(memory)
        except BaseException:
            self._conn.close()
            raise

    def _prepare(self, memory: bool) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        # acked bodies are zeroed in the file, whatever the build's default, unless the caller
        # seals every body (EncryptedQueue: the server's default), where zeroing ciphertext buys
        # nothing and costs a fifth of the claim+ack rate
        conn.execute(f"PRAGMA secure_delete = {'ON' if self._secure_delete else 'OFF'}")
        if not memory:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise ConfigError(f"the queue file {self._path} cannot use WAL (journal_mode={mode})")
        with self._transaction("FULL"):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(f"the queue file {self._path} has format {version}; this "
                                  f"fieldsync reads format {SCHEMA_VERSION} (upgrade fieldsync)")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"SqliteQueue({self._path!r})"

    def __enter__(self) -> SqliteQueue:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def path(self) -> str:
        return self._path

    @property
    def max_receives(self) -> int:
        return self._max_receives

    # -- plumbing (callers hold self._lock) --

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosed(f"{self!r} is closed")

    @contextmanager
    def _transaction(self, synchronous: str) -> Iterator[sqlite3.Connection]:
        """One write transaction. BEGIN IMMEDIATE takes the write lock up front, so a claim's
        read and its update see the same state across processes (no double delivery). It opens
        with the acks written behind, so whatever the caller does next (a claim above all) sees
        them done; a transaction that fails keeps them for the next one."""
        conn = self._conn
        if self._synchronous != synchronous:
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            self._synchronous = synchronous
        conn.execute("BEGIN IMMEDIATE")
        acks, self._acks = self._acks, {}
        unblocked: set[str] = set()
        try:
            if acks:
                unblocked = self._delete_acked(conn, acks)
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._acks = {**acks, **self._acks}
            raise
        if unblocked:
            # their groups' next messages are eligible now. Ringing under self._lock is safe:
            # nothing holds the doorbell while it waits for self._lock
            self._doorbell.ring()

    def _write_acks(self) -> None:
        """Write the acks written behind now, in a transaction of their own (caller holds the
        lock): before a read that counts messages, and before closing."""
        if self._acks:
            with self._transaction("NORMAL"):
                pass

    def _delete_acked(self, conn: sqlite3.Connection, wanted: dict[int, int]) -> set[str]:
        """Delete the messages whose current receipt is in `wanted` (seq -> token) and make the
        next message of each of their groups its head; returns those groups."""
        unblocked: set[str] = set()
        for pairs in _chunks(list(wanted.items())):
            # each (seq = ? AND token = ?) term finds its row by key and keeps it only while the
            # receipt is current; one statement, no temporary table
            rows = conn.execute(f"DELETE FROM fs_queue WHERE {_ACK_TERMS[len(pairs)]} RETURNING grp",
                                [v for pair in pairs for v in pair]).fetchall()
            unblocked.update(group for group, in rows if group is not None)
        if unblocked:
            self._promote(conn, unblocked)
        return unblocked

    def _flush_after_linger(self) -> None:
        """The flusher thread: writes acks that no claim picked up within ACK_LINGER seconds.
        It ends once a whole ACK_LINGER passed with none waiting (the next written-behind ack
        starts it again), so a consumer draining a backlog keeps one thread, not one per ack."""
        with self._lock:
            idle_since = time.monotonic()
            while not self._closed:
                if not self._acks:
                    idle = time.monotonic() - idle_since
                    if idle >= ACK_LINGER:
                        break
                    self._acks_due.wait(ACK_LINGER - idle)
                    continue
                idle_since = time.monotonic()
                remaining = self._acks_since + ACK_LINGER - time.monotonic()
                if remaining > 0:
                    self._acks_due.wait(remaining)
                    continue
                try:
                    self._write_acks()
                except Exception:
                    # the file is busy or failing: the acks stay; try again after a linger
                    self._acks_since = time.monotonic()
            self._flusher = None

    def _promote(self, conn: sqlite3.Connection, groups: set[str]) -> None:
        """Make the oldest remaining message of each group its head (FIFO per group)."""
        conn.executemany(_PROMOTE, [(group,) for group in groups])

    def _bury(self, conn: sqlite3.Connection, rows: list[tuple[int, str | None]], now: float) -> None:
        """Move `(seq, group)` rows to the dead letters and unblock their groups."""
        conn.executemany(_BURY, [(self._max_receives, now, seq) for seq, _ in rows])
        conn.executemany("DELETE FROM fs_queue WHERE seq = ?", [(seq,) for seq, _ in rows])
        self._promote(conn, {group for _, group in rows if group is not None})

    # -- Queue --

    def send(self, body: bytes, *, group: str | None = None) -> str:
        """Enqueue `body` durably (committed with synchronous=FULL before this returns)."""
        return self.send_batch([(body, group)])[0]

    def send_batch(self, items: Sequence[tuple[bytes, str | None]]) -> list[str]:
        """Enqueue every `(body, group)` in one durable commit; ids in the same order."""
        now = self._clock()
        rows = []
        for body, group in items:
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(f"a message body is bytes, not {type(body).__name__}")
            if group is not None and not isinstance(group, str):
                raise TypeError(f"a message group is a str or None, not {type(group).__name__}")
            rows.append((uuid.uuid4().hex, group, bytes(body), now))
        if not rows:
            return []
        with self._lock:
            self._check_open()
            with self._transaction("FULL") as conn:
                conn.executemany(_INSERT, rows)
        self._doorbell.ring()
        return [row[0] for row in rows]

    def receive(self, max_messages: int = 10, *, visibility_timeout: float = 60.0,
                wait_seconds: float = 0.0) -> list[Message]:
        """Claim up to `max_messages` eligible messages (at most one per group), hidden for
        `visibility_timeout` seconds. When none is eligible, waits up to `wait_seconds`."""
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")
        if visibility_timeout < 0:
            raise ValueError(f"visibility_timeout must not be negative, not {visibility_timeout}")
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        with self._lock:
            self._check_open()
        while True:
            rung = self._doorbell.rings()
            # look before taking the write lock: idle polls then never hold it, so they cannot
            # starve writers in other connections (a heartbeat's extend, an ack) of it. A
            # consumer whose last claim came back full is draining a backlog, not idling: it
            # claims straight away (an empty claim then costs one short write transaction).
            # Acks written behind go into that claim's transaction, even an empty one
            if self._busy or self._acks or self._has_candidates():
                messages = self._claim(max_messages, visibility_timeout)
                self._busy = len(messages) == max_messages
                if messages:
                    return messages
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._doorbell.wait(rung, min(POLL_INTERVAL, remaining))
            if self._closed:
                return []

    def _has_candidates(self) -> bool:
        """A read without the write lock, so idle long polls do not contend with writers."""
        with self._lock:
            if self._closed:
                return False
            return self._conn.execute(_ANY_CANDIDATE, (self._clock(),)).fetchone() is not None

    def _claim(self, max_messages: int, visibility_timeout: float) -> list[Message]:
        claimed: list[Message] = []
        with self._lock:
            self._check_open()
            now = self._clock()
            # the transaction deletes the acks written behind first: a message acked there is
            # never claimed again here, and the groups it unblocks can be claimed at once
            with self._transaction("NORMAL") as conn:
                self._claim_rows(conn, claimed, max_messages, visibility_timeout, now)
        return claimed

    def _claim_rows(self, conn: sqlite3.Connection, claimed: list[Message], max_messages: int,
                    visibility_timeout: float, now: float) -> None:
        """Claim into `claimed` up to `max_messages`, dead-lettering exhausted messages."""
        while len(claimed) < max_messages:
            rows = conn.execute(_CLAIM, (now + visibility_timeout, now,
                                         max_messages - len(claimed))).fetchall()
            if not rows:
                break
            rows.sort()  # RETURNING order is arbitrary; a batch goes out in send order
            limit = self._max_receives
            dead = [(row[0], row[2]) for row in rows if row[5] > limit]
            claimed += [_delivery(message_id, body, group, f"{seq}:{count}:{token}", count, enqueued_at)
                        for seq, message_id, group, body, enqueued_at, count, token in rows
                        if count <= limit]
            if not dead:
                break
            # exhausted messages go to the dead letters; that unblocks their groups,
            # whose next messages may fill the batch
            self._bury(conn, dead, now)
            if visibility_timeout <= 0:
                break  # what was just claimed is eligible again: do not hand it out twice

    def ack(self, receipts: Sequence[str]) -> None:
        """Delete the messages of these deliveries. A stale receipt (the message was released or
        redelivered since, or is already gone) is a no-op.

        When the last claim of this object came back full (a consumer draining a backlog, which
        claims again at once), the deletes are written behind: they go into the next claim's
        transaction, or any other call's, or are written by a timer after ACK_LINGER seconds
        (module docstring). Otherwise they are committed before this returns."""
        wanted = _parse_receipts(receipts)
        if not wanted:
            return
        with self._lock:
            self._check_open()
            if not self._acks:
                self._acks_since = time.monotonic()
            self._acks.update(wanted)
            if not self._busy:
                self._write_acks()
            elif self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_after_linger, daemon=True,
                                                 name=f"fieldsync-queue-acks-{id(self):x}")
                self._flusher.start()

    def extend(self, receipt: str, seconds: float) -> None:
        """Keep the delivery hidden until `seconds` from now. A stale receipt is a no-op."""
        seq, token = _parse_receipt(receipt)
        with self._lock:
            self._check_open()
            with self._transaction("NORMAL") as conn:
                conn.execute("UPDATE fs_queue SET visible_at = ? WHERE seq = ? AND token = ?",
                             (self._clock() + seconds, seq, token))

    def release(self, receipts: Sequence[str], delay: float = 0.0) -> None:
        """End these deliveries without acking: each message is visible again after `delay`
        seconds (its group stays blocked until then), or moves to the dead letters when it has
        had `max_receives` deliveries. Stale receipts are ignored."""
        wanted = dict(map(_parse_receipt, receipts))
        if not wanted:
            return
        released = False
        with self._lock:
            self._check_open()
            now = self._clock()
            with self._transaction("NORMAL") as conn:
                for seqs in _chunks(list(wanted)):
                    marks = ",".join("?" * len(seqs))
                    rows = conn.execute(f"SELECT seq, grp, token, receive_count FROM fs_queue "
                                        f"WHERE seq IN ({marks})", seqs).fetchall()
                    mine = [row for row in rows if row[2] == wanted[row[0]]]
                    dead = [(seq, group) for seq, group, _, count in mine if count >= self._max_receives]
                    back = [(now + delay, seq) for seq, _, _, count in mine if count < self._max_receives]
                    # a new token ends the delivery: its receipt is stale from now on
                    conn.executemany("UPDATE fs_queue SET visible_at = ?, token = random() WHERE seq = ?", back)
                    self._bury(conn, dead, now)
                    released = released or bool(back and delay <= 0) or bool(dead)
        if released:
            self._doorbell.ring()

    def pending(self, group: str | None = None) -> int:
        """Messages not yet acked or dead-lettered (visible or in flight), of `group` or all."""
        with self._lock:
            self._check_open()
            self._write_acks()
            if group is None:
                return self._conn.execute("SELECT count(*) FROM fs_queue").fetchone()[0]
            return self._conn.execute("SELECT count(*) FROM fs_queue WHERE grp = ?", (group,)).fetchone()[0]

    def dead_letters(self, limit: int = 100) -> list[Message]:
        """Up to `limit` dead letters, oldest first (their receipt is "": nothing to ack)."""
        with self._lock:
            self._check_open()
            self._write_acks()
            rows = self._conn.execute(
                "SELECT id, body, grp, receive_count, enqueued_at FROM fs_queue_dead "
                "ORDER BY rowid LIMIT ?", (limit,)).fetchall()
        return [Message(message_id, body, group, "", count, enqueued_at)
                for message_id, body, group, count, enqueued_at in rows]

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        """Re-drive dead letters (those with the given ids, or all) as new messages at the end
        of the queue, in their original order; their delivery count starts again."""
        now = self._clock()
        with self._lock:
            self._check_open()
            with self._transaction("FULL") as conn:
                query = "SELECT rowid, id, grp, body FROM fs_queue_dead"
                params: tuple = ()
                if ids is not None:
                    wanted = list(ids)
                    if not wanted:
                        return 0
                    query += f" WHERE id IN ({','.join('?' * len(wanted))})"
                    params = tuple(wanted)
                rows = conn.execute(query + " ORDER BY rowid", params).fetchall()
                conn.executemany(_INSERT, [(message_id, group, body, now) for _, message_id, group, body in rows])
                conn.executemany("DELETE FROM fs_queue_dead WHERE rowid = ?", [(rowid,) for rowid, *_ in rows])
        if rows:
            self._doorbell.ring()
        return len(rows)

    def depth(self) -> QueueDepth:
        """Waiting (visible now), in flight (claimed, not yet acked) and dead messages."""
        now = self._clock()
        with self._lock:
            self._check_open()
            self._write_acks()
            visible, in_flight = self._conn.execute(
                "SELECT coalesce(sum(visible_at <= ?), 0), coalesce(sum(visible_at > ?), 0) FROM fs_queue",
                (now, now)).fetchone()
            dead = self._conn.execute("SELECT count(*) FROM fs_queue_dead").fetchone()[0]
        return QueueDepth(visible=visible, in_flight=in_flight, dead=dead)

    def close(self) -> None:
        """Close the connection; long polls of this object return [] and later calls raise
        QueueClosed. Closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._acks_due.notify_all()   # the flusher thread ends
            try:
                self._write_acks()
            finally:
                self._conn.close()
        self._doorbell.ring()
