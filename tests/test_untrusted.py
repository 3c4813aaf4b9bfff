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
                 "[" * 100_000 + "]" * 100_000, "[]" * 100_000 + "[" * 100_000):
        with pytest.raises(JsonRefused, match="nested"):
            load_json(deep)
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


def test_text_no_database_stores():
    assert text_problem("ok ²") is None
    assert "NUL" in text_problem("a\x00")
    assert "surrogate" in text_problem("a\ud800")
    found = dict(unstorable_paths({"a": ["x", "\x00"], "b\udfff": 1, "mutations": [{"fields": {"n": "\x00"}}]},
                                  skip=("mutations[*].fields",)))
    assert set(found) == {"a[1]", "b\udfff"}
