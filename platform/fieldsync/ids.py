"""Ids and the clock, shared by the server and the SDK: UUIDv7 record ids made in creation order,
and write times that never go backwards (docs/protocol.md §8.1). Standard library only."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time

def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def later_write_time(now: dt.datetime, previous: dt.datetime | None) -> dt.datetime:
    """A record's new write time: `now`, unless its write time is already later (a server
    clock stepped back), since a write time never goes backwards (docs/protocol.md §8.1)."""
    if previous is None:
        return now
    if previous.tzinfo is None:
        previous = previous.replace(tzinfo=dt.timezone.utc)
    return max(now, previous)


_id_lock = threading.Lock()
_id_last = [0, 0]  # last (milliseconds, counter) handed out by this process


def new_id(now: dt.datetime | None = None) -> str:
    """A UUIDv7 id: 48 bits of Unix milliseconds, a 12-bit counter, then random bits.

    The counter (RFC 9562 "method 1") keeps ids made in the same millisecond in creation order,
    so sorting by id is sorting by creation within one process.
    """
    ms = int((now.timestamp() if now else time.time()) * 1000)
    with _id_lock:
        if ms <= _id_last[0]:
            ms, seq = _id_last[0], _id_last[1] + 1
            if seq > 0xFFF:
                ms, seq = ms + 1, 0
        else:
            seq = 0
        _id_last[0], _id_last[1] = ms, seq
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"   # str(uuid.UUID(int=value)) without building the object (every local write)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_ids(count: int, now: dt.datetime | None = None) -> list[str]:
    """`count` UUIDv7 ids as `new_id` makes them one by one (the same order and counter), with
    one lock and one read of the random source for all of them (a batch of local writes)."""
    ms = int((now.timestamp() if now else time.time()) * 1000)
    stamps: list[tuple[int, int]] = []
    with _id_lock:
        last_ms, last_seq = _id_last
        for _ in range(count):
            if ms <= last_ms:
                this_ms, seq = last_ms, last_seq + 1
                if seq > 0xFFF:
                    this_ms, seq = this_ms + 1, 0
            else:
                this_ms, seq = ms, 0
            stamps.append((this_ms, seq))
            last_ms, last_seq = this_ms, seq
        _id_last[0], _id_last[1] = last_ms, last_seq
    random = os.urandom(8 * count)
    ids = []
    for i, (this_ms, seq) in enumerate(stamps):
        rand = int.from_bytes(random[8 * i:8 * i + 8], "big") & ((1 << 62) - 1)
        h = f"{(this_ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand:032x}"
        ids.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return ids
