"""Applied model versions (issue 12, live definitions): `migrate` and `apply` record every
version in fs_schema with its definitions' texts, who applied it, when and its plan; a database
migrated before these columns existed gains them; `apply` plans, refuses destructive steps
without the flag, writes the files, regenerates and migrates; `rollback N` is itself a plan."""

from __future__ import annotations

import shutil

import sqlalchemy as sa

from fieldsync.cli import main
from fieldsync.defs import load_model, read_sources
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


def test_apply_plans_refuses_writes_generates_and_rolls_back(defs_copy, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'fs.db'}"
    common = ["--defs", str(defs_copy), "--database-url", db, "--out", str(tmp_path / "generated")]
    assert main(["migrate", "--defs", str(defs_copy), "--database-url", db]) == 0
    source = tmp_path / "changed"
    shutil.copytree(defs_copy, source)
    _next_version(source, "email")
    _edit(source / "masters" / "retailer.yaml", "  location:\n", "  geo:\n    renamed_from: [location]\n")
    _edit(source / "masters" / "retailer.yaml", "editable: [phone, location]", "editable: [phone, geo]")
    capsys.readouterr()
    assert main(["apply", str(source), "--dry-run", *common]) == 0
    out = capsys.readouterr().out
    assert "+ add column retailer.email" in out and "+ rename column retailer.location to retailer.geo" in out
    assert read_sources(defs_copy) != read_sources(source)          # a dry run writes nothing
    assert main(["apply", str(source), *common]) == 0
    assert read_sources(defs_copy) == read_sources(source)
    assert (tmp_path / "generated" / "device" / "schema.json").is_file()
    assert load_model(defs_copy).entity("retailer").field("geo")

    # back to version 1: geo and email would lose their values, so the flag is needed
    engine = sa.create_engine(db)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO retailer (id, name, territory_id, email, version, created_at, updated_at, "
                             "deleted) VALUES ('r1', 'Shop', 't1', 'a@b', 1, '2026-01-01', '2026-01-01', 0)"))
    capsys.readouterr()
    assert main(["rollback", "1", *common]) == 1
    captured = capsys.readouterr()
    assert "! drop column retailer.email: 1 non-null values lost" in captured.out
    assert "destructive" in captured.err
    assert load_model(defs_copy).schema_version == 2                 # refused: nothing written
    assert main(["rollback", "1", "--allow-destructive", *common]) == 0
    rolled = load_model(defs_copy)
    assert rolled.schema_version == 3 and rolled.entity("retailer").field("location")   # versions only rise
    with engine.connect() as conn:
        assert [v["schema_version"] for v in list_versions(conn)] == [1, 2, 3]
    engine.dispose()
    capsys.readouterr()
    assert main(["versions", "show", "2", "--database-url", db]) == 0
    shown = capsys.readouterr().out
    assert "+    renamed_from: [location]" in shown and "add column retailer.email" in shown
    assert main(["versions", "list", "--database-url", db]) == 0
