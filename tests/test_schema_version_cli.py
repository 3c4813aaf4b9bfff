"""A change of the storage shape must come with a higher `schema_version`, or devices, which
compare versions, never migrate for it: `generate`, `migrate` and `serve` refuse such a change
with a message saying to raise the version, and change nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from fieldsync.cli import main
from fieldsync.store.engine import make_engine

ROOT = Path(__file__).resolve().parent.parent


def _add_field(defs: Path) -> None:
    retailer = defs / "masters" / "retailer.yaml"
    retailer.write_text(retailer.read_text().replace(
        "  category:\n    type: enum", "  owner_name:\n    type: string\n    max_length: 120\n  category:\n    type: enum"))


def _raise_version(defs: Path, to: int = 2) -> None:
    app = defs / "app.yaml"
    app.write_text(app.read_text().replace("schema_version: 1", f"schema_version: {to}"))


def test_generate_refuses_a_shape_change_without_a_version_raise(defs_copy, tmp_path, capsys):
    out = tmp_path / "generated"
    assert main(["generate", "--defs", str(defs_copy), "--out", str(out)]) == 0
    schema = (out / "device" / "schema.json").read_text()
    _add_field(defs_copy)
    capsys.readouterr()
    assert main(["generate", "--defs", str(defs_copy), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "schema_version" in err and "raise" in err and "app.yaml" in err and "to 2" in err, err
    assert (out / "device" / "schema.json").read_text() == schema          # nothing written
    assert main(["generate", "--check", "--defs", str(defs_copy), "--out", str(out)]) == 1
    assert "raise" in capsys.readouterr().err
    _raise_version(defs_copy)
    assert main(["generate", "--defs", str(defs_copy), "--out", str(out)]) == 0
    assert json.loads((out / "device" / "schema.json").read_text())["schema_version"] == 2
    # a version is never lowered either
    (defs_copy / "app.yaml").write_text((defs_copy / "app.yaml").read_text().replace("schema_version: 2",
                                                                                      "schema_version: 1"))
    capsys.readouterr()
    assert main(["generate", "--defs", str(defs_copy), "--out", str(out)]) == 1
    assert "lowered" in capsys.readouterr().err


def test_migrate_refuses_a_shape_change_without_a_version_raise(db_url, defs_copy, capsys):
    assert main(["migrate", "--defs", str(defs_copy), "--database-url", db_url]) == 0
    _add_field(defs_copy)
    capsys.readouterr()
    assert main(["migrate", "--defs", str(defs_copy), "--database-url", db_url]) == 1
    err = capsys.readouterr().err
    assert "schema_version" in err and "raise" in err and "to 2" in err, err
    assert main(["migrate", "--dry-run", "--defs", str(defs_copy), "--database-url", db_url]) == 1
    out = capsys.readouterr()
    assert "add column retailer.owner_name" in out.out and "raise schema_version" in out.err
    engine = make_engine(db_url)
    assert "owner_name" not in {c["name"] for c in sa.inspect(engine).get_columns("retailer")}
    engine.dispose()
    _raise_version(defs_copy)
    assert main(["migrate", "--defs", str(defs_copy), "--database-url", db_url]) == 0
    engine = make_engine(db_url)
    assert "owner_name" in {c["name"] for c in sa.inspect(engine).get_columns("retailer")}
    engine.dispose()


def test_serve_refuses_a_shape_change_without_a_version_raise(defs_copy, tmp_path):
    data_dir = tmp_path / "var"
    assert main(["migrate", "--defs", str(defs_copy), "--data-dir", str(data_dir)]) == 0
    _add_field(defs_copy)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDSYNC_")}
    done = subprocess.run([str(Path(sys.executable).parent / "fieldsync"), "serve", "--port", "0",
                           "--defs", str(defs_copy), "--data-dir", str(data_dir)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)
    assert done.returncode == 1 and "raise schema_version" in done.stderr, done.stderr
