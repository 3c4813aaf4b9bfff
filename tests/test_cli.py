"""The fieldsync command: exit codes and what it prints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fieldsync.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_validate_example_ok(capsys):
    assert main(["validate", str(ROOT / "entity_defs")]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_reports_every_error_and_fails(defs_copy, capsys):
    product = defs_copy / "masters" / "product.yaml"
    product.write_text(product.read_text().replace("type: integer", "type: integr")
                       .replace("  supervisor:\n    actions: [read]", "  boss:\n    actions: [read]"))
    assert main(["validate", str(defs_copy)]) == 1
    err = capsys.readouterr().err
    assert "product.yaml:" in err and "fields.pack_size.type" in err
    assert "permissions.boss" in err and "unknown role 'boss'" in err
    assert "2 error(s)" in err


def test_validate_bad_yaml_names_file_and_line(defs_copy, capsys):
    (defs_copy / "masters" / "territory.yaml").write_text("entity: territory\nkind: [master\n")
    assert main(["validate", str(defs_copy)]) == 1
    err = capsys.readouterr().err
    assert "territory.yaml:3:" in err and "invalid YAML" in err


def test_token_create_round_trips(tmp_path, capsys, monkeypatch):
    from fieldsync.auth import verify_token
    monkeypatch.setenv("FIELDSYNC_SECRET_KEY", "test-secret-for-cli")
    monkeypatch.setenv("FIELDSYNC_DEFS_DIR", str(ROOT / "entity_defs"))
    assert main(["token", "create", "--user", "rep-1", "--role", "field_rep",
                 "--attr", "territory_ids=a1,b2"]) == 0
    token = capsys.readouterr().out.strip()
    principal = verify_token(b"test-secret-for-cli", token)
    assert principal.user_id == "rep-1" and principal.role == "field_rep"
    assert principal.attributes["territory_ids"] == ["a1", "b2"]


@pytest.mark.parametrize("argv,message", [
    (["--role", "pilot"], "unknown role 'pilot'"),
    (["--role", "field_rep", "--attr", "shoe_size=9"], "declared attribute"),
])
def test_token_create_refuses_bad_input(argv, message, capsys, monkeypatch):
    monkeypatch.setenv("FIELDSYNC_SECRET_KEY", "x")
    monkeypatch.setenv("FIELDSYNC_DEFS_DIR", str(ROOT / "entity_defs"))
    assert main(["token", "create", "--user", "u"] + argv) == 2
    assert message in capsys.readouterr().err


def test_console_script_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "fieldsync.cli", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    for name in ("validate", "generate", "migrate", "serve", "run", "token", "seed"):
        assert name in out
