"""Seed files are written against the definitions of their day: after an analyst renames an
entity or a field (`renamed_from`), the same seed files still load on a fresh database."""

from __future__ import annotations

import re
from pathlib import Path

from fieldsync.cli import main
from fieldsync.defs import load_model
from fieldsync.store.engine import make_engine
from fieldsync.store.records import RecordStore

ROOT = Path(__file__).resolve().parent.parent


def _rename(defs: Path) -> None:
    for path in defs.rglob("*.yaml"):
        text = path.read_text()
        text = text.replace("    to: territory\n", "    to: sales_territory\n")
        if path.name == "territory.yaml":
            text = text.replace("entity: territory\n", "entity: sales_territory\nrenamed_from: territory\n", 1)
        if path.name == "retailer.yaml":
            text = text.replace("  phone:\n    type: string\n", "  contact_phone:\n    type: string\n"
                                                               "    renamed_from: phone\n")
            text = text.replace("editable: [phone, location]", "editable: [contact_phone, location]")
        if path.name == "price_list.yaml":   # a field of a child given inline under its parent
            text = re.sub(r"\n      price:\n", "\n      unit_price:\n        renamed_from: price\n", text, count=1)
        path.write_text(text)
    (defs / "masters" / "territory.yaml").rename(defs / "masters" / "sales_territory.yaml")


def test_seed_files_are_mapped_through_renamed_from(defs_copy, tmp_path, capsys):
    _rename(defs_copy)
    model = load_model(defs_copy)
    assert model.has_entity("sales_territory") and not model.has_entity("territory")
    url = f"sqlite:///{tmp_path / 'server.db'}"
    assert main(["seed", "--defs", str(defs_copy), "--database-url", url, "--data-dir", str(tmp_path / "var"),
                 str(ROOT / "examples" / "seed")]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "sales_territory: 5 record(s) new" in out and "retailer: 8 record(s) new" in out
    engine = make_engine(url)
    try:
        store = RecordStore(engine=engine, model=model)
        retailers = store.list("retailer", limit=100).items
        assert all(r["contact_phone"] for r in retailers)
        items = store.list("price_list_item", limit=100).items
        assert items and all(i["unit_price"] for i in items)
    finally:
        engine.dispose()
