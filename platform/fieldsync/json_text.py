"""JSON text written on the hot paths of a push (the change log's rows, queued push batches).

orjson writes it when it can write the value exactly; otherwise the standard library does
(orjson refuses integers past 64 bits and lone surrogates). Either way `json.loads` reads the
text back to equal values: orjson writes non-ASCII characters as UTF-8 where `json` escapes
them, which no reader here compares byte for byte. Reading stays with `json.loads`, because
orjson's parser turns an integer past 64 bits into a float instead of refusing it.
"""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson
except ImportError:  # pragma: no cover - a dependency; the standard library is the fallback
    orjson = None

__all__ = ["dumps_bytes", "dumps_sorted", "dumps_text"]

_SORT = orjson.OPT_SORT_KEYS if orjson is not None else 0


def dumps_sorted(value: Any) -> str:
    """`value` as compact JSON text with object keys sorted (the change log's row form)."""
    if orjson is not None:
        try:
            return orjson.dumps(value, option=_SORT).decode()
        except TypeError:   # orjson.JSONEncodeError: a value only the standard library writes
            pass
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def dumps_bytes(value: Any) -> bytes:
    """`value` as compact JSON in UTF-8 bytes, keys in their order (a queued message body)."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:
            pass
    return json.dumps(value, separators=(",", ":")).encode()


def dumps_text(value: Any) -> str:
    """`value` as compact JSON text, keys in their order (JSON columns: the engines' serializer)."""
    if orjson is not None:
        try:
            return orjson.dumps(value).decode()
        except TypeError:
            pass
    return json.dumps(value, separators=(",", ":"))
