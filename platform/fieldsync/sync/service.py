"""The sync service of one server process: the push queue, the listener pool applying pushed
batches, the maintenance jobs (retention), and the push queue and its dead letters as the operator
commands see them. Built by `create_app`; nothing starts at import.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa

from fieldsync.audit.trail import AuditLog
from fieldsync.dependencies import DEGRADED, DOWN, QUEUE, Dependencies, describe_error
from fieldsync.errors import AuditUnavailable, QueueTimeout
from fieldsync.store.changelog import first_position_since, head_position, purge_before
from fieldsync.store.engine import write_transaction
from fieldsync.store.records import RecordStore
from fieldsync.ids import utc_now
from fieldsync.sync.apply import PushBatch
from fieldsync.sync.applier import MutationApplier
from fieldsync.queue.embedded import Message, Queue, open_queue
from fieldsync.queue.encrypted import EncryptedQueue
from fieldsync.sync.spool import PushSpool, SpoolRelay
from fieldsync.workers.pool import is_outage

__all__ = ["SyncService", "compact_history", "dead_letter_summaries", "open_push_queue"]

log = logging.getLogger("fieldsync.sync")


class SyncService:
    """Receives push batches into the queue and applies them with a pool of listeners."""

    def __init__(self, store: Callable[[], RecordStore], queue: Queue | Callable[[], Queue], *,
                 audit: AuditLog | None = None, listeners: int = 2, clock: Callable[[], dt.datetime] = utc_now,
                 dependencies: Dependencies | None = None, sealer: Any = None, send_timeout: float = 3.0):
        self._queue = queue if not callable(queue) or hasattr(queue, "send") else None
        self._open_queue = None if self._queue is not None else queue
        self.applier = MutationApplier(store, audit=audit, clock=clock)
        self.listeners = listeners
        self._pool = None
        self.visibility_timeout = 60.0  # seconds a batch stays hidden before it is redelivered
        self._lock = threading.Lock()
        self._open_lock = threading.Lock()
        self._started = False
        self._stopping = threading.Event()
        # called after every handled message: (message, batch or None, outcome, seconds,
        # new results); outcome is applied | redelivery | unprocessable | failed
        self.observers: list[Callable[[Message, PushBatch | None, str, float, int], None]] = []
        # queue outages (docs/operations.md "Outages"): a send waits at most send_timeout
        # seconds; what the queue does not take in time is spooled in the database (sync/spool.py)
        self.dependencies = dependencies or Dependencies()
        self.send_timeout = send_timeout
        if sealer is None and isinstance(self._queue, EncryptedQueue):
            sealer = self._queue
        self.spool = PushSpool(sealer) if sealer is not None else None
        self.relay = (SpoolRelay(lambda: self.applier.store().engine, self._relay_send, dependencies=self.dependencies)
                      if self.spool is not None else None)
        self._sender: ThreadPoolExecutor | None = None
        # after a batch failed on an outage the listener pool claims again only once this answers
        # True (create_app: the database's SELECT 1 and the key provider's check)
        self.outage_probe: Callable[[], bool] | None = None
        self._sender_lock = threading.Lock()
        self.retry_seconds = 5.0   # while the queue fails, one push tries it again this often
        self._next_trial = 0.0

    @classmethod
    def from_config(cls, config, store, *, audit: AuditLog | None = None, clock=None,
                    dependencies: Dependencies | None = None) -> "SyncService":
        """The service for `config`; its queue is opened on first use, so building an app
        creates no file and starts no thread. `audit` records the PHI pushed batches write."""
        from fieldsync.crypto.providers import key_provider_from_config
        url = config.queue_url
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        sealed = bool(config.get("QUEUE_ENCRYPTION", True))
        # one sealer for the queue's bodies and the spool's (invariant 7): a spooled batch is
        # relayed as the very envelope the queue would have stored
        sealer = EncryptedQueue(None, key_provider_from_config(config))

        def opened() -> Queue:
            # the embedded queue need not zero acked bodies that are ciphertext
            queue = open_queue(url, secure_delete=False) if url.startswith("sqlite:") and sealed else open_queue(url)
            if not sealed:
                return queue
            sealer.inner = queue
            return sealer
        service = cls(store, opened, audit=audit, listeners=int(config["SYNC_LISTENERS"]), clock=clock or utc_now,
                      dependencies=dependencies, sealer=sealer,
                      send_timeout=float(config.get("QUEUE_SEND_TIMEOUT") or 3.0))
        service.retry_seconds = float(config.get("QUEUE_RETRY_SECONDS") or 5.0)
        service.visibility_timeout = float(config.get("SYNC_VISIBILITY_TIMEOUT") or 60.0)
        return service

    @property
    def queue(self) -> Queue:
        queue = self._queue
        if queue is not None:
            return queue
        with self._open_lock:   # not self._lock: opening may wait on the network
            if self._queue is None:
                self._queue = self._open_queue()
            return self._queue

    @property
    def pool(self):
        from fieldsync.workers.pool import ListenerPool
        queue = self.queue
        with self._lock:
            if self._pool is None:
                self._pool = ListenerPool(queue, self.handle, threads=max(self.listeners, 1), name="fieldsync-push",
                                          visibility_timeout=self.visibility_timeout,
                                          probe=lambda: self.outage_probe() if self.outage_probe else True)
            return self._pool

    def enqueue(self, batch: PushBatch) -> None:
        """Make `batch` durable in the queue (invariant 1: only then is it "received"), waiting
        at most `send_timeout` seconds; raises QueueTimeout past it (the send may still land:
        the ledger makes a second copy harmless)."""
        self._bounded(lambda: self.queue.send(batch.to_bytes(), group=batch.device_id), self.send_timeout)

    def _bounded(self, call: Callable[[], Any], timeout: float) -> Any:
        """`call()` in the sender threads, waited for at most `timeout` seconds."""
        with self._sender_lock:
            if self._sender is None:
                self._sender = ThreadPoolExecutor(max_workers=16, thread_name_prefix="fieldsync-send")
            sender = self._sender
        future = sender.submit(call)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()   # not started yet (every sender thread waits on the queue): never sent
            raise QueueTimeout(f"the push queue did not answer within {timeout:g} s") from None

    def queue_failing(self) -> bool:
        """True while the last send to the queue failed: pushes go to the spool without trying
        it. Every `retry_seconds` one push tries the queue again (this process may not be the
        one whose relay forwards the spool, so it learns of the queue's return by itself)."""
        if not self.dependencies.is_failing(QUEUE):
            return False
        with self._sender_lock:
            now = time.monotonic()
            if now >= self._next_trial:
                self._next_trial = now + self.retry_seconds
                return False
        return True

    def queue_retry_due(self) -> bool:
        """True when the next push may try the queue (it is up, or the retry interval is over)."""
        return not self.dependencies.is_failing(QUEUE) or time.monotonic() >= self._next_trial

    def queue_failed(self, exc: BaseException) -> None:
        with self._sender_lock:
            self._next_trial = time.monotonic() + self.retry_seconds
        self.dependencies.failed(QUEUE, exc, state=DEGRADED if self.spool is not None else DOWN)

    def queue_answered(self) -> None:
        self.dependencies.succeeded(QUEUE)

    def _relay_send(self, items: list[tuple[bytes, str]]) -> None:
        """Send spooled envelopes to the queue as they are (they were sealed for it)."""
        def send() -> None:
            queue = self.queue
            if isinstance(queue, EncryptedQueue):
                queue.inner.send_batch(items)
            else:
                queue.send_batch([(self.spool.sealer.open(body), group) for body, group in items])
        self._bounded(send, max(self.send_timeout * 3, 10.0))
        self.start()   # the listeners, if the queue could not be opened when the server started

    def spool_depth(self):
        """The spool's depth (SpoolDepth), or None without a spool."""
        if self.spool is None:
            return None
        with self.applier.store().engine.connect() as conn:
            return PushSpool.depth(conn)

    def handle(self, message: Message) -> None:
        """A listener's handler: apply one push batch. Raising leaves the message unacked, so it
        is redelivered; the ledger makes the second run exact-once. Every outcome is reported
        to `observers` (the processing log).

        Where a push batch is retried: only by redelivery, which the listener pool schedules
        with backoff (`fieldsync.workers.pool.retry_delay`); this handler ends the retries at
        the queue's `max_receives` by rejecting the batch's mutations as unprocessable
        (invariant 5), except for an audit outage. The applier and the push endpoint
        (`fieldsync.sync.receive`) retry nothing themselves."""
        started = time.perf_counter()
        batch: PushBatch | None = None
        outcome, results = "failed", []
        try:
            batch = PushBatch.from_bytes(message.body)
            try:
                results = self.applier.apply_batch(batch)
                outcome = "applied" if results else "redelivery"
            except Exception as exc:
                last = getattr(self.queue, "max_receives", 5)
                if message.receive_count < last or isinstance(exc, AuditUnavailable) or is_outage(exc):
                    # redelivered later; the ledger keeps the retry exact-once. An audit, database
                    # or key-provider outage is the server's, not the batch's: never rejected for
                    # it; a batch that outlives max_receives waits among the dead letters
                    # (`fieldsync dlq replay`), the listener pool pausing meanwhile
                    raise
                # the last delivery: answer every mutation rather than let the batch die unseen
                log.exception("push batch of device %s failed %d times; rejecting it as unprocessable",
                              batch.device_id, message.receive_count)
                results = self.applier.reject_unprocessable(
                    batch, f"the server failed to process this batch {message.receive_count} times "
                           f"({type(exc).__name__}); send the change again or contact support")
                outcome = "unprocessable"
        finally:
            duration = time.perf_counter() - started
            for observer in list(self.observers):
                try:
                    observer(message, batch, outcome, duration, len(results))
                except Exception:
                    log.exception("a processing observer failed")

    def start_maintenance(self, engine: sa.Engine, retention_days: int, *, interval: float = 24 * 3600) -> None:
        """Run `compact_history` now and then every `interval` seconds in a daemon thread, until
        `stop()` (the server does this; `fieldsync compact` does it once by hand)."""
        def loop() -> None:
            while True:
                try:
                    done = compact_history(engine, self.applier.store(), retention_days)
                    log.info("retention: %s", done)
                except Exception:
                    log.exception("retention compaction failed; retrying at the next interval")
                if self._stopping.wait(interval):
                    return
        self._stopping.clear()
        threading.Thread(target=loop, name="fieldsync-retention", daemon=True).start()

    def unsettled(self, device_id: str) -> int:
        """The device's mutations received and not yet processed (any queue backend)."""
        from fieldsync.store.sync_tables import unsettled
        with self.applier.store().engine.connect() as conn:
            return unsettled(conn, device_id)

    def start(self) -> None:
        """Start the listeners (once; later calls do nothing). The server starts them at boot so
        batches received before a restart are applied; a push starts them too."""
        if self.listeners <= 0 or self._started:
            return
        try:
            pool = self.pool
        except Exception as exc:
            # the queue cannot be opened now (broker or SQS down at boot): pushes are spooled,
            # and the listeners start with the first send that succeeds
            self.queue_failed(exc)
            log.warning("the push queue cannot be opened (%s); its listeners start once it answers",
                        describe_error(exc))
            return
        with self._lock:
            if self._started:
                return
            self._started = True
        pool.start()

    def start_relay(self) -> None:
        """Watch the push spool for as long as this process runs (`fieldsync serve` and
        `fieldsync worker`: batches a stopped process left are relayed by the others)."""
        if self.relay is not None:
            self.relay.start()

    def stop(self, timeout: float | None = 30) -> None:
        self._stopping.set()
        if self.relay is not None:
            self.relay.stop(timeout)
        with self._lock:
            started, self._started = self._started, False
        if started and self._pool is not None:
            self._pool.stop(timeout)

    def drain(self, *, fail_after_apply: bool = False) -> int:
        """Apply every queued batch in the calling thread (a server run with SYNC_LISTENERS=0,
        tests, `fieldsync demo`); returns how many batches were applied. With
        `fail_after_apply`, each batch is applied and committed but never acked — what a worker
        killed between apply and acknowledgement leaves behind (fault injection)."""
        done = 0
        if self.relay is not None:
            while self.relay.relay_once():
                pass
        while True:
            messages = self.queue.receive(10, visibility_timeout=60.0)
            if not messages:
                return done
            for message in messages:
                self.handle(message)
                done += 1
            if fail_after_apply:
                self.queue.release([m.receipt for m in messages])
                return done
            self.queue.ack([m.receipt for m in messages])

    def close(self) -> None:
        """Stop the listeners and close the queue (if it was ever opened)."""
        self.stop()
        with self._lock:
            queue, self._queue = self._queue, None
        with self._sender_lock:
            sender, self._sender = self._sender, None
        if sender is not None:
            sender.shutdown(wait=False, cancel_futures=True)
        if queue is not None:
            queue.close()

    def wait_idle(self, timeout: float = 30) -> bool:
        """True once every received batch is applied (tests, demos, the bench)."""
        if not self._started:
            self.drain()
            return self.queue.pending() == 0
        return self.pool.wait_idle(timeout)


def open_push_queue(config: Any) -> Any:
    """The push queue exactly as the server opens it (backend, encryption), for the operator
    commands that build no app."""
    return SyncService.from_config(config, lambda: None).queue


def dead_letter_summaries(queue: Any, limit: int = 100) -> list[dict[str, Any]]:
    """The dead letters without their bodies: message id, device, delivery count, enqueue time,
    and the number of mutations when the body reads as a push batch (an encrypted body does
    not: then the device comes from the message group, which is the device id)."""
    items = []
    for message in queue.dead_letters(limit):
        device, mutations = message.group, None
        try:
            batch = PushBatch.from_bytes(message.body)
            device, mutations = batch.device_id, len(batch.mutations)
        except Exception:
            pass   # unreadable here (encrypted, or not a push batch): never shown
        items.append({"message_id": message.id, "device_id": device, "receive_count": message.receive_count,
                      "enqueued_at": dt.datetime.fromtimestamp(message.enqueued_at, dt.timezone.utc)
                      .isoformat().replace("+00:00", "Z"),
                      "mutations": mutations})
    return items


def compact_history(engine: sa.Engine, store: RecordStore, retention_days: int, now: dt.datetime | None = None) -> dict[str, Any]:
    """Retention (docs/sync-design.md decision 8): drop change-log entries older than the
    window and purge tombstones older than it. Returns what was done."""
    now = now or utc_now()
    since = now - dt.timedelta(days=retention_days)
    purged = 0
    with write_transaction(engine) as conn:
        first = first_position_since(conn, since)
        horizon = first if first is not None else head_position(conn) + 1
        deleted = purge_before(conn, horizon)
        for entity in store.model.entities:
            table = store.table(entity)
            purged += conn.execute(table.delete().where(table.c.deleted == sa.true(),
                                                        table.c.updated_at < since)).rowcount
    return {"horizon": horizon, "changes_deleted": deleted, "tombstones_purged": purged}
