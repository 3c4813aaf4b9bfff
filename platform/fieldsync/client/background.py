"""Syncing in the background: a thread that syncs on a timer and soon after local writes,
backing off exponentially with full jitter when a sync fails (protocol §9).

The delays come from `fieldsync.backoff.Backoff` (1 s doubling to 300 s); the waiting is done by
an injectable `wait(event, timeout) -> bool` (default `event.wait`) and the jitter by the
backoff's injectable `random.Random`, so tests drive the loop without sleeping.
"""

from __future__ import annotations

import threading
from typing import Callable

from fieldsync.backoff import Backoff
from fieldsync.client.errors import DeviceRevoked, SchemaTooNew

BASE_DELAY = 1.0     # after failure n, wait up to min(CAP_DELAY, BASE_DELAY * 2**n) (protocol §9)
CAP_DELAY = 300.0
SCHEMA_TOO_NEW_CAP = 3600.0

Wait = Callable[[threading.Event, "float | None"], bool]


def wait_on_event(event: threading.Event, timeout: float | None) -> bool:
    return event.wait(timeout)


class BackgroundSync:
    """The loop behind `Client.start()`.

    After a success it waits `interval` (or less, when a local write arrives: `debounce`
    seconds later it syncs, so a burst of writes makes one sync). After a failure it waits the
    backoff delay, and local writes do not cut that short (a device offline for hours must not
    hammer the network on every keystroke). `pause()` holds it, `resume()` syncs at once,
    `stop()` ends the thread. A revoked device stops the loop.
    """

    def __init__(self, run_sync: Callable[[], object], *, interval: float, debounce: float,
                 backoff: Backoff, wait: Wait | None = None,
                 on_error: Callable[[BaseException], None] | None = None):
        self._run_sync = run_sync
        self.interval = interval
        self.debounce = debounce
        self.backoff = backoff
        self._wait = wait or wait_on_event
        self._on_error = on_error
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._paused = False
        self._writes = False
        self._due = True
        self.failures = 0
        self.syncs = 0
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("background sync already started")
        self._thread = threading.Thread(target=self._loop, name="fieldsync-sync", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        with self._lock:
            self._paused = True
        self._wake.set()

    def resume(self) -> None:
        with self._lock:
            self._paused = False
            self._due = True
        self._wake.set()

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def notify_write(self) -> None:
        """A local write happened: sync soon, unless backing off after a failure."""
        with self._lock:
            self._writes = True
            failing = self.failures > 0
        if not failing:
            self._wake.set()

    # -- the loop ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        delay: float | None = None
        while not self._stopped.is_set():
            with self._lock:
                paused = self._paused
                due = self._due or (self._writes and self.failures == 0)
                by_write = not self._due and self._writes
                if not paused and due:
                    self._due = False
                    self._writes = False
            if paused:
                self._wait(self._wake, None)
                self._wake.clear()
                continue
            if due:
                if by_write and self.debounce > 0:
                    # let a burst of writes finish; only stop() interrupts this
                    self._wait(self._stopped, self.debounce)
                    if self._stopped.is_set():
                        return
                delay = self._attempt()
                if delay is None:
                    return
            woke = self._wait(self._wake, delay)
            self._wake.clear()
            if not woke:
                with self._lock:
                    self._due = True

    def _attempt(self) -> float | None:
        """Run one sync; the delay before the next, or None to end the loop."""
        try:
            self._run_sync()
        except DeviceRevoked as exc:
            self._report(exc)
            return None
        except Exception as exc:  # every failure is reported and retried with backoff
            with self._lock:
                self.failures += 1
                attempt = self.failures
            self._report(exc)
            cap = SCHEMA_TOO_NEW_CAP if isinstance(exc, SchemaTooNew) else None
            return self.backoff.delay(attempt, retry_after=getattr(exc, "retry_after", None), cap=cap)
        with self._lock:
            self.failures = 0
            self.syncs += 1
        return self.interval

    def _report(self, exc: BaseException) -> None:
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:  # a faulty callback must not kill the loop
                pass
