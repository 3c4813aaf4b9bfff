"""Applied model versions (issue 12, live definitions): `migrate` and `apply` record every
version in fs_schema with its definitions' texts, who applied it, when and its plan; a database
migrated before these columns existed gains them; `apply` plans, refuses destructive steps
without the flag, writes the files, regenerates and migrates; `rollback N` is itself a plan."""

from __future__ import annotations

import sqlalchemy as sa

from fieldsync.cli import main
from fieldsync.defs import read_sources
from fieldsync.store.migrate import SCHEMA_TABLE, apply_migration, plan_migration, schema_table
from fieldsync.store.versions import latest_version_id, list_versions, read_version


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _next_version(defs, add_field: str | None = None) -> None:
    text = (defs / "app.yaml").read_text()
    number = int(text.split("schema_version: ")[1].split()[0])
    _edit(defs / "app.yaml", f"schema_version: {number}", f"schema_version: {number + 1}")
    if add_field:
        _edit(defs / "masters" / "retailer.yaml", "fields:\n",
              f"fields:\n  {add_field}:\n    type: string\n    max_length: 40\n")


def test_migrate_records_every_version_with_texts_and_who(db_url, defs_copy, tmp_path):
    args = ["--defs", str(defs_copy), "--database-url", db_url, "--data-dir", str(tmp_path)]
    assert main(["migrate", *args]) == 0
    _next_version(defs_copy, "email")
    assert main(["migrate", *args]) == 0
    assert main(["migrate", *args]) == 0          # nothing changed: no new version
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            versions = list_versions(conn)
            assert [v["schema_version"] for v in versions] == [1, 2]
            assert latest_version_id(conn) == versions[-1]["id"]
            second = read_version(conn, versions[-1]["id"])
    finally:
        engine.dispose()
    assert second["definitions"] == read_sources(defs_copy)
    assert "@" in second["applied_by"] and second["applied_at"] is not None
    assert second["steps"] == ["add column retailer.email: VARCHAR(40)"]


def test_a_changed_rule_without_table_changes_is_a_new_version(db_url, defs_copy, tmp_path):
    args = ["--defs", str(defs_copy), "--database-url", db_url, "--data-dir", str(tmp_path)]
    assert main(["migrate", *args]) == 0
    _edit(defs_copy / "masters" / "retailer.yaml", "editable: [phone, location]", "editable: [phone]")
    assert main(["migrate", *args]) == 0
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert len(list_versions(conn)) == 2
    finally:
        engine.dispose()


def test_an_older_fs_schema_gains_the_new_columns(tmp_path, example_model):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    old = sa.MetaData()
    sa.Table(SCHEMA_TABLE, old, *(c._copy() for c in schema_table().c if c.name not in ("definitions", "applied_by")))
    old.create_all(engine)
    apply_migration(engine, plan_migration(engine, example_model), definitions={"app.yaml": "x"}, applied_by="me")
    with engine.connect() as conn:
        (version,) = list_versions(conn)
        assert read_version(conn, version["id"])["applied_by"] == "me"
    engine.dispose()

