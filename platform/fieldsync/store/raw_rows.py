"""Pull pages' rows read as the driver gives them and turned into wire rows without detours:
SQLite's text of a datetime rewritten to the wire form instead of parsed and formatted again,
a scaled decimal formatted from the stored number, and a row's dict built by one compiled dict
display per shape (`RecordStore.tuple_converter` uses them; snapshot pages read with
`raw_time_columns`)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, Callable, Sequence

import sqlalchemy as sa

__all__ = ["dict_builder", "raw_decimal_step", "raw_time_columns", "raw_time_step"]


def raw_time_columns(table: sa.Table) -> list[sa.ColumnElement]:
    """`table`'s columns, its date-time and scaled decimal ones read as the driver gives them.
    Date-times: on SQLite the text SQLAlchemy stored, which `tuple_converter(raw_times=True)`
    rewrites to the wire form without parsing it into a datetime and formatting that again
    (PostgreSQL still gives datetimes). Decimals with a scale: on SQLite the stored number,
    which it formats to the scale at once instead of through a Decimal (PostgreSQL still gives
    Decimals)."""
    out = []
    for c in table.columns:
        if isinstance(c.type, sa.DateTime):
            c = sa.type_coerce(c, sa.String).label(c.name)
        elif isinstance(c.type, sa.Numeric) and c.type.asdecimal and c.type.scale is not None:
            c = sa.type_coerce(c, sa.types.NullType()).label(c.name)
        out.append(c)
    return out


def dict_builder(plan: Sequence[tuple[str, int, Callable[[Any], Any] | None]]) -> Callable[[tuple], dict[str, Any]]:
    """A function of a result row giving `{name: step(row[i])}` for each `(name, i, step)` of
    `plan` (a None value, or a None step, passes as it is), written as one dict display and
    compiled once per shape: a pull page builds a thousand of these dicts, and the display runs
    in about half the time of a loop assigning each key. Names enter the source only through
    `repr`, steps only through the namespace."""
    namespace: dict[str, Any] = {}
    items = []
    for k, (name, i, step) in enumerate(plan):
        if step is None:
            items.append(f"{name!r}: row[{int(i)}]")
        else:
            namespace[f"s{k}"] = step
            items.append(f"{name!r}: None if (v{k} := row[{int(i)}]) is None else s{k}(v{k})")
    source = "def build(row):\n    return {" + ", ".join(items) + "}\n"
    exec(compile(source, "<fieldsync.store.raw_rows row builder>", "exec"), namespace)
    return namespace["build"]


def raw_decimal_step(step: Callable[[Any], Any], scale: int) -> Callable[[Any], Any]:
    """`step` (the wire form of a stored decimal of `scale` digits) for a value that may be the
    number SQLite stored: SQLAlchemy would make it `Decimal("%.<scale>f" % value)`, which `step`
    quantizes to the same scale and formats back to that same text."""
    text = f"%.{scale}f"

    def step_raw(value: Any) -> Any:
        kind = type(value)
        if kind is float or kind is int:
            return text % value
        if isinstance(value, Decimal):
            return step(value)
        return step(Decimal(text % value))
    return step_raw


def raw_time_step(stamp: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`stamp` (the wire form of a stored datetime) for a value that may be SQLite's text of a
    naive UTC datetime, "YYYY-MM-DD HH:MM:SS.ffffff" as SQLAlchemy writes it: that text becomes
    "YYYY-MM-DDTHH:MM:SS.ffffffZ", exactly what `stamp` makes of the parsed datetime; any other
    text is parsed first."""
    def step(value: Any) -> Any:
        if type(value) is str:
            if len(value) == 26 and value[10] == " " and value[19] == "." and "1" <= value[0] <= "9":
                return value[:10] + "T" + value[11:] + "Z"
            return stamp(dt.datetime.fromisoformat(value))
        return stamp(value)
    return step
