"""server/<dialect>.sql runs on a real database and creates what build_metadata describes."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from fieldsync.store.ddl import ddl_statements
from fieldsync.store.tables import build_metadata


def _statements(script: str) -> list[str]:
    # Statements end with ";" at the end of a line; comments start lines with "--".
    body = "\n".join(line for line in script.splitlines() if not line.startswith("--"))
    return [s.strip() for s in body.split(";\n") if s.strip().rstrip(";")]


def test_sqlite_ddl_executes_and_matches_the_metadata(rendered, example_model, tmp_path):
    conn = sqlite3.connect(tmp_path / "server.db")
    conn.executescript(rendered["server/sqlite.sql"])
    metadata = build_metadata(example_model)
    for table in metadata.tables.values():
        columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table.name}")')]
        assert columns == [c.name for c in table.columns], table.name
        indexes = {r[1] for r in conn.execute(f'PRAGMA index_list("{table.name}")')
                   if not r[1].startswith("sqlite_autoindex")}
        assert indexes == {ix.name for ix in table.indexes}, table.name
    conn.close()


@pytest.mark.postgres
def test_postgresql_ddl_executes_and_matches_the_metadata(rendered, example_model, pg_url):
    engine = sa.create_engine(pg_url)
    try:
        with engine.begin() as conn:
            for statement in _statements(rendered["server/postgresql.sql"]):
                conn.exec_driver_sql(statement)
        inspector = sa.inspect(engine)
        metadata = build_metadata(example_model)
        assert set(inspector.get_table_names()) == set(metadata.tables)
        for table in metadata.tables.values():
            assert [c["name"] for c in inspector.get_columns(table.name)] == [c.name for c in table.columns]
            names = {ix["name"] for ix in inspector.get_indexes(table.name)}
            assert names == {ix.name for ix in table.indexes}, table.name
        assert inspector.get_table_comment("order")["text"] == "Order"
        # The live-rows unique index really is partial: a deleted duplicate is allowed.
        with engine.begin() as conn:
            insert = sa.text("insert into product (id, created_at, updated_at, deleted, sku) "
                             "values (:id, now(), now(), :deleted, 'SKU-1')")
            conn.execute(insert, {"id": "p1", "deleted": True})
            conn.execute(insert, {"id": "p2", "deleted": False})
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(insert, {"id": "p3", "deleted": False})
    finally:
        engine.dispose()


def test_statements_come_in_model_order_with_indexes_sorted(example_model):
    for dialect in ("sqlite", "postgresql"):
        statements = ddl_statements(example_model, dialect)
        tables = [s["table"] for s in statements if s["kind"] == "table"]
        assert tables == list(example_model.entity_names)
        for name in tables:
            indexes = [s["sql"] for s in statements if s["table"] == name and s["kind"] == "index"]
            assert indexes == sorted(indexes, key=lambda sql: sql.split(" ON ")[0].split()[-1])


def test_an_unknown_dialect_is_refused(example_model):
    with pytest.raises(ValueError, match="unknown dialect 'oracle'"):
        ddl_statements(example_model, "oracle")
