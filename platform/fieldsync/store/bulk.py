"""Bulk inserts: one executemany per table, with SQLite's bind processing done once per plan."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa


_INSERT_PLANS: dict[tuple[int, tuple[str, ...]], tuple[sa.Table, str, list[tuple[str, Callable[[Any], Any] | None]]]] = {}


def _sqlite_datetime(fallback: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """SQLAlchemy's SQLite DATETIME bind processor (its default storage format: the wall time
    as `YYYY-MM-DD HH:MM:SS.ffffff`, zone dropped) done by `isoformat`, several times faster."""
    # the rows of a batch mostly share their stamps: the last one converted is kept, as one
    # tuple (plans are shared between threads, so value and text are swapped in together)
    last: list[tuple[Any, str]] = [(None, "")]

    def process(value: Any) -> Any:
        if type(value) is dt.datetime:
            seen = last[0]
            if seen[0] is value:
                return seen[1]
            text = value.replace(tzinfo=None).isoformat(" ", "microseconds")
            last[0] = (value, text)
            return text
        return fallback(value)
    return process


def _insert_plan(dialect: sa.Dialect, table: sa.Table, names: tuple[str, ...]):
    key = (id(table), names)
    plan = _INSERT_PLANS.get(key)
    if plan is not None and plan[0] is table:
        return plan[1], plan[2]
    statement = table.insert().compile(dialect=dialect, column_keys=list(names))
    steps = []
    for name in statement.positiontup:
        column = table.c[name]
        impl = column.type.dialect_impl(dialect)
        process = impl.bind_processor(dialect)
        if process is not None and isinstance(impl, sa.DateTime) and getattr(impl, "_storage_format", None) == (
                "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"):
            process = _sqlite_datetime(process)
        steps.append((name, process))
    if len(_INSERT_PLANS) > 1024:
        _INSERT_PLANS.clear()
    _INSERT_PLANS[key] = (table, str(statement), steps)
    return str(statement), steps


def insert_many(conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT `rows` (each with the keys of the first) into `table` with one executemany.

    On SQLite the statement is compiled once per table and the values are converted here by the
    dialect's own bind processors: SQLAlchemy's per-row parameter processing cost more than the
    insert itself. Other databases take SQLAlchemy's executemany (batched VALUES on PostgreSQL).
    """
    if not rows:
        return
    if conn.dialect.name != "sqlite" or conn.dialect.paramstyle != "qmark":
        conn.execute(table.insert(), list(rows))
        return
    names = tuple(rows[0])
    sql, steps = _insert_plan(conn.dialect, table, names)
    if len(steps) != len(names):  # a column with a Python-side default: SQLAlchemy fills it in
        conn.execute(table.insert(), list(rows))
        return
    conn.exec_driver_sql(sql, [tuple([row[name] if step is None else step(row[name]) for name, step in steps])
                               for row in rows])
