"""JSON Schema (draft 2020-12) for one entity's wire form (pure: no Flask, no database).

Three modes, matching what the REST API and the sync protocol exchange:

- ``read``: what the server returns. System columns (id, version, created_at, updated_at,
  deleted) are always present; fields may be absent (a role's hidden columns) and null (an
  optional value, or a column added after the row was written).
- ``create``: a new record's body. Required fields without a default are required; the owner
  field is filled by the server from the token and may not be sent.
- ``update``: a partial change (PATCH): nothing is required, and required fields may not be null.

Decimals travel as strings with at most ``scale`` places (numbers are accepted on input),
datetimes as RFC 3339 with a zone, geopoints as ``{lat, lon}``. Every schema closes its object
with ``additionalProperties: false`` so a typo in a field name is a validation error.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fieldsync.defs.model import Entity, Field, Model
from fieldsync.defs.values import DEFAULT_STRING_MAX, MEDIA_MAX, MEDIA_PATTERN, decimal_pattern

DIALECT = "https://json-schema.org/draft/2020-12/schema"
MODES = ("read", "create", "update")
INT64_MAX = 2**63 - 1


def _number(value: Any) -> int | float:
    """A JSON number for a bound (ints stay exact; decimals become floats only when fractional)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def field_schema(field: Field, mode: str) -> dict[str, Any]:
    """The schema of one field's value (without null; `entity_schema` adds it where allowed)."""
    t = field.type
    schema: dict[str, Any]
    if t in ("string", "text"):
        schema = {"type": "string"}
        limit = field.max_length if field.max_length is not None else (
            DEFAULT_STRING_MAX if t == "string" else None)
        if limit is not None:
            schema["maxLength"] = limit
        if field.min_length is not None:
            schema["minLength"] = field.min_length
        if field.pattern is not None:
            # the server matches the whole value (re.fullmatch); JSON Schema patterns search
            schema["pattern"] = f"^(?:{field.pattern})$"
    elif t == "integer":
        schema = {"type": "integer",
                  "minimum": _number(field.minimum) if field.minimum is not None else -INT64_MAX,
                  "maximum": _number(field.maximum) if field.maximum is not None else INT64_MAX}
    elif t == "decimal":
        text = {"type": "string", "pattern": decimal_pattern(field)}
        if mode == "read":
            schema = text
        else:
            number: dict[str, Any] = {"type": "number"}
            if field.minimum is not None:
                number["minimum"] = _number(field.minimum)
            if field.maximum is not None:
                number["maximum"] = _number(field.maximum)
            schema = {"anyOf": [text, number]}
    elif t == "boolean":
        schema = {"type": "boolean"}
    elif t == "date":
        schema = {"type": "string", "format": "date"}
    elif t == "datetime":
        schema = {"type": "string", "format": "date-time"}
    elif t in ("uuid", "ref"):
        schema = {"type": "string", "format": "uuid"}
    elif t == "enum":
        schema = {"type": "string", "enum": list(field.values)}
    elif t == "json":
        schema = {}
    elif t == "media":
        schema = {"type": "string", "format": "uri-reference", "pattern": MEDIA_PATTERN, "minLength": 1,
                  "maxLength": MEDIA_MAX}
    elif t == "geopoint":
        schema = {
            "type": "object",
            "properties": {
                "lat": {"type": "number", "minimum": -90, "maximum": 90},
                "lon": {"type": "number", "minimum": -180, "maximum": 180},
            },
            "required": ["lat", "lon"],
            "additionalProperties": False,
        }
    else:  # unreachable for a validated model
        raise ValueError(f"unknown field type {t}")
    if field.label:
        schema["title"] = field.label
    if field.description:
        schema["description"] = field.description
    if field.has_default and mode == "create" and field.default is not None:
        schema["default"] = field.default
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` or null. Types get "null" added; combinators and `{}` are wrapped."""
    if not schema:
        return schema  # json: already anything, null included
    if "type" in schema and "anyOf" not in schema:
        out = dict(schema)
        out["type"] = [schema["type"], "null"]
        if "enum" in out:
            out["enum"] = list(out["enum"]) + [None]
        return out
    if "anyOf" in schema:
        out = dict(schema)
        out["anyOf"] = list(schema["anyOf"]) + [{"type": "null"}]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


def system_properties() -> dict[str, dict[str, Any]]:
    """The columns the platform adds to every record, as they appear in read mode."""
    return {
        "id": {"type": "string", "format": "uuid", "description": "Record id (time-ordered UUID)."},
        "version": {"type": "integer", "minimum": 1, "description": "Incremented by every write; the ETag."},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "deleted": {"type": "boolean", "description": "True for a tombstone."},
    }


def writable_fields(entity: Entity) -> tuple[Field, ...]:
    """Fields a client may send: all but the owner, which the server fills from the token."""
    return tuple(f for f in entity.fields if f.name != entity.owner)


def entity_schema(entity: Entity, mode: str, *, model: Model | None = None) -> dict[str, Any]:
    """JSON Schema 2020-12 for `entity` in `mode` ("read", "create" or "update").

    With `model`, a parent's schema also describes its child collections: inline children on
    create (each without its parent field, which the server fills), and the `?expand=` form on
    read. Without it (the default) the schema is the entity's own wire form only.
    """
    schema = {"$schema": DIALECT}
    schema.update(object_schema(entity, mode))
    if model is not None and mode in ("create", "read"):
        for child_name in entity.children:
            child = model.entity(child_name)
            omit = (child.parent_field,) if mode == "create" else ()
            schema["properties"][child.collection] = collection_schema(
                child, mode, object_schema(child, mode, omit=omit))
    return schema


def collection_schema(child: Entity, mode: str, items: dict[str, Any]) -> dict[str, Any]:
    """A parent's child collection: created inline (create) or expanded (read)."""
    what = (f"{child.label or child.name} records created in the same transaction" if mode == "create"
            else f"Present with ?expand={child.collection}")
    return {"type": "array", "description": what + ".", "items": items}


def object_schema(entity: Entity, mode: str, *, omit: tuple[str | None, ...] = ()) -> dict[str, Any]:
    """The schema of `entity` in `mode` without `$schema`, for embedding (OpenAPI components).

    `omit` drops fields: a nested child's parent field, filled from the URL or the parent.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    properties: dict[str, Any] = {}
    required: list[str] = []
    if mode == "read":
        properties.update(system_properties())
        required.extend(properties)
        fields = entity.fields
    else:
        fields = writable_fields(entity)
        if mode == "create":
            properties["id"] = {"type": "string", "format": "uuid",
                                "description": "Optional client-made id (time-ordered UUID)."}
    for f in fields:
        if f.name in omit:
            continue
        schema = field_schema(f, mode)
        if mode == "read" or not f.required:
            schema = _nullable(schema)
        properties[f.name] = schema
        if mode == "create" and f.required and not f.has_default:
            required.append(f.name)
    schema: dict[str, Any] = {
        "title": f"{entity.label or entity.name} ({mode})",
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if entity.description:
        schema["description"] = entity.description
    if required:
        schema["required"] = required
    return schema
