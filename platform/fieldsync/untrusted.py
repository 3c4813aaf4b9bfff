"""Parsing what clients send: JSON with a bounded depth, strict integers, NUL detection.

Every path that reads a number or JSON from a request goes through these (REST bodies, query
parameters and headers, list cursors, sync bodies, token payloads, resume tokens), so a value
means the same thing wherever it enters and no input can reach the database or the
interpreter in a form they fail on:

- `load_json` measures the nesting depth *before* parsing: Python's parser recurses per level,
  and a few hundred thousand `[` raise RecursionError (a 500) however small the body. UTF-8
  bodies are read by orjson (iterative, refusing past 1024 levels) and their depth measured on
  the value, wherever orjson's value is exactly the standard library's.
- `parse_int` takes an int or a string of ASCII digits (an optional leading `-`), within the
  bounds the caller gives (the column's range): `int()` also takes "²"-like digits it then
  refuses, "١٢", " 12", "+12" and "1_000", and a value past 64 bits overflows the database.
- `text_problem` and `unstorable_paths` find text no database can store as it is: NUL
  (PostgreSQL refuses it; SQLite would keep it) and lone UTF-16 surrogate halves, which JSON's
  `\ud800` escape can produce and no UTF-8 encoder takes.

Pure: no Flask, no database. Errors are `ValueError`s whose message is a reason a person can
act on; callers add the parameter's or field's name.
"""

from __future__ import annotations

import json
import re
from array import array
from itertools import accumulate
from typing import Any, Iterator
from fieldsync.errors import IntRefused, JsonRefused

try:
    import orjson
except ImportError:  # pragma: no cover - a dependency; the standard library is the fallback
    orjson = None

__all__ = ["INT32_MAX", "INT64_MAX", "MAX_JSON_DEPTH", "NOT_EXACT", "NUL_REASON", "SURROGATE_REASON", "IntRefused",
           "JsonRefused", "exact_orjson", "load_json", "parse_int", "text_problem", "unstorable_paths"]

INT64_MAX = 2 ** 63 - 1
INT32_MAX = 2 ** 31 - 1
# deep enough for any body the protocol defines (a push nests a JSON field's 32 levels 4 deep),
# far below the interpreter's recursion limit
MAX_JSON_DEPTH = 64
NUL_REASON = "must not contain the NUL character (U+0000)"
SURROGATE_REASON = "must be valid Unicode text (a lone surrogate half such as \\ud800 is not)"

_ASCII_INT = re.compile(r"-?[0-9]{1,19}")
_ESCAPE = re.compile(r"\\.", re.DOTALL)
_STRING = re.compile(r'"[^"]*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")   # as signed bytes: +1, +1, -1, -1


def parse_int(value: Any, *, low: int, high: int) -> int:
    """`value` as an int in [low, high]: an int (not a bool) or a string of ASCII digits with an
    optional leading '-' and nothing else. IntRefused (a ValueError) otherwise."""
    if isinstance(value, str):
        number = int(value) if _ASCII_INT.fullmatch(value) else None
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        number = None
    if number is None or not low <= number <= high:
        raise IntRefused(f"must be a whole number from {low} to {high} (ASCII digits)")
    return number


def json_too_deep(text: str, max_depth: int = MAX_JSON_DEPTH) -> bool:
    """Whether the arrays and objects of `text` nest deeper than `max_depth` (brackets inside
    strings ignored), in linear time whatever the input.

    Escapes are dropped first (so every remaining quote delimits a string), then strings, then
    everything but brackets; the depth is the highest running sum of +1 per opening and -1 per
    closing bracket. Text that is not JSON may be miscounted only after its first error, where
    the parser stops anyway.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return False
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", _ESCAPE.sub("", text)))
    if not brackets:
        return False
    return max(accumulate(array("b", brackets.encode("ascii").translate(_STEPS)))) > max_depth


def load_json(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """The JSON value of `raw` (bytes in UTF-8, -16 or -32, as `json.loads` detects them).

    JsonRefused when it is not JSON, nests deeper than `max_depth`, or holds NaN/Infinity
    (not JSON, though Python's parser takes them)."""
    if isinstance(raw, (bytes, bytearray)):
        encoding = json.detect_encoding(raw)
        try:
            text = bytes(raw).decode(encoding)
        except UnicodeDecodeError as exc:
            raise JsonRefused(f"is not valid UTF-8 JSON ({exc.reason} at byte {exc.start})") from None
        if encoding == "utf-8":
            value = _fast_value(bytes(raw), max_depth)
            if value is not NOT_EXACT:
                return value
    else:
        text = raw
    if json_too_deep(text, max_depth):
        raise JsonRefused(f"is nested more than {max_depth} levels deep")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:   # JSONDecodeError; int() past 4300 digits; the constants
        raise JsonRefused(f"is not valid JSON: {exc}") from None
    except RecursionError:      # unreachable after the depth check; never a 500
        raise JsonRefused(f"is nested more than {max_depth} levels deep") from None


# every digit becomes "0", everything else a space: a run of 19 zeros is a run of 19 digits
# (`bytes.translate` and `in` run in C at memory speed, a regular expression far slower)
_DIGITS_ONLY = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))
_LONG_RUN = b"0" * 19


NOT_EXACT = object()   # what `exact_orjson` answers when only the standard library may read a text


def exact_orjson(raw: bytes | bytearray) -> Any:
    """orjson's value of UTF-8 JSON `raw` where it is exactly `json.loads`'s, else `NOT_EXACT`:
    a run of 19 digits (an integer past 64 bits would become a float) and every text orjson
    refuses (NaN, 1e400, a lone surrogate escape, UTF-16, not JSON at all)."""
    if orjson is None or _LONG_RUN in raw.translate(_DIGITS_ONLY):
        return NOT_EXACT
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return NOT_EXACT


def _fast_value(raw: bytes, max_depth: int) -> Any:
    """The value of UTF-8 JSON `raw` read by orjson, several times faster than the standard
    library on push bodies, wherever its value is exactly `json.loads`'s (`exact_orjson`); else
    `NOT_EXACT`, and the standard path gives the same value or the same refusal as before.
    orjson refuses nesting past 1024 levels by itself; the depth limit is checked on the value."""
    value = exact_orjson(raw)
    if value is not NOT_EXACT and raw.count(b"[") + raw.count(b"{") > max_depth and _deeper_than(value, max_depth):
        raise JsonRefused(f"is nested more than {max_depth} levels deep")
    return value


def _deeper_than(value: Any, max_depth: int) -> bool:
    """Whether the arrays and objects of a parsed value nest deeper than `max_depth` (the
    depth `json_too_deep` measures on the text), without recursion."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        node, depth = stack.pop()
        if depth > max_depth:
            return True
        for item in (node.values() if isinstance(node, dict) else node):
            if isinstance(item, (dict, list)):
                stack.append((item, depth + 1))
    return False


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored as it is (NUL_REASON, SURROGATE_REASON), or None."""
    if "\x00" in text:
        return NUL_REASON
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return SURROGATE_REASON
    return None


def unstorable_paths(value: Any, path: str = "", *, skip: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(path, reason) for each string or key of a parsed JSON value that `text_problem` refuses;
    paths are written `a.b[2].c`. Paths in `skip` (exact, `[*]` standing for any index) are
    not entered."""
    if skip and _generic(path) in skip:
        return
    if isinstance(value, str):
        reason = text_problem(value)
        if reason is not None:
            yield path, reason
    elif isinstance(value, dict):
        for key, item in value.items():
            sub = f"{path}.{key}" if path else str(key)
            reason = text_problem(key)
            if reason is not None:
                yield sub, reason
                continue
            yield from unstorable_paths(item, sub, skip=skip)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from unstorable_paths(item, f"{path}[{i}]", skip=skip)


_INDEX = re.compile(r"\[[0-9]+\]")


def _generic(path: str) -> str:
    return _INDEX.sub("[*]", path)
