"""Bulk inserts: one executemany per table, with SQLite's bind processing done once per plan."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa


_INSERT_PLANS: dict[tuple[int, tuple[str, ...]], tuple[sa.Table, str, Callable[[Mapping[str, Any]], tuple] | None]] = {}


def _sqlite_datetime(fallback: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """SQLAlchemy's SQLite DATETIME bind processor (its default storage format: the wall time
    as `YYYY-MM-DD HH:MM:SS.ffffff`, zone dropped) done by the same `%` format on the fields
    directly, several times faster."""
    # the rows of a batch mostly share their stamps: the last one converted is kept, as one
    # tuple (plans are shared between threads, so value and text are swapped in together)
    last: list[tuple[Any, str]] = [(None, "")]

    def process(value: Any) -> Any:
        if type(value) is dt.datetime:
            seen = last[0]
            if seen[0] is value:
                return seen[1]
            # SQLAlchemy's own storage format, its fields filled in directly
            text = "%04d-%02d-%02d %02d:%02d:%02d.%06d" % (value.year, value.month, value.day, value.hour,
                                                          value.minute, value.second, value.microsecond)
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
    env: dict[str, Any] = {}
    items = []
    for i, name in enumerate(statement.positiontup):
        column = table.c[name]
        impl = column.type.dialect_impl(dialect)
        process = impl.bind_processor(dialect)
        if process is not None and isinstance(impl, sa.DateTime) and getattr(impl, "_storage_format", None) == (
                "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"):
            process = _sqlite_datetime(process)
        if process is None:
            items.append(f"row[{name!r}]")
        else:
            env[f"p{i}"] = process
            items.append(f"p{i}(row[{name!r}])")
    # one compiled function per plan turns a row into its parameters: a tuple built in one
    # expression, each column's bind processor chosen here rather than tested per value
    source = f"def parameters(row):\n    return ({', '.join(items)}{',' if len(items) == 1 else ''})\n"
    exec(compile(source, f"<fieldsync insert into {table.name}>", "exec"), env)   # noqa: S102 - column names repr'd
    parameters = env["parameters"] if len(items) == len(names) else None   # None: a Python-side default
    if len(_INSERT_PLANS) > 1024:
        _INSERT_PLANS.clear()
    _INSERT_PLANS[key] = (table, str(statement), parameters)
    return str(statement), parameters


def insert_many(conn: sa.Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """INSERT `rows` (each with the keys of the first) into `table` with one executemany.

    On SQLite the statement is compiled once per table and the values are converted here by the
    dialect's own bind processors, called from one compiled function per table and key set:
    SQLAlchemy's per-row parameter processing cost more than the insert itself. Other databases
    take SQLAlchemy's executemany (batched VALUES on PostgreSQL).
    """
    if not rows:
        return
    if conn.dialect.name != "sqlite" or conn.dialect.paramstyle != "qmark":
        conn.execute(table.insert(), list(rows))
        return
    sql, parameters = _insert_plan(conn.dialect, table, tuple(rows[0]))
    if parameters is None:  # a column with a Python-side default: SQLAlchemy fills it in
        conn.execute(table.insert(), list(rows))
        return
    conn.exec_driver_sql(sql, list(map(parameters, rows)))


_ID_QUERIES: dict[tuple[str, int], str] = {}


def present_ids(conn: sa.Connection, table: sa.Table, ids: Sequence[str]) -> list[str]:
    """The ids of `ids` (distinct, sorted) that rows of `table` hold, sorted: a push's check
    for records it names, most of which are new. On SQLite the driver runs it (ids need no
    bind processing), with the statement text kept per chunk size; elsewhere SQLAlchemy."""
    found: list[str] = []
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        if conn.dialect.name == "sqlite" and conn.dialect.paramstyle == "qmark":
            key = (table.name, len(chunk))
            sql = _ID_QUERIES.get(key)
            if sql is None:
                if len(_ID_QUERIES) > 1024:
                    _ID_QUERIES.clear()
                sql = _ID_QUERIES[key] = f'SELECT id FROM "{table.name}" WHERE id IN ({", ".join("?" * len(chunk))})'
            found += (row[0] for row in conn.exec_driver_sql(sql, tuple(chunk)))
        else:
            found += conn.execute(sa.select(table.c.id).where(table.c.id.in_(chunk))).scalars()
    return sorted(found)
