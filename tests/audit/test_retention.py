"""Retention: entries older than AUDIT_RETENTION_DAYS are purged, and the trail still verifies
from its first retained entry, anchored by a signed checkpoint and a purge entry."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from audit_support import fill, raw
from fieldsync.audit.chain import ENTRIES
from fieldsync.errors import AuditTampered


def test_default_retention_is_six_years(make_log):
    from fieldsync.config import load_config
    assert load_config(env={})["AUDIT_RETENTION_DAYS"] == 2192
    assert make_log().retention_days == 2192


def test_purge_keeps_recent_entries_and_the_trail_verifies(make_log, clock):
    log = make_log(retention_days=30, checkpoint_every=0)
    fill(log, 5)                     # old
    clock.advance(days=20)
    fill(log, 3)                     # 20 days younger
    clock.advance(days=15)           # the first 5 are now 35 days old, the next 3 only 15
    done = log.purge()
    assert (done["purged"], done["through"]) == (5, 5)
    entries = list(log.entries())
    assert [e.seq for e in entries] == [6, 7, 8, 9]
    purge_entry = entries[-1]
    assert purge_entry.action == "admin" and purge_entry.detail["event"] == "audit-purge"
    assert purge_entry.detail["through"] == 5
    report = log.verify()
    assert report.ok, report.problems
    assert report.anchor_seq == 5 and report.first_seq == 6
    assert "purged through entry 5" in report.summary()
    # nothing more is old enough: a second purge does nothing
    assert log.purge()["purged"] == 0
    # later purges move the anchor on
    clock.advance(days=40)
    assert log.purge()["through"] == 9
    assert log.verify().ok


def test_a_deletion_from_the_start_that_no_purge_recorded_is_detected(make_log):
    log = make_log(checkpoint_every=5)
    fill(log, 12)
    raw(log, "DELETE FROM fs_audit_entries WHERE seq <= 5")
    assert log.verify().problems == ["entries 1 to 5 are missing (deleted)"]
    # moving the anchor to the signed checkpoint at 5 breaks the head's seal, and no purge
    # entry vouches for the deletion
    with log.engine.connect() as conn:
        five = [c for c in log.checkpoints(conn) if c.seq == 5][0]
    raw(log, "UPDATE fs_audit_head SET anchor_seq = 5, anchor_hash = :h", h=json.loads(five.statement)["hash"])
    assert log.verify().problems == ["the head row was edited (its seal does not match)",
                                     "entries 1 to 5 were deleted from the start of the log, and no purge entry "
                                     "records it"]


def test_purge_refuses_a_log_that_does_not_verify(make_log, clock):
    log = make_log(retention_days=1)
    fill(log, 4)
    raw(log, "UPDATE fs_audit_entries SET actor = 'mallory' WHERE seq = 2")
    clock.advance(days=3)
    with pytest.raises(AuditTampered, match="entry 2 was edited"):
        log.purge()
    with log.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(ENTRIES)).scalar_one() == 4   # evidence kept
