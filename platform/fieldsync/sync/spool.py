"""The push spool: the server database holds a push's batch while the push queue cannot take it
(docs/operations.md "Outages", docs/decisions.md "A queue outage spools pushes in the database").

A push is "received" once its batch is durable (invariant 1). Normally that is the queue's
job; when the broker, SQS or the queue file fails or does not answer within
`QUEUE_SEND_TIMEOUT`, the batch is written to `fs_push_spool` instead, sealed like a queue
message (invariant 7), and the push is answered as received. While the queue is known to be
failing, and while a device has any batch in the spool, its pushes go straight to the spool in
the receive transaction itself: the device's batches keep their order, and no request thread
tries a queue that is down.

`SpoolRelay` forwards the spool to the queue, oldest first, in batches, and deletes what the
queue took. One process relays at a time (a lease row, `fs_spool_relay`), so a device's batches
leave in the order they arrived. A batch forwarded twice (the relay stopped between the send
and the delete, or a send that timed out went through after all) is applied once: the ledger
answers the second delivery as a duplicate (invariant 2).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import sqlalchemy as sa

from fieldsync.backoff import Backoff
from fieldsync.dependencies import DEGRADED, QUEUE, Dependencies
from fieldsync.store.engine import write_transaction
from fieldsync.store.sync_tables import SPOOL, SPOOL_RELAY, spool_depth

__all__ = ["PushSpool", "SpoolDepth", "SpoolRelay"]

log = logging.getLogger("fieldsync.sync.spool")

LEASE_NAME = "push"


@dataclass(frozen=True)
class SpoolDepth:
    batches: int
    devices: int
    oldest: dt.datetime | None       # when the oldest spooled batch was received

    def to_dict(self, now: dt.datetime | None = None) -> dict[str, Any]:
        age = None
        if self.oldest is not None:
            oldest = self.oldest if self.oldest.tzinfo else self.oldest.replace(tzinfo=dt.timezone.utc)
            now = now or dt.datetime.now(dt.timezone.utc)
            age = round(max((now - oldest).total_seconds(), 0.0), 3)
        return {"batches": self.batches, "devices": self.devices, "oldest_age_seconds": age}


class PushSpool:
    """The spool table of one database; `sealer` seals and opens bodies (an EncryptedQueue)."""

    def __init__(self, sealer: Any):
        self.sealer = sealer

    def put(self, conn: sa.Connection, device_id: str, body: bytes, now: dt.datetime) -> None:
        """Spool `body` for `device_id` in the caller's transaction."""
        conn.execute(SPOOL.insert().values(device_id=device_id, body=self.sealer.seal(body), spooled_at=now))

    @staticmethod
    def holds(conn: sa.Connection, device_id: str) -> bool:
        """True while `device_id` has a batch in the spool (its next batches must follow it)."""
        return conn.execute(sa.select(SPOOL.c.id).where(SPOOL.c.device_id == device_id).limit(1)).first() is not None

    @staticmethod
    def depth(conn: sa.Connection) -> SpoolDepth:
        return SpoolDepth(*spool_depth(conn))

    @staticmethod
    def oldest(conn: sa.Connection, limit: int) -> list[tuple[int, str, bytes]]:
        """Up to `limit` spooled batches, oldest first: (id, device id, sealed body)."""
        rows = conn.execute(sa.select(SPOOL.c.id, SPOOL.c.device_id, SPOOL.c.body)
                            .order_by(SPOOL.c.id).limit(limit)).all()
        return [(r.id, r.device_id, bytes(r.body)) for r in rows]

    @staticmethod
    def remove(conn: sa.Connection, ids: Sequence[int]) -> None:
        for i in range(0, len(ids), 500):
            conn.execute(SPOOL.delete().where(SPOOL.c.id.in_(list(ids[i:i + 500]))))

    @staticmethod
    def any(conn: sa.Connection) -> bool:
        return conn.execute(sa.select(SPOOL.c.id).limit(1)).first() is not None


class SpoolRelay:
    """Forwards the spool to the queue in a daemon thread of its own.

    `send(items)` sends `[(sealed body, device id)]` to the queue in order, all or nothing (it is
    bounded in time by its caller); `engine()` gives the database. Wakes on `wake()` (a batch
    was spooled in this process) and every `poll_seconds` (another process may have spooled);
    after a failed send it waits with backoff (`fieldsync.backoff`) before trying again."""

    def __init__(self, engine: Callable[[], sa.Engine], send: Callable[[list[tuple[bytes, str]]], None], *,
                 dependencies: Dependencies, batch: int = 100, poll_seconds: float = 2.0,
                 lease_seconds: float = 30.0, backoff: Backoff | None = None):
        self._engine = engine
        self._send = send
        self.dependencies = dependencies
        self.batch = batch
        self.poll_seconds = poll_seconds
        self.lease_seconds = lease_seconds
        # a queue back is found within about 2 s: the relay retries often, each try is one bounded send
        self._backoff = backoff or Backoff(base=0.2, cap=2.0)
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._round = threading.Lock()
        self._persistent = False
        self._pending = False
        self._failures = 0
        self.forwarded = 0          # batches this relay handed to the queue

    # -- the thread ------------------------------------------------------------------------------
    def start(self, *, persistent: bool = True) -> None:
        """Run the relay thread. A persistent relay (a server or worker process) watches the
        spool for as long as it runs, for batches other processes left; otherwise the thread
        ends once the spool is empty and `wake()` starts it again."""
        with self._lock:
            self._persistent = self._persistent or persistent
            self._pending = True
            if self._thread is not None and self._thread.is_alive():
                self._wake.set()
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="fieldsync-spool-relay", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """A batch was spooled in this process: forward it soon."""
        self.start(persistent=False)

    def stop(self, timeout: float | None = 10) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self._release_lease()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                self._pending = False
            try:
                more = self.relay_once()
            except Exception as exc:   # the database itself failing: try again later
                log.warning("the spool relay could not read the spool: %s", exc)
                more = False
                self._failures += 1
            if self._stop.is_set():
                return
            if more:
                continue
            if not self._failures and not self._persistent:
                with self._lock:   # empty: end here unless a batch was spooled meanwhile
                    if not self._pending:
                        self._thread = None
                        return
                continue
            wait = self._backoff.delay(self._failures - 1) if self._failures else self.poll_seconds
            self._wake.wait(wait)
            self._wake.clear()

    # -- one round -------------------------------------------------------------------------------
    def relay_once(self) -> bool:
        """Forward up to `batch` spooled batches; True when there may be more to forward now.
        One round at a time in this process (the thread, `drain`)."""
        with self._round:
            return self._relay_round()

    def _relay_round(self) -> bool:
        engine = self._engine()
        with engine.connect() as conn:
            if not PushSpool.any(conn):
                self._failures = 0
                return False
        if not self._take_lease(engine):
            return False
        with engine.connect() as conn:
            rows = PushSpool.oldest(conn, self.batch)
        if not rows:
            return False
        try:
            self._send([(body, device) for _, device, body in rows])
        except Exception as exc:
            self._failures += 1
            self.dependencies.failed(QUEUE, exc, state=DEGRADED)
            if self._failures == 1 or self._failures % 20 == 0:
                log.warning("the spool relay could not forward %d batches (attempt %d): %s",
                            len(rows), self._failures, exc)
            return False
        self._failures = 0
        self.dependencies.succeeded(QUEUE)
        with write_transaction(engine) as conn:
            PushSpool.remove(conn, [row[0] for row in rows])
        self.forwarded += len(rows)
        if len(rows) < self.batch:
            log.info("the spool relay forwarded %d batches; %d in all", len(rows), self.forwarded)
        return len(rows) == self.batch

    def _take_lease(self, engine: sa.Engine) -> bool:
        """Hold (or renew) the relay lease; False while another live process holds it."""
        now = time.time()
        until = now + self.lease_seconds
        with write_transaction(engine) as conn:
            taken = conn.execute(SPOOL_RELAY.update()
                                 .where(SPOOL_RELAY.c.name == LEASE_NAME,
                                        sa.or_(SPOOL_RELAY.c.owner == self.owner, SPOOL_RELAY.c.until < now))
                                 .values(owner=self.owner, until=until)).rowcount
            if taken:
                return True
            exists = conn.execute(sa.select(SPOOL_RELAY.c.name).where(SPOOL_RELAY.c.name == LEASE_NAME)).first()
            if exists is None:
                conn.execute(SPOOL_RELAY.insert().values(name=LEASE_NAME, owner=self.owner, until=until))
                return True
        return False

    def _release_lease(self) -> None:
        try:
            with write_transaction(self._engine()) as conn:
                conn.execute(SPOOL_RELAY.update().where(SPOOL_RELAY.c.name == LEASE_NAME,
                                                        SPOOL_RELAY.c.owner == self.owner).values(until=0.0))
        except Exception:
            pass   # the lease runs out by itself
