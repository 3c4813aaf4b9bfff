"""JSON on the pull path: change-log rows read back, pull pages written and read.

orjson parses and writes several times faster than the standard library, but reads some texts
differently: an integer of more than 64 bits becomes a float, and it refuses lone surrogates,
NaN and non-UTF-8 input. `loads` therefore leaves to `json.loads` every text that has a run of
19 digits (a possible integer past 64 bits: every integer below 10**18 fits) and every text
orjson refuses, so it returns exactly what `json.loads` returns. `dumps_bytes` falls
back the same way for values orjson will not write (integers past 64 bits, lone surrogates,
keys that are not strings); it writes NaN as null where `json.dumps` writes the non-JSON NaN
(no value the server validates is NaN).

The push path writes with it too: the change log's `row`/`prev` texts (`dumps_sorted`), queued
push batches (`dumps_bytes`) and JSON columns (`dumps_text`, the engines' serializer). The mutation
digest calls orjson itself, only for values it writes exactly as `json.dumps` does: its bytes
must stay `json.dumps`'s (sync/apply.py).

Not for untrusted request bodies: those go through `fieldsync.untrusted.load_json` (depth limit).
"""

from __future__ import annotations

import json
from typing import Any

from fieldsync.untrusted import NOT_EXACT, exact_orjson

try:
    import orjson
except ImportError:  # pragma: no cover - a dependency; the standard library is the fallback
    orjson = None

__all__ = ["dumps_bytes", "dumps_sorted", "dumps_text", "loads"]


def loads(data: str | bytes | bytearray) -> Any:
    """The value of JSON `data`, exactly as `json.loads(data)` gives it."""
    if orjson is not None:
        value = exact_orjson(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
        if value is not NOT_EXACT:
            return value
    return json.loads(data)


def dumps_bytes(value: Any) -> bytes:
    """`value` as compact JSON in UTF-8, keys in their order (non-ASCII characters as UTF-8
    rather than escaped: the same value for every JSON reader)."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:   # orjson.JSONEncodeError: a value only the standard library writes
            pass
    return json.dumps(value, separators=(",", ":")).encode()


def dumps_sorted(value: Any) -> str:
    """`value` as compact JSON text with object keys sorted (the change log's row form)."""
    if orjson is not None:
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        except TypeError:
            pass
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def dumps_text(value: Any) -> str:
    """`value` as compact JSON text, keys in their order (JSON columns)."""
    if orjson is not None:
        try:
            return orjson.dumps(value).decode()
        except TypeError:
            pass
    return json.dumps(value, separators=(",", ":"))
