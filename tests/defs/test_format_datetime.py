"""`format_datetime` writes every moment as the UTC text the protocol uses (`…ffffffZ`)."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.defs.values import format_datetime, parse_datetime

ZONES = st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=5, minutes=30)),
                         dt.timezone(dt.timedelta(hours=-8))])


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=dt.datetime(1000, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=ZONES))
def test_a_moment_is_written_in_utc_with_six_fraction_digits(moment):
    text = format_datetime(moment)
    utc = moment.astimezone(dt.timezone.utc)
    assert text == utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
    assert parse_datetime(text) == moment


def test_years_before_1000_keep_their_text():
    assert format_datetime(dt.datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=dt.timezone.utc)).endswith("-01-02T03:04:05.000006Z")
