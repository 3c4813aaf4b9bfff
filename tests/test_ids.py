"""UUIDv7 ids (`fieldsync.ids`): a batch from `new_ids` is what `new_id` would make one by one."""

from __future__ import annotations

import datetime as dt
import uuid

from fieldsync import ids

NOW = dt.datetime(2026, 12, 3, 15, 0, tzinfo=dt.timezone.utc)


def fields(value: str) -> tuple[int, int, int]:
    """(milliseconds, counter, variant) of an id, checked to be a canonical UUIDv7."""
    u = uuid.UUID(value)
    assert str(u) == value and u.version == 7 and u.variant == uuid.RFC_4122
    return u.int >> 80, (u.int >> 64) & 0xFFF, (u.int >> 62) & 0b11


def test_a_batch_continues_the_counter_and_carries_into_the_next_millisecond():
    first = ids.new_id(NOW)
    batch = ids.new_ids(5000, NOW)
    last = ids.new_id(NOW)
    made = [first, *batch, last]
    assert made == sorted(made) and len(set(made)) == len(made)
    stamps = [fields(v)[:2] for v in made]
    ms, counter = stamps[0]
    for stamp in stamps[1:]:   # one step of new_id's counter each: +1, or the next ms at 0
        counter += 1
        if counter > 0xFFF:
            ms, counter = ms + 1, 0
        assert stamp == (ms, counter)
    assert {fields(v)[2] for v in made} == {0b10}


def test_the_random_bits_differ_and_an_empty_batch_takes_nothing():
    before = list(ids._id_last)
    assert ids.new_ids(0, NOW) == []
    assert ids._id_last == before
    batch = ids.new_ids(2000, NOW)
    assert len({v[19:] for v in batch}) == 2000   # 62 random bits an id
