"""fieldsync.json_wire reads every text exactly as json.loads does (orjson where that is the
same value) and writes JSON that json.loads reads back to the same value."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, strategies as st

from fieldsync import json_wire

TEXTS = [
    '{"a":18446744073709551616}',                 # past 64 bits: orjson would give a float
    '[1.5,-9223372036854775809]',                 # below -2**63
    '{"a":[{"b":[123456789012345678901234567890]}]}',
    '1234567890123456789',                        # 19 digits, fits: still exact either way
    '123456789012345678',
    '{"a":"\\ud800"}',                            # a lone surrogate escaped
    '{"a":1,"a":2}',                              # the last duplicate wins in both
    '[1E2,-0.0,5e-324,1.7976931348623157e308]',
    '"caf\\u00e9 \\ud83d\\ude00"',
]


@pytest.mark.parametrize("text", TEXTS)
def test_reads_what_the_standard_library_reads(text):
    for data in (text, text.encode()):
        assert repr(json_wire.loads(data)) == repr(json.loads(data))


def test_non_json_constants_and_other_encodings_go_to_the_standard_library():
    assert math.isnan(json_wire.loads("NaN"))
    assert json_wire.loads('"\u00e9"'.encode("utf-16")) == "\u00e9"
    with pytest.raises(ValueError):
        json_wire.loads("{")


def test_writes_what_orjson_cannot_with_the_standard_library():
    value = {"big": 2 ** 70, "text": "caf\u00e9"}
    assert json.loads(json_wire.dumps_bytes(value)) == value
    assert json.loads(json_wire.dumps_bytes({1: "a"})) == {"1": "a"}
    assert json.loads(json_wire.dumps_bytes("\ud800")) == "\ud800"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


@given(json_values)
def test_round_trips_any_json_value(value):
    text = json.dumps(value)
    assert repr(json_wire.loads(text)) == repr(json.loads(text))
    assert json.loads(json_wire.dumps_bytes(value)) == value
