"""A wiped audit trail is detected (invariant 8; docs/audit.md "The anchor").

The attacker here has the database: they drop the audit tables (with or without the audit data
keys), or delete every row of the entries, the head and the checkpoints, and restart the server.
The latest signed checkpoint, kept outside the database (the anchor, next to the signing key or
in AUDIT_ANCHOR_DIR), is what tells: the server refuses to start a new trail, `fieldsync audit
verify` compares against it by default, and only an explicit, audited acknowledgement lets a
deliberate reset through.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit_support import (AUDIT_TABLES, SECRET, PhiApp, drop_trail, fill, run_server_once, sample_event, sql,
                           start)
from fieldsync.cli import main
from fieldsync.errors import Error
from fieldsync.audit.chain import create_audit_tables
from fieldsync.audit.trail import AuditLog
from fieldsync.crypto.keys import LocalKeyProvider
from fieldsync.store.engine import make_engine

def fresh_log(db_url: str, keys_dir: Path) -> None:
    """What a server without an anchor did after a wipe: a new, sealed, empty trail."""
    engine = make_engine(db_url)
    try:
        AuditLog(engine, LocalKeyProvider(keys_dir), keys_dir / "audit-signing.key").prepare()
    finally:
        engine.dispose()


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


# -- the server refuses to start a new trail -----------------------------------------------------

@pytest.mark.parametrize("keys_too", [False, True], ids=["tables", "tables-and-keys"])
def test_a_server_whose_audit_tables_were_dropped_refuses_to_start(db_url, tmp_path, example_model, keys_too):
    data = tmp_path / "data"
    log_id = run_server_once(db_url, data, example_model)
    drop_trail(db_url, keys_too=keys_too)
    with pytest.raises(Error) as refused:
        start(db_url, data, example_model)
    message = str(refused.value)
    assert log_id in message                                     # names the trail that was anchored ...
    assert str(data / "keys" / "audit-anchor.json") in message  # ... where the anchor is ...
    assert f"fieldsync audit acknowledge-reset --log {log_id}" in message   # ... and how to accept a reset
    engine = make_engine(db_url)
    try:   # no new trail was started behind the refusal
        assert not sa.inspect(engine).has_table("fs_audit_head")
    finally:
        engine.dispose()
    with pytest.raises(Error):   # and it keeps refusing
        start(db_url, data, example_model)


def test_a_server_whose_audit_rows_were_deleted_refuses_to_start(db_url, tmp_path, example_model):
    data = tmp_path / "data"
    log_id = run_server_once(db_url, data, example_model)
    sql(db_url, *[f"DELETE FROM {t}" for t in AUDIT_TABLES] + ["DELETE FROM fs_audit_keys"])
    with pytest.raises(Error, match=log_id):
        start(db_url, data, example_model)


def test_the_anchor_is_kept_in_the_configured_directory_and_survives_losing_the_keys(db_url, tmp_path,
                                                                                      example_model):
    data, anchors = tmp_path / "data", tmp_path / "elsewhere"
    log_id = run_server_once(db_url, data, example_model, AUDIT_ANCHOR_DIR=str(anchors))
    anchor = anchors / "audit-anchor.json"
    assert stat.S_IMODE(anchor.stat().st_mode) == 0o600
    assert json.loads(json.loads(anchor.read_text())["statement"])["log"] == log_id
    assert not (data / "keys" / "audit-anchor.json").exists()
    drop_trail(db_url, keys_too=True)
    (data / "keys" / "audit-signing.key").unlink()   # the signing key gone too: a new one would sign
    with pytest.raises(Error, match=log_id):
        start(db_url, data, example_model, AUDIT_ANCHOR_DIR=str(anchors))


def test_a_first_start_writes_the_anchor_and_a_restart_is_not_refused(db_url, tmp_path, example_model):
    data = tmp_path / "data"
    log_id = run_server_once(db_url, data, example_model)
    anchor = data / "keys" / "audit-anchor.json"
    assert stat.S_IMODE(anchor.stat().st_mode) == 0o600
    assert json.loads(json.loads(anchor.read_text())["statement"])["log"] == log_id
    assert run_server_once(db_url, data, example_model) == log_id


# -- verify compares against the anchor by default ----------------------------------------------

@pytest.mark.parametrize("keys_too", [False, True], ids=["tables", "tables-and-keys"])
def test_verify_reports_a_trail_replaced_by_a_fresh_one(db_url, tmp_path, example_model, capsys, keys_too):
    data = tmp_path / "data"
    log_id = run_server_once(db_url, data, example_model)
    drop_trail(db_url, keys_too=keys_too)
    fresh_log(db_url, data / "keys")
    code, out = cli(capsys, "audit", "verify", "--database-url", db_url, "--data-dir", str(data))
    assert code == 1, out
    assert "problem:" in out and log_id in out and "audit-anchor.json" in out
    assert "the audit log is empty" not in out


def test_verify_reports_dropped_tables_against_the_anchor(db_url, tmp_path, example_model, capsys):
    data = tmp_path / "data"
    log_id = run_server_once(db_url, data, example_model)
    drop_trail(db_url, keys_too=True)
    code, out = cli(capsys, "audit", "verify", "--database-url", db_url, "--data-dir", str(data))
    assert code == 1 and log_id in out and "wiped" in out, out


def test_verify_reports_deleted_entries_head_and_checkpoints_as_tampering(db_url, tmp_path, example_model, capsys):
    data = tmp_path / "data"
    run_server_once(db_url, data, example_model)
    sql(db_url, *[f"DELETE FROM {t}" for t in AUDIT_TABLES])
    code, out = cli(capsys, "audit", "verify", "--database-url", db_url, "--data-dir", str(data))
    assert code == 1, out
    assert "problem: the head row of the audit trail is missing (deleted)" in out
    assert "has no row" not in out and "create_audit_tables" not in out


def test_deleting_entries_head_and_checkpoints_is_tampering_even_without_an_anchor(make_log):
    log = make_log(checkpoint_every=5)
    fill(log, 12)
    with log.engine.begin() as conn:
        for table in AUDIT_TABLES:
            conn.execute(sa.text(f"DELETE FROM {table}"))
    report = log.verify()        # no exception: a finding, not an internal error
    assert not report.ok
    assert "the head row of the audit trail is missing (deleted)" in report.problems


# -- a deliberate reset, acknowledged and audited -----------------------------------------------

def test_an_acknowledged_reset_lets_the_server_start_and_is_recorded(db_url, tmp_path, example_model, capsys):
    data = tmp_path / "data"
    old = run_server_once(db_url, data, example_model)
    assert run_server_once(db_url, data, example_model) == old   # a restart anchors the head
    drop_trail(db_url, keys_too=False)
    base = ["--database-url", db_url, "--data-dir", str(data)]
    code, out = cli(capsys, "audit", "acknowledge-reset", "--log", "not-the-anchored-log", "--reason", "x", *base)
    assert code == 1 and old in out                      # the anchored log's id must be named
    code, out = cli(capsys, "audit", "acknowledge-reset", "--log", old, "--reason", "restored the backup of May 1",
                    *base)
    assert code == 0, out
    phi = start(db_url, data, example_model)
    try:
        (reset, *_rest) = phi.audit.entries(decrypt_reasons=True)
        assert (reset.seq, reset.action, reset.channel) == (1, "admin", "cli")
        assert reset.detail["event"] == "audit-trail-reset" and reset.detail["previous_log"] == old
        assert reset.detail["previous_seq"] >= 3 and reset.reason == "restored the backup of May 1"
        assert phi.audit.verify().ok
    finally:
        phi.close()
    code, out = cli(capsys, "audit", "verify", *base)
    assert code == 0, out


# -- an empty log is clean ----------------------------------------------------------------------

def test_a_freshly_created_empty_log_verifies_clean(db_url, tmp_path):
    engine = make_engine(db_url)
    try:
        create_audit_tables(engine)
        log = AuditLog(engine, LocalKeyProvider(tmp_path / "keys"), tmp_path / "keys" / "audit-signing.key")
        report = log.verify()
        assert report.ok, report.problems
        assert report.summary() == "the audit log is empty"
    finally:
        engine.dispose()


def test_audit_checkpoint_on_a_fresh_data_dir_then_verify_is_clean(tmp_path, capsys):
    data = tmp_path / "fresh"
    code, out = cli(capsys, "audit", "checkpoint", "--data-dir", str(data))
    assert code == 0, out
    code, out = cli(capsys, "audit", "verify", "--data-dir", str(data))
    assert code == 0, out
    assert "the audit log is empty" in out and "problem" not in out


def test_the_server_database_file_is_created_private(tmp_path, example_model):
    data = tmp_path / "data"
    from fieldsync.api import create_app
    app = create_app({"SECRET_KEY": SECRET, "DATA_DIR": str(data), "SYNC_LISTENERS": 0}, model=example_model)
    phi = PhiApp(app)   # writes through the database: the -wal and -shm files exist now
    try:
        for name in ("fieldsync.db", "fieldsync.db-wal", "fieldsync.db-shm"):
            path = data / name
            assert path.exists(), name
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, name
    finally:
        phi.close()


def test_a_restored_backup_is_refused_until_acknowledged(tmp_path, example_model, capsys):
    data, db = tmp_path / "data", tmp_path / "server.db"
    url = f"sqlite:///{db}"
    log_id = run_server_once(url, data, example_model)
    run_server_once(url, data, example_model)                 # anchored at its head
    shutil.copyfile(db, tmp_path / "backup.db")              # (the engine is disposed: no -wal left)
    server = start(url, data, example_model)
    try:
        server.audit.record_all([sample_event(i) for i in range(4)])
    finally:
        server.close()
    run_server_once(url, data, example_model)                 # anchored past the backup
    anchored = json.loads(json.loads((data / "keys" / "audit-anchor.json").read_text())["statement"])["seq"]
    shutil.copyfile(tmp_path / "backup.db", db)              # the disk failed; the backup is restored
    with pytest.raises(Error, match="older backup was restored") as refused:
        start(url, data, example_model)
    assert log_id in str(refused.value)
    code, out = cli(capsys, "audit", "acknowledge-reset", "--log", log_id, "--reason", "disk failure, backup restored",
                    "--database-url", url, "--data-dir", str(data))
    assert code == 0, out
    server = start(url, data, example_model)
    try:
        reset = list(server.audit.entries())[-1]
        assert reset.detail["event"] == "audit-trail-reset" and reset.detail["previous_log"] == log_id
        assert reset.detail["previous_seq"] == anchored and reset.seq < anchored
        assert server.audit.verify().ok
    finally:
        server.close()
