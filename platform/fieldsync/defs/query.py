"""The query rules of list requests (pure): which fields filter with which operators, which sort,
and how a query-string value becomes a filter. The OpenAPI document, the API and the record store
all read them here, so they agree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fieldsync.defs.model import Entity, Field
from fieldsync.untrusted import INT64_MAX, parse_int
from fieldsync.errors import BadQuery

# Operators a list filter may carry as a suffix: `?quantity__gte=3`. No suffix means equality.
# gt, gte, lt and lte compare by order: only on the orderable types (_RANGE_TYPES), never encrypted.
FILTER_OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in")
# Query parameters that control a list; a field with one of these names filters for
# equality as `name__eq` (always accepted) instead of the bare name.
CONTROL_PARAMETERS = ("sort", "limit", "cursor", "total", "expand")
# Field types that compare by value in SQL the same way they do on the wire.
_EQUALITY_TYPES = ("string", "text", "integer", "decimal", "boolean", "date", "datetime",
                   "uuid", "enum", "ref", "media")
_RANGE_TYPES = ("string", "integer", "decimal", "date", "datetime", "uuid", "ref", "enum")
# System columns usable in filters and sort, with the field type they behave as.
SYSTEM_QUERY_COLUMNS = {
    "id": Field(name="id", type="uuid"),
    "version": Field(name="version", type="integer"),
    "created_at": Field(name="created_at", type="datetime"),
    "updated_at": Field(name="updated_at", type="datetime"),
}


def query_fields(entity: Entity) -> dict[str, Field]:
    """Columns a list request may filter and sort on, by name (system columns included).

    Encrypted fields take part only when they can be searched by equality: `deterministic`
    (equal values have equal ciphertexts) and `blind_index` (a keyed hash column); `encrypt`
    fields are excluded, as are json and geopoint (no total order). The API further removes
    the columns a role may not see.
    """
    out = dict(SYSTEM_QUERY_COLUMNS)
    for f in entity.fields:
        if f.type in _EQUALITY_TYPES and f.encryption in ("plain", "deterministic", "blind_index"):
            out[f.name] = f
    return out


def operators_for(field: Field) -> tuple[str, ...]:
    """The filter operators `field` supports (equality only on an encrypted field)."""
    if field.encrypted:
        return ("eq", "in")
    if field.type in _RANGE_TYPES:
        return FILTER_OPERATORS
    return ("eq", "ne", "in")


def sortable(field: Field) -> bool:
    if field.encrypted:
        return False   # ciphertexts have no useful order
    return field.type in _RANGE_TYPES or field.type in ("boolean", "media")


@dataclass(frozen=True, slots=True)
class Filter:
    """`column op value` in a list request; op is one of eq, ne, gt, gte, lt, lte, in (value a list)."""

    column: str
    op: str
    value: Any


def parse_query_value(field: Field, raw: str) -> Any:
    """A query-string value as the wire value of `field`'s type (BadQuery when it is not one)."""
    t = field.type
    if t == "integer":
        try:
            return parse_int(raw, low=-INT64_MAX, high=INT64_MAX)
        except ValueError as exc:
            raise BadQuery(f"{field.name}: {raw!r} {exc}") from None
    if t == "boolean":
        if raw in ("true", "false"):
            return raw == "true"
        raise BadQuery(f"{field.name}: {raw!r} is not true or false")
    return raw


def filter_from_query(field: Field, op: str, raw: str) -> Filter:
    """A Filter from a query parameter's raw string (`__in` values are comma-separated)."""
    if op == "in":
        return Filter(field.name, op, [parse_query_value(field, part) for part in raw.split(",")])
    return Filter(field.name, op, parse_query_value(field, raw))
