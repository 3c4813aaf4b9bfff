"""Value conversion between a record's wire form and its stored row: the codec protocol for
encrypted fields (implemented by `fieldsync.crypto.fields`), and `to_db` / `to_wire` with the
per-field steps the record store compiles into row converters."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from decimal import Decimal
from typing import Any, Callable, Iterable, Protocol

import sqlalchemy as sa

from fieldsync.errors import KeyShredded
from fieldsync.defs.model import Entity, Field
from fieldsync.defs.values import format_datetime
from fieldsync.store.expr_sql import python_value
from fieldsync.store.tables import normalise_for_index


# -- the codec for encrypted fields -----------------------------------------------------------

class FieldCodec(Protocol):
    """Turns an encrypted field's wire value into the text stored in its column, and back
    (`fieldsync.crypto.fields.FieldCrypto` on a server; see docs/encryption.md)."""

    def encode(self, entity: Entity, field: Field, value: Any, record_id: str | None = None,
               subject: Any = None) -> str: ...

    def decode(self, entity: Entity, field: Field, stored: str, record_id: str | None = None) -> Any: ...

    def lookup_values(self, entity: Entity, field: Field, value: Any) -> list[str]: ...

    def blind_index(self, entity: Entity, field: Field, value: Any) -> str: ...

    def blind_indexes(self, entity: Entity, field: Field, value: Any) -> list[str]: ...

    def subject_ref(self, value: Any) -> str: ...

    def ensure_subjects(self, entity: Entity, values: Iterable[Any]) -> None: ...


class PlainJsonCodec:
    """A codec for unit tests of the store that are not about encryption: the wire value as JSON
    text, NOT encryption. The server never uses it (create_app builds a FieldCrypto)."""

    def encode(self, entity: Entity, field: Field, value: Any, record_id: str | None = None,
               subject: Any = None) -> str:
        return json.dumps(value)

    def decode(self, entity: Entity, field: Field, stored: str, record_id: str | None = None) -> Any:
        return json.loads(stored)

    def lookup_values(self, entity: Entity, field: Field, value: Any) -> list[str]:
        return [json.dumps(value)]

    def blind_index(self, entity: Entity, field: Field, value: Any) -> str:
        return hashlib.sha256(field.name.encode() + b"\x1f" + normalise_for_index(value)).hexdigest()[:32]

    def blind_indexes(self, entity: Entity, field: Field, value: Any) -> list[str]:
        return [self.blind_index(entity, field, value)]

    def subject_ref(self, value: Any) -> str:
        return "sr_" + hashlib.sha256(str(value).encode()).hexdigest()[:32]

    def ensure_subjects(self, entity: Entity, values: Iterable[Any]) -> None:
        return None


class StoredRow(dict):
    """A record in wire form that also carries the stored row it came from (`stored`), so the
    change log copies its ciphertexts instead of encrypting every value a second time. A plain
    copy (`dict(row)`) drops it, and the change log encrypts again: never wrong, only slower."""

    __slots__ = ("stored",)


# -- value conversion --------------------------------------------------------------------------

def to_db(column: sa.Column, field: Field | None, value: Any, entity: Entity, codec: FieldCodec,
          record_id: str | None = None, subject: Any = None) -> Any:
    """A wire value as the Python value stored in `column` (`record_id` and `subject` are what
    an encrypted field's ciphertext is bound to and keyed by)."""
    if value is None:
        return None
    if field is not None and field.encrypted:
        return codec.encode(entity, field, value, record_id, subject)
    if field is not None and field.type in ("json", "geopoint"):
        return value
    return python_value(column.type, value)


def to_wire(field: Field | None, value: Any, entity: Entity, codec: FieldCodec, record_id: str | None = None) -> Any:
    """A stored value in its wire form (`record_id`: the record an encrypted value belongs to)."""
    if value is None:
        return None
    if field is not None and field.encrypted:
        return decrypted(codec, entity, field, value, record_id)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:  # SQLite keeps no zone; everything is stored in UTC
            value = value.replace(tzinfo=dt.timezone.utc)
        return format_datetime(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (Decimal, float)) and field is not None and field.type == "decimal":
        scale = field.scale or 0
        return f"{Decimal(str(value)).quantize(Decimal(1).scaleb(-scale)):.{scale}f}"
    return value


def decrypted(codec: FieldCodec, entity: Entity, field: Field, value: Any, record_id: str | None) -> Any:
    """An encrypted field's wire value; None when its key was shredded (the value is gone)."""
    try:
        return codec.decode(entity, field, value, record_id)
    except KeyShredded:
        return None


def wire_step(field: Field | None, entity: Entity, codec: FieldCodec) -> Callable[[Any], Any]:
    """The conversion `to_wire` applies to non-null values of `field` (None: a system timestamp).
    Not for encrypted fields: their conversion needs the record id (`decrypted`)."""
    assert field is None or not field.encrypted
    if field is None or field.type == "datetime":
        def stamp(value: Any) -> Any:
            if isinstance(value, dt.datetime):
                if value.tzinfo is None and value.year >= 1000:  # SQLite: naive, in UTC
                    return value.isoformat(timespec="microseconds") + "Z"
                return format_datetime(value if value.tzinfo is not None
                                       else value.replace(tzinfo=dt.timezone.utc))
            return to_wire(field, value, entity, codec)
        return stamp
    if field.type == "decimal":
        scale = field.scale or 0
        quantum = Decimal(1).scaleb(-scale)
        spec = f".{scale}f"

        def decimal(value: Any) -> Any:
            if isinstance(value, Decimal):
                return format(value.quantize(quantum), spec)
            return to_wire(field, value, entity, codec)
        return decimal
    if field.type == "date":
        return lambda value: to_wire(field, value, entity, codec)
    return lambda value: value


def db_step(column: sa.Column, field: Field, entity: Entity, codec: FieldCodec) -> Callable[[Any], Any]:
    """The conversion `to_db` applies to non-null values of `field` stored in `column`.
    Not for encrypted fields: `RecordStore.values_to_db` encodes those with their record."""
    assert not field.encrypted
    if field.type in ("json", "geopoint"):
        return lambda value: value
    if isinstance(column.type, (sa.String, sa.Text)):
        def text(value: Any) -> Any:
            return value if isinstance(value, str) else python_value(column.type, value)
        return text
    return lambda value: python_value(column.type, value)
