"""What a server process depends on, as it last found each one: the database, the push queue,
the key provider and the object store (docs/operations.md "Outages").

The code that calls a dependency reports each outcome here (`succeeded`, `failed`); nothing in
this module calls a dependency itself. The readiness endpoint (`GET /api/v1/ready`),
`fieldsync workers status` and the admin dashboard read `snapshot()`. A dependency is

* `up` — its last call succeeded;
* `degraded` — it fails, and the server works around it (the push queue while the database
  spools pushes, the key provider while cached data keys serve);
* `down` — it fails and what needs it cannot be served.

An error is kept as its class name and a short reason: the name of a host or a key may be
shown to an operator, never a value of a record (invariant 7).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

T = TypeVar("T")

__all__ = ["DATABASE", "DEGRADED", "DOWN", "Dependencies", "DependencyState", "KEYS", "MEDIA", "QUEUE", "UP",
           "call_within", "describe_error"]

UP, DEGRADED, DOWN = "up", "degraded", "down"
DATABASE, QUEUE, KEYS, MEDIA = "database", "queue", "keys", "object_store"

_ERROR_LENGTH = 200


def describe_error(exc: BaseException) -> str:
    """`exc` as an operator reads it: class name and the first line of its message, cut short."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text[:_ERROR_LENGTH]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class DependencyState:
    name: str
    state: str                      # up | degraded | down | unknown (never called yet)
    since: float | None             # epoch seconds the state began
    last_success: float | None      # epoch seconds
    last_failure: float | None
    error: str | None               # describe_error of the last failure, while not up
    failures: int                   # failures in a row

    def to_dict(self, *, detail: bool = True) -> dict:
        """The state for a reader; without `detail` (the public readiness answer) no error text."""
        out = {"state": self.state, "since": _iso(self.since), "last_success": _iso(self.last_success),
               "last_failure": _iso(self.last_failure)}
        if detail:
            out["error"] = self.error
            out["failures"] = self.failures
        return out


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    import datetime as dt
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Dependencies:
    """The dependency states of one process; safe to share between threads."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._lock = threading.Lock()
        self._states: dict[str, DependencyState] = {}
        self._listeners: list[Callable[[DependencyState, DependencyState | None], None]] = []

    def succeeded(self, name: str) -> None:
        """A call to `name` succeeded just now."""
        now = self._clock()
        with self._lock:
            old = self._states.get(name)
            if old is not None and old.state == UP:
                # the common case, kept cheap: only the time moves
                self._states[name] = DependencyState(name, UP, old.since, now, old.last_failure, None, 0)
                return
            new = DependencyState(name, UP, now, now, old.last_failure if old else None, None, 0)
            self._states[name] = new
        self._changed(new, old)

    def failed(self, name: str, exc: BaseException | str, *, state: str = DOWN) -> None:
        """A call to `name` failed just now; `state` says whether the server works around it."""
        now = self._clock()
        error = exc if isinstance(exc, str) else describe_error(exc)
        with self._lock:
            old = self._states.get(name)
            since = old.since if old is not None and old.state == state else now
            new = DependencyState(name, state, since, old.last_success if old else None, now, error,
                                  (old.failures if old else 0) + 1)
            self._states[name] = new
        if old is None or old.state != state:
            self._changed(new, old)

    def state(self, name: str) -> DependencyState:
        with self._lock:
            found = self._states.get(name)
        return found or DependencyState(name, "unknown", None, None, None, None, 0)

    def is_failing(self, name: str) -> bool:
        """True while the last call to `name` failed."""
        return self.state(name).state in (DEGRADED, DOWN)

    def snapshot(self, names: tuple[str, ...] = (DATABASE, QUEUE, KEYS, MEDIA)) -> dict[str, DependencyState]:
        with self._lock:
            known = dict(self._states)
        out = {n: known.get(n) or DependencyState(n, "unknown", None, None, None, None, 0) for n in names}
        out.update({n: s for n, s in known.items() if n not in out})
        return out

    def on_change(self, listener: Callable[[DependencyState, DependencyState | None], None]) -> None:
        """Call `listener(new, old)` whenever a dependency's state changes (the log, the audit)."""
        self._listeners.append(listener)

    def _changed(self, new: DependencyState, old: DependencyState | None) -> None:
        import logging
        log = logging.getLogger("fieldsync.dependencies")
        if new.state == UP:
            if old is not None and old.state != UP:
                log.warning("%s is back up (it was %s since %s)", new.name, old.state, _iso(old.since))
        else:
            log.warning("%s is %s: %s", new.name, new.state, new.error)
        for listener in list(self._listeners):
            try:
                listener(new, old)
            except Exception:
                log.exception("a dependency listener failed")


def call_within(timeout: float, call: Callable[[], "T"], what: str = "the call") -> "T":
    """`call()` in a daemon thread of its own, waited for at most `timeout` seconds; raises
    TimeoutError past it (the call goes on in its thread and its result is dropped). For the
    operator's reads of a dependency (queue depth, dead letters) that must never hang a page."""
    box: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:   # handed to the caller
            box["error"] = exc
        finally:
            done.set()
    threading.Thread(target=run, name="fieldsync-bounded-call", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"{what} did not answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]
