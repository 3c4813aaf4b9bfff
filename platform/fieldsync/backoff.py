"""The one backoff rule of fieldsync: exponential growth, capped, with full jitter.

Retry `n` (counted from 0) is bounded by `min(cap, base * 2**n)`; `delay(n)` draws uniformly
below that bound ("full jitter"), so many clients that failed together do not retry together.
Three places use it: the SDK's background sync after a failed sync (protocol §9), the STOMP
queue reconnecting to its broker, and the listener pool releasing a failed delivery — the pool
takes the bound itself (`ceiling`), because the queue, not a crowd of clients, schedules that
retry and the device's later batches wait for it (docs/workers.md).

Standard library only: the SDK imports it without importing any server module (issue 11,
property 1). The random source is injected, so tests get the same delays from the same seed.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays before retry `n` (n >= 0): `ceiling(n) = min(cap, base * 2**n)` and
    `delay(n)`, uniform in [0, ceiling(n)] and at least a server's `retry_after`."""

    def __init__(self, *, base: float, cap: float, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.rng = rng or random.Random()

    def ceiling(self, retry: int, *, cap: float | None = None) -> float:
        """The bound of retry `retry`: doubling from `base`, never above `cap` (this call's or the object's)."""
        limit = self.cap if cap is None else cap
        exponent = max(retry, 0)
        if exponent >= 64 or self.base * 2.0 ** exponent >= limit:   # no float overflow for a long outage
            return limit
        return self.base * 2.0 ** exponent

    def delay(self, retry: int, *, retry_after: float | None = None, cap: float | None = None) -> float:
        """A jittered delay for retry `retry`; a server's `Retry-After` is a minimum (protocol §9)."""
        return max(self.rng.uniform(0.0, self.ceiling(retry, cap=cap)), retry_after or 0.0)
