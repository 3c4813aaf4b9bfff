"""The hash chain: appending, sealing, checkpoints, keys and reasons (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import stat

import pytest
import sqlalchemy as sa

from fieldsync.errors import AuditUnavailable, ConfigError
from fieldsync.audit.chain import CHECKPOINTS, ENTRIES, GENESIS, entry_hash, load_public_key, verify_signature
from fieldsync.audit.trail import AuditEvent
from fieldsync.store.engine import write_transaction

from audit_support import fill, raw, sample_event


def _rows(log):
    with log.engine.connect() as conn:
        return list(conn.execute(sa.select(ENTRIES).order_by(ENTRIES.c.seq)).mappings())


def test_entries_form_one_chain_and_verify(audit_log):
    seqs = fill(audit_log, 12)
    assert seqs == list(range(1, 13))
    rows = _rows(audit_log)
    assert rows[0]["prev_hash"] == GENESIS
    for before, after in zip(rows, rows[1:]):
        assert after["prev_hash"] == before["entry_hash"]
    assert all(entry_hash(r) == r["entry_hash"] for r in rows)
    report = audit_log.verify()
    assert report.ok, report.problems
    assert (report.entries, report.first_seq, report.last_seq) == (12, 1, 12)
    assert "intact" in report.summary()


def test_entries_read_back_as_written(audit_log):
    event = sample_event(4)
    seq = audit_log.record(event)
    (entry,) = list(audit_log.entries())
    assert entry.seq == seq
    assert (entry.action, entry.actor, entry.device, entry.channel, entry.entity) == \
        (event.action, event.actor, event.device, event.channel, event.entity)
    assert (entry.record_ids, entry.fields, entry.subjects, entry.detail) == \
        (event.record_ids, event.fields, event.subjects, dict(event.detail))
    assert not entry.has_reason


def test_append_commits_and_rolls_back_with_the_callers_transaction(audit_log):
    with write_transaction(audit_log.engine) as conn:
        assert audit_log.append(conn, sample_event(0)) == 1
    with pytest.raises(RuntimeError):
        with write_transaction(audit_log.engine) as conn:
            audit_log.append(conn, sample_event(1))
            raise RuntimeError("the PHI write failed")
    # the rolled-back entry took no seq: the next one is 2, and the chain is whole
    assert audit_log.record(sample_event(2)) == 2
    assert [r["seq"] for r in _rows(audit_log)] == [1, 2]
    assert audit_log.verify().ok


def test_a_failing_append_raises_audit_unavailable(audit_log):
    fill(audit_log, 2)
    raw(audit_log, "ALTER TABLE fs_audit_entries RENAME TO fs_audit_entries_away")
    with pytest.raises(AuditUnavailable, match="could not record"):
        audit_log.record(sample_event(3))
    raw(audit_log, "ALTER TABLE fs_audit_entries_away RENAME TO fs_audit_entries")
    assert audit_log.record(sample_event(4)) == 3      # the failed append left no trace
    assert audit_log.verify().ok


def test_checkpoints_are_signed_every_n_entries(make_log):
    log = make_log(checkpoint_every=5)
    fill(log, 12)
    with log.engine.connect() as conn:
        cps = log.checkpoints(conn)
    assert [c.seq for c in cps] == [5, 10]
    public = load_public_key(log.public_key_pem().encode())
    rows = {r["seq"]: r for r in _rows(log)}
    for cp in cps:
        assert verify_signature(public, cp)
        statement = json.loads(cp.statement)
        assert statement["seq"] == cp.seq and statement["hash"] == rows[cp.seq]["entry_hash"]
    # a batch appended in one transaction is checkpointed at each multiple it crosses
    with write_transaction(log.engine) as conn:
        log.append_all(conn, [sample_event(i) for i in range(14)])
    with log.engine.connect() as conn:
        assert [c.seq for c in log.checkpoints(conn)] == [5, 10, 15, 20, 25]
    report = log.verify()
    assert report.ok and report.checkpoints_verified == 5 and report.last_checkpoint == 25


def test_checkpoint_on_demand(make_log):
    log = make_log(checkpoint_every=0)
    assert log.checkpoint() is None          # nothing to sign yet
    fill(log, 3)
    cp = log.checkpoint()
    assert cp.seq == 3
    assert log.checkpoint().signature == cp.signature   # the same entry is not signed twice
    with log.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(CHECKPOINTS)).scalar_one() == 1
    assert json.loads(cp.as_json())["statement"] == cp.statement


def test_signing_key_is_created_0600_and_refused_when_readable_by_others(make_log, tmp_path):
    log = make_log()
    path = log.signing_key_path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "BEGIN PUBLIC KEY" in log.public_key_pem()
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):   # the server refuses to start
        make_log(keys_dir=path.parent)


def test_a_reason_is_stored_encrypted_and_decrypts_for_its_entry_only(audit_log):
    reason = "Unconscious patient Ada Lovelace, ER bay 4"
    seq = audit_log.record(AuditEvent(action="read", actor="dr-1", purpose="break-glass", reason=reason,
                                      entity="prescription", record_ids=("r-1",)))
    with audit_log.engine.connect() as conn:
        stored = conn.execute(sa.select(ENTRIES.c.reason).where(ENTRIES.c.seq == seq)).scalar_one()
    assert stored.startswith("r1.") and "Lovelace" not in stored
    (plain,) = list(audit_log.entries())
    assert plain.has_reason and plain.reason is None
    (decrypted,) = list(audit_log.entries(decrypt_reasons=True))
    assert decrypted.reason == reason


def test_events_are_checked_when_made():
    with pytest.raises(ValueError, match="audit action"):
        AuditEvent(action="peek")
    with pytest.raises(ValueError, match="outcome"):
        AuditEvent(action="read", outcome="maybe")
    with pytest.raises(ValueError, match="channel"):
        AuditEvent(action="read", channel="fax")
    with pytest.raises(TypeError, match="record_ids"):
        AuditEvent(action="read", record_ids="r-1")


def test_entries_filter_by_time_actor_entity_and_subject(audit_log, clock):
    first = audit_log.record(AuditEvent(action="read", actor="a", entity="prescription", subjects=("sr_1",)))
    clock.advance(days=2)
    middle = clock.now
    audit_log.record(AuditEvent(action="read", actor="b", entity="visit"))
    audit_log.record(AuditEvent(action="read", actor="a", entity="prescription", subjects=("sr_2", "sr_1")))
    assert [e.seq for e in audit_log.entries(actor="a")] == [first, 3]
    assert [e.seq for e in audit_log.entries(entity="visit")] == [2]
    assert [e.seq for e in audit_log.entries(subject="sr_1")] == [1, 3]
    assert [e.seq for e in audit_log.entries(subject="sr_")] == []     # whole references only
    assert [e.seq for e in audit_log.entries(start=middle)] == [2, 3]
    assert [e.seq for e in audit_log.entries(end=middle)] == [1]
