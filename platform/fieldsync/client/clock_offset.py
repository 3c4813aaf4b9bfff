"""The server's clock minus the device's, measured over round trips (protocol §8.1).

Every sync answer carries `Fieldsync-Server-Time`, the server's clock as it answered. For one
exchange sent at device time t1 and answered at t4, the offset is `server_time - (t1 + t4) / 2`,
wrong by at most half the round trip. The estimate is the sample with the shortest round trip
among the last few that are at most ten minutes old, so a slow upload (a large push on a poor
uplink) never counts as clock offset: its own long round trip loses to a short pull or ack.
A push carries it as `clock_offset_ms`; without a fresh sample a push carries none and the
server falls back to `received_at - sent_at`.
"""

from __future__ import annotations

import datetime as dt
from collections import deque

from fieldsync.defs.values import parse_datetime
from fieldsync.errors import ValueProblem

MAX_AGE = dt.timedelta(minutes=10)
SAMPLES = 8


class ClockOffset:
    """Round-trip samples of one server's clock, and the best current estimate."""

    def __init__(self) -> None:
        # (device time at the midpoint, round trip, offset)
        self._samples: deque[tuple[dt.datetime, dt.timedelta, dt.timedelta]] = deque(maxlen=SAMPLES)

    def observe(self, sent: dt.datetime, answered: dt.datetime, server_time: str | None) -> None:
        """One exchange sent at device time `sent`, answered at `answered`, whose answer said
        `server_time`. A clock that went backwards meanwhile gives no sample."""
        if not server_time or answered < sent:
            return
        try:
            server = parse_datetime(server_time)
        except (ValueProblem, TypeError, ValueError):
            return
        middle = sent + (answered - sent) / 2
        try:
            self._samples.append((middle, answered - sent, server - middle))
        except OverflowError:
            return

    def estimate_ms(self, now: dt.datetime) -> int | None:
        """The offset in milliseconds from the shortest fresh round trip, or None."""
        fresh = [s for s in self._samples if dt.timedelta(0) <= now - s[0] <= MAX_AGE]
        if not fresh:
            return None
        best = min(fresh, key=lambda s: s[1])
        return round(best[2] / dt.timedelta(milliseconds=1))
