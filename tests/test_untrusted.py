"""The parsers of client input (fieldsync/untrusted.py): strict integers, JSON with a bounded
depth, text no database can store."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from fieldsync.untrusted import (MAX_JSON_DEPTH, json_too_deep, load_json, parse_int, text_problem,
                                 unstorable_paths)
from fieldsync.errors import JsonRefused


def test_parse_int_takes_ascii_digits_within_bounds_only():
    assert parse_int("42", low=0, high=100) == 42
    assert parse_int(-3, low=-5, high=5) == -3
    assert parse_int("-3", low=-5, high=5) == -3
    for bad in ("²", "١٢", "１２", " 12", "12 ", "+12", "1_000", "", "-", "1e3", "12.0", True, 1.0, None,
                "9" * 5000, 2 ** 64, "99999999999999999999999"):
        with pytest.raises(ValueError):
            parse_int(bad, low=0, high=2 ** 63 - 1)


def test_load_json_bounds_depth_before_parsing():
    assert load_json(b'{"a": [1, {"b": "[[[[[[[["}]}') == {"a": [1, {"b": "[[[[[[[["}]}
    assert load_json("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    for deep in ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "[" * 200_000, "{\"a\":" * 100_000,
                 "[" * 100_000 + "]" * 100_000, "[]" * 100_000 + "[" * 100_000,
                 '{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)):
        for raw in (deep, deep.encode()):   # the text path and the UTF-8 (orjson) path alike
            with pytest.raises(JsonRefused, match="nested"):
                load_json(raw)
    assert len(load_json("[" + ",".join(["[]"] * 100_000) + "]")) == 100_000   # many siblings are fine
    with pytest.raises(JsonRefused):
        load_json(b"\xff\xfe{")


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


TRICKY = st.text(st.sampled_from('[]{}"\\ab,:'), max_size=6)
VALUES = st.recursive(st.none() | st.integers() | TRICKY,
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
                      max_leaves=40)


@settings(max_examples=300, deadline=None)
@given(value=VALUES, limit=st.integers(0, 8), ascii_only=st.booleans())
def test_depth_check_agrees_with_the_parsed_depth(value, limit, ascii_only):
    """Brackets, quotes and backslashes inside strings never count; nesting always does."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert json_too_deep(text, limit) == (_depth(value) > limit)


def _standard(raw: bytes):
    """What load_json answered before UTF-8 bodies went to orjson: the standard library behind
    the text depth check ("refused" for every refusal)."""
    try:
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError:
        return "refused"
    if json_too_deep(text):
        return "refused"
    try:
        return json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    except (ValueError, RecursionError):
        return "refused"


def _answer(raw: bytes):
    try:
        return load_json(raw)
    except JsonRefused:
        return "refused"


WIRE_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2 ** 62, max_value=2 ** 70)
    | st.floats(allow_nan=False) | st.text() | TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3) | TRICKY, inner, max_size=3),
    max_leaves=30)
JSON_BYTES = st.sampled_from(list(b'[]{}",:0123456789.eE-+ \\tnulrfas') + [0, 1, 0xc3, 0xa9, 0xff, 0xef, 0xbb, 0xbf])


@settings(max_examples=400, deadline=None)
@given(value=WIRE_VALUES, nest=st.integers(0, 3 * MAX_JSON_DEPTH), ascii_only=st.booleans(),
       noise=st.lists(JSON_BYTES, max_size=12), cut=st.integers(0, 40), spot=st.integers(0, 400))
def test_utf8_bodies_parse_exactly_as_the_standard_library_does(value, nest, ascii_only, noise, cut, spot):
    """orjson reads UTF-8 bodies only where its value is exactly json.loads's: the same value,
    the same int/float types, the same refusals (depth, NaN, 1e400, lone surrogates, not JSON)."""
    text = "[" * nest + json.dumps(value, ensure_ascii=ascii_only) + "]" * nest
    raw = text.encode("utf-8", "surrogatepass")
    for body in (raw, raw[:spot] + bytes(noise) + raw[spot + cut:], raw.replace(b"1", b"1e400", 1),
                 b'{"n": NaN}', b"\xef\xbb\xbf" + raw):
        expected, got = _standard(body), _answer(body)
        assert json.dumps(got) == json.dumps(expected) if got != "refused" else expected == "refused"


def test_text_no_database_stores():
    assert text_problem("ok ²") is None
    assert "NUL" in text_problem("a\x00")
    assert "surrogate" in text_problem("a\ud800")
    found = dict(unstorable_paths({"a": ["x", "\x00"], "b\udfff": 1, "mutations": [{"fields": {"n": "\x00"}}]},
                                  skip=("mutations[*].fields",)))
    assert set(found) == {"a[1]", "b\udfff"}
