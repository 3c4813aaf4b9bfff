"""Server DDL per dialect, compiled from `fieldsync.store.tables.build_metadata` (no connection).

The statements are the ones `metadata.create_all` would run, in a fixed order: tables in
model order, each followed by its indexes sorted by name (`table.indexes` is a set, whose
order changes with PYTHONHASHSEED), then the comments on dialects that keep them apart.
"""

from __future__ import annotations

from sqlalchemy import MetaData, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable, SetColumnComment, SetTableComment

from fieldsync.defs.model import Model
from fieldsync.store.tables import build_metadata

DIALECTS = {"sqlite": sqlite.dialect, "postgresql": postgresql.dialect}


def ordered_tables(model: Model, metadata: MetaData) -> list[Table]:
    """Entity tables in model order, then any other table of `metadata` sorted by name."""
    names = [e.name for e in model.entities if e.name in metadata.tables]
    rest = sorted(n for n in metadata.tables if n not in set(names))
    return [metadata.tables[n] for n in names + rest]


def _compile(statement, dialect: Dialect) -> str:
    return str(statement.compile(dialect=dialect)).strip()


def ddl_statements(model: Model, dialect_name: str) -> list[dict[str, str]]:
    """The DDL statements for one dialect, each as {"table", "kind", "sql"} without `;`."""
    if dialect_name not in DIALECTS:
        raise ValueError(f"unknown dialect {dialect_name!r}; known: {', '.join(sorted(DIALECTS))}")
    dialect = DIALECTS[dialect_name]()
    metadata = build_metadata(model)
    out: list[dict[str, str]] = []
    for table in ordered_tables(model, metadata):
        out.append({"table": table.name, "kind": "table", "sql": _compile(CreateTable(table), dialect)})
        for index in sorted(table.indexes, key=lambda ix: ix.name):
            out.append({"table": table.name, "kind": "index", "sql": _compile(CreateIndex(index), dialect)})
        # PostgreSQL keeps comments out of CREATE TABLE; create_all sets them afterwards.
        if dialect.supports_comments and not dialect.inline_comments:
            if table.comment:
                out.append({"table": table.name, "kind": "comment",
                            "sql": _compile(SetTableComment(table), dialect)})
            for column in table.columns:
                if column.comment:
                    out.append({"table": table.name, "kind": "comment",
                                "sql": _compile(SetColumnComment(column), dialect)})
    return out


def server_ddl(model: Model) -> dict[str, list[dict[str, str]]]:
    """The DDL statements of every dialect: what `fieldsync generate` writes to generated/server/."""
    return {name: ddl_statements(model, name) for name in sorted(DIALECTS)}
