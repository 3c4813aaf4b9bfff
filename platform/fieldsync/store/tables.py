"""SQLAlchemy Core tables built from the model (no connection is opened here).

One table per entity, named after it, holding the system columns (id, version, created_at,
updated_at, deleted) and one column per field. Platform tables are prefixed `fs_`, a prefix
entity names may not use. The same metadata produces the server DDL in `generated/`, the
live tables, and the target that `fieldsync migrate` compares a database against.

Decisions (docs/decisions.md): no database-level foreign keys (refs are checked by the
application, so soft-deleted rows and device batches arriving in any order never trip a
constraint); enums are strings; unique fields get a unique index over live rows only;
encrypted fields are stored as text whatever their type, a blind-indexed field has a second
column `fs_bidx_<field>` with its keyed hash (docs/encryption.md).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Any

from sqlalchemy import (
    JSON, BigInteger, Boolean, Column, Date, DateTime, Index, Integer, MetaData, Numeric,
    String, Table, Text, false, text,
)

from fieldsync.defs.model import Entity, Field, Model
from fieldsync.defs.values import DEFAULT_STRING_MAX, MEDIA_MAX

PLATFORM_PREFIX = "fs_"
ID_LENGTH = 36
BIDX_PREFIX = "fs_bidx_"


def bidx_column(field: Field | str) -> str:
    """The column holding the blind index of `field`."""
    return BIDX_PREFIX + (field if isinstance(field, str) else field.name)


def normalise_for_index(value: Any) -> bytes:
    """What a blind index is computed over: strings NFKC-normalised, case-folded and with runs
    of white space collapsed (a search for "jane  DOE" finds "Jane Doe"); other values as JSON."""
    if isinstance(value, str):
        return " ".join(unicodedata.normalize("NFKC", value).casefold().split()).encode()
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def column_type(field: Field):
    """The SQLAlchemy type a field is stored as on the server."""
    if field.encrypted:
        return Text()
    t = field.type
    if t == "string":
        return String(field.max_length or DEFAULT_STRING_MAX)
    if t == "text":
        return Text()
    if t == "integer":
        return BigInteger()
    if t == "decimal":
        return Numeric(field.precision, field.scale, asdecimal=True)
    if t == "boolean":
        return Boolean()
    if t == "date":
        return Date()
    if t == "datetime":
        return DateTime(timezone=True)
    if t in ("uuid", "ref"):
        return String(ID_LENGTH)
    if t == "enum":
        return String(max(len(v) for v in field.values))
    if t in ("json", "geopoint"):
        return JSON()
    if t == "media":
        return String(MEDIA_MAX)
    raise ValueError(f"unknown field type {t}")


def system_columns() -> list[Column]:
    return [
        Column("id", String(ID_LENGTH), primary_key=True),
        Column("version", Integer, nullable=False, server_default=text("1")),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        Column("deleted", Boolean, nullable=False, server_default=false()),
    ]


def field_column(field: Field) -> Column:
    # Required fields are enforced by validation, not NOT NULL: a column added to a table
    # that already has rows must accept them (invariant 9: additive changes never fail).
    return Column(field.name, column_type(field), nullable=True, comment=field.label or None)


def _index_name(prefix: str, table: str, column: str) -> str:
    name = f"{prefix}_{table}_{column}"
    if len(name) <= 63:
        return name
    return name[:54] + "_" + hashlib.sha1(name.encode()).hexdigest()[:8]


def blind_index_columns(entity: Entity) -> list[Column]:
    """A `fs_bidx_<field>` column per blind-indexed field: the keyed hash equality searches
    compare (crypto/fields.py), 128 bits as 32 hex digits."""
    return [Column(bidx_column(f), String(32), nullable=True) for f in entity.fields if f.encryption == "blind_index"]


def entity_table(entity: Entity, metadata: MetaData) -> Table:
    table = Table(entity.name, metadata, *system_columns(), *(field_column(f) for f in entity.fields),
                  *blind_index_columns(entity), comment=entity.label or None)
    live = table.c.deleted == false()
    for f in entity.fields:
        if f.encryption == "blind_index":
            Index(_index_name("ix", entity.name, bidx_column(f)), table.c[bidx_column(f)])
        if f.unique:
            Index(_index_name("uq", entity.name, f.name), table.c[f.name], unique=True,
                  sqlite_where=live, postgresql_where=live)
        elif f.type == "ref" or f.name == entity.owner or f.name == entity.subject:
            Index(_index_name("ix", entity.name, f.name), table.c[f.name])
    Index(_index_name("ix", entity.name, "updated_at"), table.c.updated_at, table.c.id)
    return table


def build_metadata(model: Model) -> MetaData:
    """Entity tables for `model` (platform tables are added by the modules that own them)."""
    metadata = MetaData()
    for entity in model.entities:
        entity_table(entity, metadata)
    return metadata
