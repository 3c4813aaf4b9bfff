"""The device's SQLite schema, derived from the model (pure: builds data, renders nothing).

Every entity becomes one table holding `id`, the entity's fields and the sync bookkeeping
columns, all prefixed with `_` (field names must start with a letter, so they never collide):

    _version     the server version this row was last seen at (0: never seen by the server)
    _created_at  server timestamps, ISO 8601 UTC, as pulled
    _updated_at
    _deleted     1 when the row is a local tombstone waiting for its delete to be received
    _dirty       1 while an outbox entry of the row has no result; a pull never overwrites a
                 dirty row's fields (the last entry's result settles it, docs/protocol.md §10.4)

Types are chosen for exact round trips, not for SQLite arithmetic: decimals are TEXT (REAL
would lose cents), json and geopoint are TEXT holding JSON, booleans are INTEGER 0/1, dates
and datetimes are TEXT in their ISO wire form. No field is NOT NULL and no CHECK constrains
a field: a role may not see every field, and additive changes (new fields, new enum values)
must migrate a device with a plain `ALTER TABLE ... ADD COLUMN`.

`device_schema(model)` returns the structure both `device/schema.sql` and
`device/schema.json` are rendered from, so the two never disagree.
"""

from __future__ import annotations

import textwrap
from typing import Any

from fieldsync.defs.model import Entity, Field, Model

SQLITE_TYPES = {
    "string": "TEXT", "text": "TEXT", "integer": "INTEGER", "decimal": "TEXT",
    "boolean": "INTEGER", "date": "TEXT", "datetime": "TEXT", "uuid": "TEXT", "enum": "TEXT",
    "json": "TEXT", "ref": "TEXT", "media": "TEXT", "geopoint": "TEXT",
}

# What a column holds on the device, for the SDK's conversions (`storage` in schema.json).
STORAGE = {
    "decimal": "decimal-string", "boolean": "integer-0-1", "date": "iso-date",
    "datetime": "iso-datetime", "json": "json-text", "geopoint": "json-text",
}

BOOKKEEPING_COLUMNS = (
    {"name": "_version", "sqlite_type": "INTEGER", "not_null": True, "default": "0",
     "doc": "server version last seen; 0 until a result or a pull brings the server's version"},
    {"name": "_created_at", "sqlite_type": "TEXT", "not_null": False, "default": None,
     "doc": "server created_at (ISO 8601 UTC) as last pulled"},
    {"name": "_updated_at", "sqlite_type": "TEXT", "not_null": False, "default": None,
     "doc": "server updated_at (ISO 8601 UTC) as last pulled"},
    {"name": "_deleted", "sqlite_type": "INTEGER", "not_null": True, "default": "0",
     "doc": "1: deleted locally, the delete is in the outbox"},
    {"name": "_dirty", "sqlite_type": "INTEGER", "not_null": True, "default": "0",
     "doc": "1: an outbox entry of the row has no result yet; pulls keep the local values"},
)

OUTBOX_OPS = ("insert", "update", "delete")
# docs/protocol.md §10: no status for a result; an applied entry is deleted, a rejected one moved
# to _quarantine, when its result is stored (§5.4)
OUTBOX_STATUSES = (
    ("pending", "written locally, not sent yet"),
    ("sent", "sent in a push that has not been answered: resent with the same seq"),
    ("received", "the server made it durable; waiting for its result"),
)
# The generated comment on _outbox says this, word for word as docs/protocol.md §10 does
# (tests/codegen/test_device_schema_vs_spec.py compares them).
OUTBOX_DELETION = ("An outbox entry is deleted only once its result is stored: an `applied` entry is deleted and "
                   "a `rejected` one moved to `_quarantine`, in the transaction that stores the result (§5.4); "
                   "`received` alone never deletes it.")

# Keys of `_sync_state` (docs/protocol.md §10), each a JSON value: (key, required by the
# protocol, what it holds). The SDK owns their values; other clients keep the required ones.
SYNC_STATE_KEYS = (
    ("install_id", True, "the random id of this installation, created before the first registration"),
    ("device_id", True, "the registered device id; never reset while _outbox holds entries (invariant 2)"),
    ("cursor", True, "the position up to which the server's changes are applied"),
    ("resume", True, "the resume token of the last page applied, null outside a phase"),
    ("scope_hash", True, "the scope hash the stored rows conform to, null before the first snapshot"),
    ("refetch", True, "the refetch list: [{entity, id}] the next pull asks for whole"),
    ("write_checkpoint", True, "the highest write checkpoint received"),
    ("user_id", False, "the user the device is registered to"),
    ("head", False, "the head of the last page applied"),
    ("last_sync_at", False, "when the last complete sync cycle finished (ISO 8601 UTC)"),
    ("capabilities", False, "the server's capabilities from the registration"),
    ("device_token", False, "the device token"),
    ("device_token_for", False, "a digest of the user's token the device token was registered with"),
    ("bundle", False, "the snapshot bundle being applied: the pull's bundle, the next chunk, the cursor before it"),
)


def quote(name: str) -> str:
    """A SQLite identifier, always quoted: entity names such as `order` are keywords."""
    return '"' + name.replace('"', '""') + '"'


def _index_name(table: str, column: str) -> str:
    return f"ix_{table}_{column}"


def _field_column(f: Field) -> dict[str, Any]:
    column: dict[str, Any] = {
        "name": f.name, "sqlite_type": SQLITE_TYPES[f.type], "type": f.type,
        "storage": STORAGE.get(f.type, "text" if SQLITE_TYPES[f.type] == "TEXT" else "integer"),
        "required": f.required, "label": f.label, "primary_key": False,
        # The whole device store is encrypted (SQLCipher); the policy travels with the
        # column so the SDK can also keep PHI out of logs and crash reports.
        "encryption": f.encryption, "phi": f.phi,
    }
    if f.description:
        column["description"] = f.description
    if f.type == "decimal":
        column["precision"], column["scale"] = f.precision, f.scale
    if f.type == "enum":
        column["values"] = list(f.values)
    if f.type == "ref":
        column["ref"] = f.ref
    if f.has_default:
        column["default"] = f.default
    # the device checks what it can before a write is queued, so fewer writes come back rejected
    for key in ("min_length", "max_length", "pattern"):
        if getattr(f, key) is not None:
            column[key] = getattr(f, key)
    for key in ("minimum", "maximum"):
        value = getattr(f, key)
        if value is not None:
            column[key] = str(value) if f.type == "decimal" else value
    if f.renamed_from:
        column["renamed_from"] = list(f.renamed_from)
    return column


def window_field(entity: Entity) -> str | None:
    """The field a windowed entity's window is measured on: the declared one, else its first
    date or datetime field (the server's scope uses the same rule)."""
    if entity.parent is not None or entity.sync.window_days is None:
        return None
    if entity.sync.window_field:
        return entity.sync.window_field
    return next((f.name for f in entity.fields if f.type in ("datetime", "date")), None)


def _entity_table(entity: Entity) -> dict[str, Any]:
    columns = [{"name": "id", "sqlite_type": "TEXT", "type": "uuid", "storage": "text",
                "required": True, "label": "Id", "primary_key": True, "encryption": "plain", "phi": False}]
    columns += [_field_column(f) for f in entity.fields]
    indexed = [f.name for f in entity.fields if f.type == "ref" or f.name == entity.owner]
    floor_field = window_field(entity)
    if floor_field is not None and floor_field not in indexed:
        indexed.append(floor_field)  # the window purge after each pull reads rows below the floor
    indexes = sorted(({"name": _index_name(entity.name, c), "columns": [c]} for c in indexed),
                     key=lambda ix: ix["name"])
    return {
        "name": entity.name,
        "kind": entity.kind,
        "label": entity.label,
        "parent": entity.parent,
        "parent_field": entity.parent_field,
        "owner": entity.owner,
        "sync": {"direction": entity.sync.direction, "conflict": entity.sync.conflict,
                 "priority": entity.sync.priority,
                 # the device deletes clean rows below the floor the pull reports for the entity
                 "window_days": entity.sync.window_days if entity.parent is None else None,
                 "window_field": window_field(entity)},
        "columns": columns,
        "bookkeeping": [dict(c) for c in BOOKKEEPING_COLUMNS],
        "indexes": indexes,
    }


def device_schema(model: Model) -> dict[str, Any]:
    """The device schema as plain data: entity tables in model order, then platform tables."""
    return {
        "app": model.app,
        "schema_version": model.schema_version,
        "fingerprint": model.fingerprint(),
        "entities": [_entity_table(e) for e in model.entities],
        "outbox_ops": list(OUTBOX_OPS),
        "outbox_statuses": [{"status": k, "doc": d} for k, d in OUTBOX_STATUSES],
        "outbox_deletion": OUTBOX_DELETION,
        "outbox_deletion_lines": textwrap.wrap(OUTBOX_DELETION, 92, break_on_hyphens=False),
        "sync_state_keys": [{"key": k, "required": r, "doc": d} for k, r, d in SYNC_STATE_KEYS],
    }


def device_schema_json(schema: dict[str, Any], header: str) -> dict[str, Any]:
    """The machine-readable description the SDK migrates a device store with.

    A device whose `_meta.fingerprint` differs compares its tables' columns with these and
    adds what is missing (`ALTER TABLE ... ADD COLUMN <name> <sqlite_type>`); every column is
    nullable or has a default, so that is always possible.
    """
    return {
        "$comment": header,
        "app": schema["app"],
        "schema_version": schema["schema_version"],
        "fingerprint": schema["fingerprint"],
        "entities": [
            {
                "name": t["name"], "kind": t["kind"], "label": t["label"], "table": t["name"],
                "parent": t["parent"], "parent_field": t["parent_field"], "owner": t["owner"],
                "sync": t["sync"],
                "columns": t["columns"],
                "bookkeeping_columns": [
                    {k: c[k] for k in ("name", "sqlite_type", "not_null", "default")}
                    for c in t["bookkeeping"]
                ],
                "indexes": t["indexes"],
            }
            for t in schema["entities"]
        ],
        "platform_tables": {
            "_outbox": {"ops": schema["outbox_ops"], "statuses": [s["status"] for s in schema["outbox_statuses"]]},
            "_quarantine": {},
            "_sync_state": {"keys": [k["key"] for k in schema["sync_state_keys"]],
                            "required": [k["key"] for k in schema["sync_state_keys"] if k["required"]]},
            "_meta": {"keys": ["app", "schema_version", "fingerprint"]},
        },
    }


def device_schema_format() -> dict[str, Any]:
    """The JSON Schema (2020-12) of the device schema document (`device/schema.json`, answered by
    `GET /api/v1/sync/schema`; docs/protocol.md §7.3), published as `device/schema.schema.json`
    so clients in any language can check what they migrate from."""
    from fieldsync.defs.model import CONFLICT_POLICIES, DIRECTIONS, ENCRYPTION_MODES, FIELD_TYPES, KINDS

    nullable_string = {"type": ["string", "null"]}
    strings = {"type": "array", "items": {"type": "string"}}
    column_props: dict[str, Any] = {
        "name": {"type": "string", "description": "the column's name: `id` or the field's name"},
        "sqlite_type": {"enum": sorted(set(SQLITE_TYPES.values())), "description": "the SQLite column type"},
        "type": {"enum": list(FIELD_TYPES),
                 "description": "the field type of the definition language (`uuid` for `id`)"},
        "storage": {"enum": sorted(set(STORAGE.values()) | {"text", "integer"}),
                    "description": "how the column stores the wire value: `text` and `integer` as is, "
                                   "`decimal-string` the decimal's string, `integer-0-1` a boolean, "
                                   "`iso-date`/`iso-datetime` the ISO text, `json-text` JSON text"},
        "required": {"type": "boolean"},
        "label": {"type": "string"},
        "primary_key": {"type": "boolean", "description": "true for `id` only"},
        "encryption": {"enum": list(ENCRYPTION_MODES), "description": "the field's server-side policy"},
        "phi": {"type": "boolean", "description": "protected health information: keep out of logs"},
        "description": {"type": "string"},
        "precision": {"type": "integer", "minimum": 1},
        "scale": {"type": "integer", "minimum": 0},
        "values": strings | {"description": "an enum's values"},
        "ref": {"type": "string", "description": "the entity a ref field points to"},
        "default": {"description": "the default a local insert fills in, in wire form"},
        "min_length": {"type": "integer", "minimum": 0},
        "max_length": {"type": "integer", "minimum": 0},
        "pattern": {"type": "string", "description": "an ECMA-262 regular expression"},
        "minimum": {"type": ["number", "string"], "description": "a number; a decimal's as a string"},
        "maximum": {"type": ["number", "string"], "description": "a number; a decimal's as a string"},
        "renamed_from": strings | {"description": "earlier names of the field (invariant 9)"},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://fieldsync.dev/schemas/device-schema.json",
        "title": "fieldsync device schema",
        "description": "What a device store holds for one schema version of the model: a table per entity "
                       "and the platform tables (docs/protocol.md §7.3, §10).",
        "type": "object",
        "additionalProperties": False,
        "required": ["$comment", "app", "schema_version", "fingerprint", "entities", "platform_tables"],
        "properties": {
            "$comment": {"type": "string", "description": "the generated-file notice"},
            "app": {"type": "string"},
            "schema_version": {"type": "integer", "minimum": 1},
            "fingerprint": {"type": "string", "pattern": "^[0-9a-f]{16}$",
                            "description": "a digest of the storage shape; a store whose `_meta.fingerprint` "
                                           "differs is migrated"},
            "entities": {"type": "array", "items": {"$ref": "#/$defs/entity"}},
            "platform_tables": {
                "type": "object", "additionalProperties": False,
                "required": ["_outbox", "_quarantine", "_sync_state", "_meta"],
                "properties": {
                    "_outbox": {"type": "object", "additionalProperties": False, "required": ["ops", "statuses"],
                                "properties": {"ops": {"type": "array", "items": {"enum": list(OUTBOX_OPS)}},
                                               "statuses": strings}},
                    "_quarantine": {"type": "object", "maxProperties": 0},
                    "_sync_state": {"type": "object", "additionalProperties": False, "required": ["keys", "required"],
                                    "properties": {"keys": strings, "required": strings}},
                    "_meta": {"type": "object", "additionalProperties": False, "required": ["keys"],
                              "properties": {"keys": strings}},
                },
            },
        },
        "$defs": {
            "entity": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "kind", "label", "table", "parent", "parent_field", "owner", "sync", "columns",
                             "bookkeeping_columns", "indexes"],
                "properties": {
                    "name": {"type": "string"}, "kind": {"enum": list(KINDS)}, "label": {"type": "string"},
                    "table": {"type": "string", "description": "the SQLite table (always quoted)"},
                    "parent": nullable_string | {"description": "a child's parent entity"},
                    "parent_field": nullable_string | {"description": "a child's ref field to its parent"},
                    "owner": nullable_string | {"description": "the field the server fills with the user"},
                    "sync": {"$ref": "#/$defs/sync"},
                    "columns": {"type": "array", "items": {"$ref": "#/$defs/column"}, "minItems": 1},
                    "bookkeeping_columns": {"type": "array", "items": {"$ref": "#/$defs/bookkeeping_column"}},
                    "indexes": {"type": "array", "items": {"$ref": "#/$defs/index"}},
                },
            },
            "sync": {
                "type": "object", "additionalProperties": False,
                "required": ["direction", "conflict", "priority", "window_days", "window_field"],
                "properties": {
                    "direction": {"enum": list(DIRECTIONS)}, "conflict": {"enum": list(CONFLICT_POLICIES)},
                    "priority": {"type": "integer"},
                    "window_days": {"type": ["integer", "null"], "minimum": 1},
                    "window_field": nullable_string,
                },
            },
            "column": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "sqlite_type", "type", "storage", "required", "label", "primary_key",
                             "encryption", "phi"],
                "properties": column_props,
            },
            "bookkeeping_column": {
                "type": "object", "additionalProperties": False,
                "required": ["name", "sqlite_type", "not_null", "default"],
                "properties": {"name": {"type": "string", "pattern": "^_"},
                               "sqlite_type": {"enum": sorted(set(SQLITE_TYPES.values()))},
                               "not_null": {"type": "boolean"}, "default": nullable_string},
            },
            "index": {
                "type": "object", "additionalProperties": False, "required": ["name", "columns"],
                "properties": {"name": {"type": "string"}, "columns": strings | {"minItems": 1}},
            },
        },
    }
