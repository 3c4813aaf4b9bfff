"""The listener pool: threads that claim queued push batches and hand each to a handler.

The handler (apply, in the server) processes one message in transactions of at most 500
mutations (sync/applier.py). The pool acks a message only after its handler returned normally,
so a crash, a database outage or a handler error never loses a batch: the message is redelivered
and the ledger makes the second run exact-once (invariants 1 and 2). A failed message is
released with a backoff delay (1 s, 2 s, 4 s … capped at 60 s); its group, the device, waits
meanwhile, so its later batches are never applied out of order (sync-design.md decision 2). This
redelivery is the one retry of a push batch; the handler (`SyncService.handle`) decides when its
retries end.

Each thread claims up to `batch_size` messages, runs their handlers one after another, then
acks the successful ones in one call. While a thread holds messages, a heartbeat thread extends
their visibility once half the timeout has passed, so a slow handler does not get its message
handed to another consumer. `resize` adds threads or retires the highest-numbered ones: a
retiring thread finishes the handler it is running, releases the messages it has not started
(visible again at once) and exits, so nothing is lost. `stop` does the same for every thread.
A thread blocked in a long poll notices `resize`/`stop` when the poll returns (`wait_seconds`).

A dependency outage (`is_outage`: the database restarting or failing over, the key provider
not answering) is not the batch's fault: the failed message is released as above, the thread
gives back the rest of its claim at once (each claim counts as a delivery towards the queue's
`max_receives`) and claims nothing more until the outage looks over: it waits 1 s, 2 s, 4 s …
(≤ OUTAGE_PAUSE_CAP) and asks `probe()` (the server's: can the database be reached) before it
claims again. So an outage costs a batch a delivery or two, not all of them.

Message bodies may hold PHI: nothing here logs a body or an exception's text (a handler's
error message may quote field values), only message ids, delivery counts and exception types.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from fieldsync.backoff import Backoff
from fieldsync.queue.embedded import Message, Queue

__all__ = ["ListenerPool", "PoolStats", "is_outage", "retry_delay"]

log = logging.getLogger("fieldsync.sync.worker")

RECEIVE_ERROR_PAUSE = 1.0  # seconds a thread waits after the queue itself failed
OUTAGE_PAUSE_CAP = 15.0    # the longest wait between probes while a dependency is out
_OUTAGE_PAUSE = Backoff(base=1.0, cap=OUTAGE_PAUSE_CAP)
_REDELIVERY = Backoff(base=1.0, cap=60.0)   # seconds


def retry_delay(receive_count: int) -> float:
    """The backoff before a failed delivery is retried: 1 s × 2^(receive_count − 1), ≤ 60 s. The
    bound itself, no jitter: the queue schedules this retry, and the device's later batches wait
    for it (fieldsync.backoff)."""
    return _REDELIVERY.ceiling(receive_count - 1)


def is_outage(exc: BaseException) -> bool:
    """True when `exc` (or what caused it) is a dependency outage rather than the batch's own
    failure: the database unavailable, or the key provider not answering."""
    from fieldsync.errors import KeyProviderUnreachable
    from fieldsync.store.engine import database_unavailable
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, KeyProviderUnreachable) or database_unavailable(current):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


@dataclass
class PoolStats:
    """Counts since the pool was built: handlers that returned, handlers that raised."""

    processed: int = 0
    failed: int = 0
    outages: int = 0    # handler failures that were a dependency's outage (then the pool paused)


class _Listener:
    """One pool thread and the deliveries it holds (receipt -> last visibility deadline start)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.retire = threading.Event()
        self.held: dict[str, float] = {}
        self.thread: threading.Thread | None = None
        self.outage = False    # its last handler failed on a dependency outage: pause before claiming
        self.outages = 0       # such failures in a row (the pause grows with them)


class ListenerPool:
    """`threads` listener threads calling `handler` for each message of `queue`.

    `on_error(message, exc)` is called after a handler raised (and the message was released).
    `probe()` says whether the dependencies are back after an outage (None: only the pause;
    SyncService passes its `outage_probe`); `is_outage(exc)` classifies
    a handler's failure. Nothing starts before `start()`; threads are daemons named
    `<name>-<n>`, the heartbeat `<name>-heartbeat`.
    """

    def __init__(self, queue: Queue, handler: Callable[[Message], None], *, threads: int = 2,
                 batch_size: int = 10, visibility_timeout: float = 60.0, wait_seconds: float = 1.0,
                 on_error: Callable[[Message, BaseException], None] | None = None,
                 name: str = "listener", probe: Callable[[], bool] | None = None,
                 is_outage: Callable[[BaseException], bool] = is_outage) -> None:
        if threads < 0:
            raise ValueError(f"threads must not be negative, not {threads}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if visibility_timeout <= 0:
            raise ValueError(f"visibility_timeout must be positive, not {visibility_timeout}")
        self._queue = queue
        self._handler = handler
        self._on_error = on_error
        self._probe = probe
        self._is_outage = is_outage
        self._batch_size = batch_size
        self._visibility_timeout = visibility_timeout
        self._wait_seconds = wait_seconds
        self._name = name
        self._target = threads
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)   # a batch finished or a thread exited
        self._listeners: list[_Listener] = []
        self._busy = 0                                     # threads holding messages
        self._started = False
        self._stopping = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.stats = PoolStats()

    def __repr__(self) -> str:
        return f"ListenerPool({self._name!r}, threads={self.threads})"

    @property
    def threads(self) -> int:
        """The number of listener threads the pool runs (retiring ones not counted)."""
        with self._lock:
            if not self._started:
                return self._target
            return sum(1 for listener in self._listeners if not listener.retire.is_set())

    @property
    def in_flight(self) -> int:
        """Messages the pool holds now (claimed, not yet acked or released)."""
        with self._lock:
            return sum(len(listener.held) for listener in self._listeners)

    def start(self) -> None:
        """Start the listener threads and the heartbeat."""
        with self._lock:
            if self._started:
                raise RuntimeError(f"{self!r} was already started")
            self._started = True
            for _ in range(self._target):
                self._spawn()
            self._heartbeat = threading.Thread(target=self._beat, name=f"{self._name}-heartbeat",
                                               daemon=True)
            self._heartbeat.start()

    def resize(self, threads: int) -> None:
        """Run `threads` listener threads from now on. Growing starts threads at once;
        shrinking retires the highest-numbered threads after their current handler (their
        unstarted messages are released, not lost). Does not wait for retiring threads."""
        if threads < 0:
            raise ValueError(f"threads must not be negative, not {threads}")
        with self._lock:
            self._target = threads
            if not self._started or self._stopping.is_set():
                return
            active = [listener for listener in self._listeners if not listener.retire.is_set()]
            for listener in sorted(active, key=lambda item: item.number)[threads:]:
                listener.retire.set()
            for _ in range(threads - len(active)):
                self._spawn()
        log.info("%s resized to %d threads", self._name, threads)

    def stop(self, timeout: float | None = 30) -> None:
        """Let running handlers finish, release unstarted messages, and end every thread.
        Returns after `timeout` seconds even if a handler is still running (it is logged;
        its message is redelivered after the visibility timeout if it never finishes)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._stopping.set()
            for listener in self._listeners:
                listener.retire.set()
            threads = [listener.thread for listener in self._listeners if listener.thread]
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        still = [thread.name for thread in threads if thread.is_alive()]
        if still:
            log.warning("%s: threads still running after stop(): %s", self._name, ", ".join(still))
        elif self._heartbeat is not None:
            self._heartbeat.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def wait_idle(self, timeout: float) -> bool:
        """True once the queue has no pending message and no thread holds one; False when
        `timeout` seconds pass first."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                busy = self._busy
            if not busy and self._queue.pending() == 0:
                with self._lock:
                    if not self._busy:
                        return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self._changed:
                # other processes may send too: re-check the queue now and then
                self._changed.wait(min(0.05, remaining))

    # -- threads --

    def _spawn(self) -> None:
        """Start one listener with the lowest free number (caller holds the lock)."""
        taken = {listener.number for listener in self._listeners}
        number = next(n for n in range(1, len(taken) + 2) if n not in taken)
        listener = _Listener(number)
        listener.thread = threading.Thread(target=self._listen, args=(listener,),
                                           name=f"{self._name}-{number}", daemon=True)
        self._listeners.append(listener)
        listener.thread.start()

    def _listen(self, listener: _Listener) -> None:
        try:
            while not listener.retire.is_set():
                try:
                    messages = self._queue.receive(self._batch_size,
                                                   visibility_timeout=self._visibility_timeout,
                                                   wait_seconds=self._wait_seconds)
                except Exception as exc:
                    log.error("%s: receiving from the queue failed (%s); retrying in %.0f s",
                              threading.current_thread().name, type(exc).__name__, RECEIVE_ERROR_PAUSE)
                    listener.retire.wait(RECEIVE_ERROR_PAUSE)
                    continue
                if messages:
                    self._process(listener, messages)
                if listener.outage:
                    self._wait_out_outage(listener)
        finally:
            with self._changed:
                self._listeners.remove(listener)
                self._changed.notify_all()

    def _wait_out_outage(self, listener: _Listener) -> None:
        """Claim nothing until the outage looks over: pause with backoff, then ask the probe."""
        probe = self._probe
        pauses = listener.outages - 1   # an outage that persists after a claim waits longer each time
        while not listener.retire.is_set():
            pause = _OUTAGE_PAUSE.ceiling(pauses)
            if listener.retire.wait(pause):
                break
            pauses += 1
            try:
                if probe is None or probe():
                    break
            except Exception:
                pass   # a probe that fails is a "not yet"
            log.info("%s: a dependency is still out; waiting before claiming", threading.current_thread().name)
        listener.outage = False

    def _process(self, listener: _Listener, messages: list[Message]) -> None:
        claimed_at = time.monotonic()
        with self._changed:
            self._busy += 1
            listener.held = {message.receipt: claimed_at for message in messages}
        done: list[str] = []
        try:
            for index, message in enumerate(messages):
                if listener.retire.is_set() or listener.outage:
                    # retiring, or a dependency is out: the rest would only fail too
                    self._give_back(listener, messages[index:])
                    break
                if self._run_handler(listener, message):
                    done.append(message.receipt)
            if done:
                try:
                    # invariant 2: ack only what was processed; a lost ack means a redelivery,
                    # which the ledger turns into a duplicate result, never a second effect
                    self._queue.ack(done)
                except Exception as exc:
                    log.error("%s: acking %d messages failed (%s); they will be redelivered",
                              threading.current_thread().name, len(done), type(exc).__name__)
        finally:
            with self._changed:
                listener.held = {}
                self._busy -= 1
                self._changed.notify_all()

    def _run_handler(self, listener: _Listener, message: Message) -> bool:
        """Call the handler; on an error release the message with backoff. True on success."""
        try:
            self._handler(message)
        except BaseException as exc:
            delay = retry_delay(message.receive_count)
            outage = isinstance(exc, Exception) and self._is_outage(exc)
            with self._lock:
                self.stats.failed += 1
                self.stats.outages += outage
                listener.held.pop(message.receipt, None)
            if outage:
                # the next delivery waits for the probe anyway; keep it short after that
                delay = min(delay, 1.0)
                listener.outage = True
                listener.outages += 1
            log.warning("%s: handler failed on message %s (delivery %d): %s; retrying in %.0f s",
                        threading.current_thread().name, message.id, message.receive_count,
                        type(exc).__name__, delay)
            try:
                self._queue.release([message.receipt], delay=delay)
            except Exception as release_exc:
                log.error("%s: releasing message %s failed (%s); it returns after its timeout",
                          threading.current_thread().name, message.id, type(release_exc).__name__)
            if self._on_error is not None:
                try:
                    self._on_error(message, exc)
                except Exception as hook_exc:
                    log.error("%s: on_error raised %s for message %s", threading.current_thread().name,
                              type(hook_exc).__name__, message.id)
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: the message is released, the thread ends
            return False
        listener.outages = 0
        with self._lock:
            self.stats.processed += 1
        return True

    def _give_back(self, listener: _Listener, messages: list[Message]) -> None:
        """Release messages a retiring thread has not started, visible again at once."""
        receipts = [message.receipt for message in messages]
        with self._lock:
            for receipt in receipts:
                listener.held.pop(receipt, None)
        try:
            self._queue.release(receipts)
        except Exception as exc:
            log.error("%s: releasing %d unstarted messages failed (%s); they return after their "
                      "timeout", threading.current_thread().name, len(receipts), type(exc).__name__)

    def _beat(self) -> None:
        """Extend the visibility of held deliveries once half the timeout has passed."""
        half = self._visibility_timeout / 2
        interval = max(0.01, self._visibility_timeout / 4)
        while True:
            with self._lock:
                if self._stopping.is_set() and not self._listeners:
                    return
                now = time.monotonic()
                due = [(listener, receipt) for listener in self._listeners
                       for receipt, since in listener.held.items() if now - since >= half]
            for listener, receipt in due:
                try:
                    self._queue.extend(receipt, self._visibility_timeout)
                except Exception as exc:
                    log.error("%s: extending a message's visibility failed (%s)",
                              threading.current_thread().name, type(exc).__name__)
                    continue
                with self._lock:
                    if receipt in listener.held:
                        listener.held[receipt] = now
            if not self._stopping.wait(interval):
                continue
            with self._changed:
                # stopping: keep beating for the handlers still finishing, until the last exits
                if self._listeners:
                    self._changed.wait(interval)
