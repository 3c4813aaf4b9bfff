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
    # str(uuid.UUID(int=...)) without building the 128-bit value (every local write)
    h, r = f"{ms:012x}", os.urandom(8).hex()
    return f"{h[:8]}-{h[8:]}-{_VERSION_SEQ[seq]}-{_VARIANT[r[0]]}{r[1:4]}-{r[4:]}"


def new_ids(count: int, now: dt.datetime | None = None) -> list[str]:
    """`count` UUIDv7 ids as `new_id` makes them one by one (the same order and counter), with
    one lock and one read of the random source for all of them (a batch of local writes): the
    i-th id takes the counter value after the last one handed out plus i, carried into the
    next millisecond past 0xFFF, as `new_id` would."""
    ms = int((now.timestamp() if now else time.time()) * 1000)
    if count <= 0:
        return []
    with _id_lock:
        last_ms, last_seq = _id_last
        if ms <= last_ms:
            ms, first = last_ms, last_seq + 1
        else:
            first = 0
        end = first + count - 1
        _id_last[0], _id_last[1] = ms + (end >> 12), end & 0xFFF
    random = os.urandom(8 * count).hex()   # 16 hex digits an id: variant bits, then 62 random bits
    ids: list[str] = []
    done, counter = 0, first
    while done < count:
        h = f"{ms + (counter >> 12):012x}"
        prefix = f"{h[:8]}-{h[8:]}-"
        seq = counter & 0xFFF
        n = min(count - done, 0x1000 - seq)
        ids += [f"{prefix}{_VERSION_SEQ[s]}-{_VARIANT[random[j]]}{random[j + 1:j + 4]}-{random[j + 4:j + 16]}"
                for s, j in zip(range(seq, seq + n), range(16 * done, 16 * (done + n), 16))]
        done += n
        counter += n
    return ids


# the id's 13th to 16th hex digits: version 7 and the 12-bit counter
_VERSION_SEQ = tuple(f"7{s:03x}" for s in range(0x1000))
# the 17th hex digit: variant 0b10, then the two random bits a random hex digit's low bits give
_VARIANT = {d: "89ab"[int(d, 16) & 0b11] for d in "0123456789abcdef"}
