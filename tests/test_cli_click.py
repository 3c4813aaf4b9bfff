"""The `fieldsync` click group driven with click's CliRunner: the same exit statuses and output
as the console script (docs/cli.md)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from fieldsync.cli import fieldsync

ROOT = Path(__file__).resolve().parent.parent


def test_validate_prints_the_model_summary():
    done = CliRunner().invoke(fieldsync, ["validate", str(ROOT / "entity_defs")])
    assert done.exit_code == 0 and "valid — " in done.output


def test_bad_usage_exits_2():
    runner = CliRunner()
    assert runner.invoke(fieldsync, []).exit_code == 2                       # no command
    assert runner.invoke(fieldsync, ["frobnicate"]).exit_code == 2           # an unknown one
    assert runner.invoke(fieldsync, ["migrate", "--dry-rum"]).exit_code == 2  # an unknown flag
    assert runner.invoke(fieldsync, ["workers", "set"]).exit_code == 2       # --threads is required
    shown = runner.invoke(fieldsync, ["token"])                              # a group without its action
    assert shown.exit_code == 2 and "create" in shown.output and "revoke" in shown.output


def test_help_lists_every_group_and_exits_0():
    done = CliRunner().invoke(fieldsync, ["-h"])
    assert done.exit_code == 0
    for name in ("validate", "serve", "run", "worker", "workers", "dlq", "token", "devices", "keys", "audit", "tls"):
        assert f"  {name} " in done.output


def test_a_configuration_error_is_named_with_the_command_and_exits_1(tmp_path):
    done = CliRunner().invoke(fieldsync, ["migrate", "--dry-run", "--data-dir", str(tmp_path)],
                              env={"FIELDSYNC_DATA_DIRR": "x"})
    assert done.exit_code == 1
    assert "fieldsync migrate: unknown setting FIELDSYNC_DATA_DIRR" in done.output
    assert "did you mean FIELDSYNC_DATA_DIR?" in done.output


def test_token_create_needs_a_secret_and_creates_none(tmp_path):
    runner = CliRunner()
    done = runner.invoke(fieldsync, ["token", "create", "--user", "u", "--role", "field_rep"],
                         env={"FIELDSYNC_DATA_DIR": str(tmp_path / "var"),
                              "FIELDSYNC_DEFS_DIR": str(ROOT / "entity_defs")})
    assert done.exit_code == 1 and "no token-signing secret" in done.output
    assert not (tmp_path / "var").exists()
    done = runner.invoke(fieldsync, ["token", "create", "--user", "u", "--role", "field_rep", "--attr", "nope=1"],
                         env={"FIELDSYNC_SECRET_KEY": "k", "FIELDSYNC_DEFS_DIR": str(ROOT / "entity_defs")})
    assert done.exit_code == 2 and "declared attribute" in done.output


def test_tls_dev_cert_writes_the_files_and_prints_the_pins(tmp_path):
    done = CliRunner().invoke(fieldsync, ["tls", "dev-cert", "--dir", str(tmp_path / "tls"), "--host", "localhost"])
    assert done.exit_code == 0, done.output
    assert "pins (SPKI SHA-256" in done.output and (tmp_path / "tls" / "server.key").exists()
