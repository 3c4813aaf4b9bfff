"""The issue's acceptance path: seed, add a field and rename another in the YAML, run
`fieldsync migrate`, and every row is still there with its values."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from fieldsync.cli import main
from fieldsync.config import load_config
from fieldsync.defs import load_model
from fieldsync.seed import load_seed
from fieldsync.store.engine import make_engine
from fieldsync.store.records import RecordStore

ROOT = Path(__file__).resolve().parent.parent


def _retailers(url: str, defs) -> list[dict]:
    engine = make_engine(url)
    try:
        store = RecordStore(engine=engine, model=load_model(defs))
        return sorted(store.list("retailer", limit=1000).items, key=lambda r: r["id"])
    finally:
        engine.dispose()


def test_add_and_rename_fields_keeps_every_row(db_url, defs_copy, capsys, tmp_path):
    assert main(["migrate", "--defs", str(defs_copy), "--database-url", db_url]) == 0
    config = load_config(env={}, overrides={"DEFS_DIR": str(defs_copy), "DATABASE_URL": db_url,
                                            "DATA_DIR": str(tmp_path)})
    assert sum(load_seed(config, ROOT / "examples" / "seed").values()) == 23
    before = _retailers(db_url, defs_copy)
    assert len(before) == 8

    app = defs_copy / "app.yaml"   # a new storage shape needs a new schema version
    app.write_text(app.read_text().replace("schema_version: 1", "schema_version: 2"))
    retailer = defs_copy / "masters" / "retailer.yaml"
    text = retailer.read_text()
    text = text.replace("  phone:\n    type: string\n", "  contact_phone:\n    type: string\n    renamed_from: phone\n")
    text = text.replace("editable: [phone, location]", "editable: [contact_phone, location]")
    text = text.replace("  category:\n    type: enum", "  owner_name:\n    type: string\n    max_length: 120\n"
                                                      "  category:\n    type: enum")
    retailer.write_text(text)
    capsys.readouterr()

    assert main(["migrate", "--dry-run", "--defs", str(defs_copy), "--database-url", db_url]) == 0
    plan = capsys.readouterr().out
    assert "phone" in plan and "contact_phone" in plan and "owner_name" in plan
    engine = make_engine(db_url)
    assert "contact_phone" not in {c["name"] for c in sa.inspect(engine).get_columns("retailer")}
    engine.dispose()

    assert main(["migrate", "--defs", str(defs_copy), "--database-url", db_url]) == 0
    after = _retailers(db_url, defs_copy)
    assert [r["id"] for r in after] == [r["id"] for r in before]
    for old, new in zip(before, after):
        assert new["contact_phone"] == old["phone"] and new["contact_phone"]
        assert new["owner_name"] is None
        assert {k: v for k, v in new.items() if k not in ("contact_phone", "owner_name")} == \
               {k: v for k, v in old.items() if k != "phone"}

    # a second run has nothing to do
    capsys.readouterr()
    assert main(["migrate", "--defs", str(defs_copy), "--database-url", db_url]) == 0
    assert "up to date" in capsys.readouterr().out


def test_destructive_change_refused_without_flag(db_url, defs_copy, capsys):
    assert main(["migrate", "--defs", str(defs_copy), "--database-url", db_url]) == 0
    app = defs_copy / "app.yaml"
    app.write_text(app.read_text().replace("schema_version: 1", "schema_version: 2"))
    product = defs_copy / "masters" / "product.yaml"
    product.write_text(product.read_text().replace("  description:\n    type: text\n", "")
                       .replace("visible: [sku, name, description,", "visible: [sku, name,"))
    capsys.readouterr()
    assert main(["migrate", "--defs", str(defs_copy), "--database-url", db_url]) == 1
    assert "--allow-destructive" in capsys.readouterr().err
    engine = make_engine(db_url)
    assert "description" in {c["name"] for c in sa.inspect(engine).get_columns("product")}
    engine.dispose()
    assert main(["migrate", "--allow-destructive", "--defs", str(defs_copy), "--database-url", db_url]) == 0
    engine = make_engine(db_url)
    assert "description" not in {c["name"] for c in sa.inspect(engine).get_columns("product")}
    engine.dispose()
