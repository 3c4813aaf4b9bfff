"""A new record's stored row and wire row built in one compiled pass.

A push of 500 inserts used to walk each record's fields three times: converting the wire values
to stored values (`RecordStore.values_to_db`), filling in the fields left out, and building the
wire row the change log and the scope checks read. `compile_insert` writes, once per entity of a
model version (the RecordStore caches it), the Python source of one function doing all three for
that entity's fields, with each field's conversion chosen when the function is written rather
than looked up per value, and compiles it.

The function produces exactly what the three passes produced: the same stored values (the
same conversion functions, `codec.db_step`, behind inlined checks of the values they return
unchanged), every field and blind-index column present (None when the record has no value), and
encrypted fields encoded for the record under its subject's key (`RecordStore._row_encoder`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Mapping

import sqlalchemy as sa

from fieldsync.defs.model import Entity
from fieldsync.store.tables import bidx_column
from fieldsync.untrusted import INT32_MAX, INT64_MAX

__all__ = ["InsertBuilder", "compile_insert"]

# (validated wire values with the server-set ones, record id, write time, its wire text, subject)
# -> (stored row, wire row)
InsertBuilder = Callable[[Mapping[str, Any], str, dt.datetime, str, Any], tuple[dict[str, Any], dict[str, Any]]]


def _stored_expr(i: int, column: sa.Column, field_type: str) -> str:
    """The source of field `i`'s stored value from its wire value `v{i}` (not None), calling
    `c{i}` (the field's `db_step`) for any value the inlined check does not pass as it is."""
    v, c = f"v{i}", f"c{i}"
    if field_type in ("json", "geopoint"):
        return v                                            # db_step: the value as it is
    if isinstance(column.type, (sa.String, sa.Text)):
        return f"{v} if type({v}) is str else {c}({v})"     # db_step: str as it is
    if isinstance(column.type, sa.Boolean):
        return f"{v} if type({v}) is bool else {c}({v})"
    if isinstance(column.type, sa.Integer) and not isinstance(column.type, sa.Numeric):
        bound = INT64_MAX if isinstance(column.type, sa.BigInteger) else INT32_MAX
        return f"{v} if type({v}) is int and {-bound} <= {v} <= {bound} else {c}({v})"
    if isinstance(column.type, sa.DateTime):
        # a validated date-time is wire text ending in Z, which fromisoformat reads as
        # parse_datetime (db_step) does: the same UTC datetime
        return f"{c}({v}) if type({v}) is not str or {v}[-1:] != 'Z' else _utc_time({v}, {c})"
    return f"{c}({v})"


def _utc_time(text: str, step: Callable[[Any], Any]) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return step(text)


def compile_insert(entity: Entity, table: sa.Table, db_steps: Mapping[str, Callable[[Any], Any]],
                   encode_secret: Callable[[dict, Mapping[str, Any], str | None, Any], None] | None) -> InsertBuilder:
    """The function building a new record of `entity` (version 1, not deleted) from its
    validated wire values: `db_steps` are the plain fields' conversions (`db_converters`),
    `encode_secret` encodes the encrypted fields present into a stored row (`_row_encoder`;
    None for an entity without encrypted fields)."""
    names = [f.name for f in entity.fields]
    env: dict[str, Any] = {"encode_secret": encode_secret, "_utc_time": _utc_time}
    lines = ["def build(clean, record_id, stamp, stamp_text, subject):", "    get = clean.get"]
    stored, wire = [], []
    for i, f in enumerate(entity.fields):
        lines.append(f"    v{i} = get({f.name!r})")
        wire.append(f"{f.name!r}: v{i}")
        if f.encrypted:
            stored.append(f"{f.name!r}: None")   # encode_secret fills in the values present
            if f.encryption == "blind_index":
                stored.append(f"{bidx_column(f)!r}: None")
            continue
        env[f"c{i}"] = db_steps[f.name]
        stored.append(f"{f.name!r}: None if v{i} is None else ({_stored_expr(i, table.c[f.name], f.type)})")
    system = "'id': record_id, 'version': 1, 'created_at': {0}, 'updated_at': {0}, 'deleted': False"
    lines.append("    db = {" + ", ".join([system.format("stamp")] + stored) + "}")
    lines.append("    wire = {" + ", ".join([system.format("stamp_text")] + wire) + "}")
    if encode_secret is not None:
        lines.append("    encode_secret(db, clean, record_id, subject)")
    lines.append("    return db, wire")
    source = "\n".join(lines) + "\n"
    code = compile(source, f"<fieldsync insert of {entity.name}: {', '.join(names)}>", "exec")
    exec(code, env)   # noqa: S102 - source written above from the model's field names (repr'd) and types
    return env["build"]
