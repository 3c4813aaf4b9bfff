"""The fieldsync command as an outsider meets it: a fresh data directory, broken definitions,
a pipe closed early. Each runs the installed console script in a subprocess, so what is
checked is what a user sees (exit code, stderr, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
FIELDSYNC = Path(sys.executable).parent / "fieldsync"


def run_cli(*argv: str, cwd: Path = ROOT, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FIELDSYNC_")}
    clean.update(env or {})
    return subprocess.run([str(FIELDSYNC), *argv], capture_output=True, text=True, cwd=cwd, env=clean,
                          timeout=timeout)


def test_seed_on_a_fresh_data_dir_creates_and_migrates(tmp_path):
    data_dir = tmp_path / "fresh" / "var"          # not even its parent exists
    done = run_cli("seed", "--data-dir", str(data_dir), "--defs", str(ROOT / "entity_defs"),
                   str(ROOT / "examples" / "seed"))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "product: " in done.stdout
    engine = sa.create_engine(f"sqlite:///{data_dir / 'fieldsync.db'}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM product")).scalar_one() > 0
        assert conn.execute(sa.text("SELECT count(*) FROM fs_schema")).scalar_one() == 1
    engine.dispose()
    again = run_cli("seed", "--data-dir", str(data_dir), str(ROOT / "examples" / "seed"))
    assert again.returncode == 0, again.stderr
    assert "product: 0 record(s) new" in again.stdout


def test_migrate_takes_data_dir(tmp_path):
    data_dir = tmp_path / "var"
    done = run_cli("migrate", "--data-dir", str(data_dir))
    assert done.returncode == 0, done.stderr
    assert (data_dir / "fieldsync.db").exists()
    again = run_cli("migrate", "--data-dir", str(data_dir))
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr


def test_seed_on_a_fresh_data_dir_from_the_environment(tmp_path):
    data_dir = tmp_path / "var"
    done = run_cli("seed", env={"FIELDSYNC_DATA_DIR": str(data_dir)})
    assert done.returncode == 0, done.stderr
    assert "retailer: 8 record(s) new" in done.stdout


def _break_definitions(defs_copy: Path) -> None:
    product = defs_copy / "masters" / "product.yaml"
    product.write_text(product.read_text().replace("type: integer", "type: integr"))


@pytest.mark.parametrize("command", ["serve", "run", "seed", "migrate", "worker"])
def test_commands_on_invalid_definitions_print_validate_messages(command, defs_copy, tmp_path):
    _break_definitions(defs_copy)
    validate = run_cli("validate", str(defs_copy))
    assert validate.returncode == 1 and "product.yaml:" in validate.stderr
    done = run_cli(command, "--defs", str(defs_copy), "--data-dir", str(tmp_path / "var"),
                   *(("--port", "0") if command in ("serve", "run") else ()), timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr == validate.stderr


def _closed_early(argv: list[str]) -> subprocess.CompletedProcess:
    """Run the command with its standard output read for one line and then closed, as `| head -1`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FIELDSYNC_")}
    proc = subprocess.Popen([str(FIELDSYNC), *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                            env=clean)
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.wait(timeout=120)
    return subprocess.CompletedProcess(argv, proc.returncode, first.decode(), err)


def test_streaming_commands_exit_quietly_when_the_reader_goes_away(tmp_path):
    from fieldsync.api import create_app
    from fieldsync.audit.trail import AuditEvent
    data_dir = tmp_path / "var"
    app = create_app({"DATA_DIR": str(data_dir), "SYNC_LISTENERS": 0})
    state = app.extensions["fieldsync"]
    state.audit.record_all([AuditEvent(action="read", actor=f"user-{i}", role="admin", channel="rest",
                                       entity="retailer", detail={"n": i}) for i in range(1500)])
    state.sync.close()
    state.engine.dispose()
    done = _closed_early(["audit", "export", "--format", "fhir", "--from", "2000-01-01", "--to", "2100-01-01",
                          "--data-dir", str(data_dir)])
    assert done.stdout.startswith("{")           # it did stream
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
    assert done.returncode == 141                # as a process killed by SIGPIPE: 128 + 13
    done = _closed_early(["audit", "verify", "--json", "--data-dir", str(data_dir)])
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr
