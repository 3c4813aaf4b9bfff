"""Limiting failed authentications (HIPAA 164.312(d)): a client address or a device that failed
`limit` times within `window` seconds is answered 429 with Retry-After, without its token being
checked, until the oldest of those failures is `window` seconds old (a sliding window).

The limiter is in-process and thread-safe: each server process keeps its own counts, so with N
processes behind a load balancer a client gets up to N x limit attempts per window (docs/access.md).
Memory is bounded: at most `limit` timestamps per key and `max_keys` keys; idle keys are swept.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable, Hashable, Iterable

__all__ = ["FailureLimiter"]


class FailureLimiter:
    """Counts failures per key (e.g. ("address", "10.0.0.7"), ("device", "0190...")).

    `clock` returns seconds (monotonic or epoch); tests inject their own.
    """

    def __init__(self, limit: int = 10, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000):
        if limit < 1 or window <= 0:
            raise ValueError(f"a failure limit needs limit >= 1 and window > 0 (got {limit}, {window})")
        self.limit = int(limit)
        self.window = float(window)
        self.clock = clock
        self.max_keys = max_keys
        self._failures: dict[Hashable, deque[float]] = {}
        self._lock = threading.Lock()
        self._recorded = 0

    def _blocked_for(self, key: Hashable, now: float) -> float:
        times = self._failures.get(key)
        if times is None or len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window - now)

    def retry_after(self, keys: Iterable[Hashable]) -> int | None:
        """Whole seconds until every one of `keys` may try again; None when none is blocked."""
        now = self.clock()
        with self._lock:
            wait = max((self._blocked_for(k, now) for k in keys), default=0.0)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, keys: Iterable[Hashable]) -> list[Hashable]:
        """Count one failure against each of `keys`; the keys this failure made blocked."""
        now = self.clock()
        newly = []
        with self._lock:
            for key in keys:
                times = self._failures.get(key)
                if times is None:
                    times = self._failures[key] = deque(maxlen=self.limit)
                while times and times[0] <= now - self.window:
                    times.popleft()
                was_blocked = self._blocked_for(key, now) > 0
                times.append(now)
                if not was_blocked and self._blocked_for(key, now) > 0:
                    newly.append(key)
            self._recorded += 1
            if len(self._failures) > self.max_keys or self._recorded % 1000 == 0:
                self._sweep(now)
        return newly

    def _sweep(self, now: float) -> None:
        for key in [k for k, t in self._failures.items() if not t or t[-1] <= now - self.window]:
            del self._failures[key]
        while len(self._failures) > self.max_keys:   # a flood of distinct keys: forget the oldest
            del self._failures[next(iter(self._failures))]

    def __len__(self) -> int:
        with self._lock:
            return len(self._failures)
