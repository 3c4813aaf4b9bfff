"""Every PHI access is audited, and if the audit append fails the PHI operation fails
(invariant 8): REST writes and reads, pulls (with their results), pushes — on SQLite and
PostgreSQL, through the real app, with the audit store really broken (its table renamed away).
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager

import pytest
import sqlalchemy as sa

from audit_support import raw
from fieldsync.errors import AuditUnavailable
from fieldsync.store.changelog import CHANGES_TABLE
from fieldsync.store.sync_tables import DEVICES, LEDGER

PHI = ("patient_id", "patient_name", "patient_dob", "diagnosis")


@contextmanager
def audit_store_down(phi):
    """The audit entries table is gone (a broken audit store) until the block ends."""
    raw(phi.audit, "ALTER TABLE fs_audit_entries RENAME TO fs_audit_entries_down")
    try:
        yield
    finally:
        raw(phi.audit, "ALTER TABLE fs_audit_entries_down RENAME TO fs_audit_entries")


def count(phi, table: str, **where) -> int:
    clause = " AND ".join(f"{k} = :{k}" for k in where) or "1 = 1"
    with phi.state.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE {clause}"), where).scalar_one()


def ref(phi, patient_id: str) -> str:
    return phi.state.store.codec.subject_ref(patient_id)


def assert_503(response) -> None:
    assert response.status_code == 503, response.get_json()
    body = response.get_json()
    assert body["type"].endswith("/audit-unavailable") and body["status"] == 503


def assert_no_phi(response, values) -> None:
    data = response.get_data(as_text=True)
    for value in values:
        assert value not in data


# -- REST ----------------------------------------------------------------------------------------

def test_a_rest_create_is_audited_in_its_own_transaction(phi_app):
    rep = phi_app.rep_token("rep-1")
    values = phi_app.prescription()
    created = phi_app.ok("POST", "/prescription", rep, values)
    (entry,) = phi_app.entries(entity="prescription")
    assert (entry.action, entry.actor, entry.role, entry.channel, entry.purpose) == \
        ("create", "rep-1", "field_rep", "rest", "treatment")
    assert entry.record_ids == (created["id"],) and entry.fields == PHI
    assert entry.subjects == (ref(phi_app, values["patient_id"]),)     # the create's answer is covered by it
    assert phi_app.audit.verify().ok


def test_rest_reads_are_audited_for_roles_that_see_phi_only(phi_app):
    rep = phi_app.rep_token("rep-1")
    a = phi_app.ok("POST", "/prescription", rep, phi_app.prescription())
    b = phi_app.ok("POST", "/prescription", rep, phi_app.prescription())
    phi_app.ok("GET", f"/prescription/{a['id']}", rep)
    phi_app.ok("GET", "/prescription", rep)
    reads = phi_app.entries(entity="prescription", actor="rep-1")[2:]
    assert [(e.action, e.record_ids) for e in reads] == [("read", (a["id"],)), ("read", (a["id"], b["id"]))]
    assert all(e.fields == PHI and len(e.subjects) == len(e.record_ids) for e in reads)
    before = len(phi_app.entries(entity="prescription"))
    for user, role in (("sup-1", "supervisor"), ("an-1", "analyst"), ("admin-1", "admin")):
        token = phi_app.token(user, role)
        phi_app.ok("GET", f"/prescription/{a['id']}", token)
        phi_app.ok("GET", "/prescription", token)
    assert len(phi_app.entries(entity="prescription")) == before    # they see no PHI field
    compliance = phi_app.token("co-1", "compliance")
    phi_app.ok("GET", "/prescription", compliance)
    assert phi_app.entries(entity="prescription")[-1].actor == "co-1"
    # an entity without PHI is never audited
    phi_app.ok("GET", "/retailer", rep)
    assert all(e.entity in ("prescription", None) for e in phi_app.entries())


def test_a_delete_of_a_phi_record_is_audited(phi_app):
    rep, admin = phi_app.rep_token("rep-1"), phi_app.token("admin-1", "admin")
    created = phi_app.ok("POST", "/prescription", rep, phi_app.prescription())
    r = phi_app.request("DELETE", f"/prescription/{created['id']}", admin)
    assert r.status_code == 204
    entry = phi_app.entries(entity="prescription")[-1]
    assert (entry.action, entry.actor, entry.record_ids, entry.fields) == ("delete", "admin-1", (created["id"],), PHI)


def test_a_rest_write_fails_with_nothing_stored_when_the_audit_fails(phi_app):
    rep = phi_app.rep_token("rep-1")
    phi_app.ok("GET", "/retailer", rep)               # the token's session is started (and audited) first
    values = phi_app.prescription()
    changes_before = count(phi_app, CHANGES_TABLE)
    with audit_store_down(phi_app):
        r = phi_app.request("POST", "/prescription", rep, values)
        assert_503(r)
        assert_no_phi(r, (values["patient_name"], values["diagnosis"]))
    assert count(phi_app, "prescription") == 0
    assert count(phi_app, CHANGES_TABLE) == changes_before
    assert phi_app.entries(entity="prescription") == []
    phi_app.ok("POST", "/prescription", rep, values)  # the audit works again: so does the write
    assert count(phi_app, "prescription") == 1 and len(phi_app.entries(entity="prescription")) == 1


def test_a_rest_read_returns_no_phi_when_the_audit_fails(phi_app):
    rep = phi_app.rep_token("rep-1")
    values = phi_app.prescription()
    created = phi_app.ok("POST", "/prescription", rep, values)
    secrets = (values["patient_name"], values["diagnosis"], values["patient_dob"])
    analyst = phi_app.token("an-1", "analyst")
    phi_app.ok("GET", "/retailer", analyst)           # its session is started (and audited) first
    with audit_store_down(phi_app):
        for path in (f"/prescription/{created['id']}", "/prescription"):
            r = phi_app.request("GET", path, rep)
            assert_503(r)
            assert_no_phi(r, secrets)
        # a role seeing no PHI is not held up by the audit store
        assert phi_app.request("GET", "/prescription", analyst).status_code == 200
    assert [e.action for e in phi_app.entries(entity="prescription")] == ["create"]


# -- sync ----------------------------------------------------------------------------------------

def _mutation(phi, seq: int, record_id: str, values: dict) -> dict:
    return {"seq": seq, "entity": "prescription", "op": "insert", "id": record_id, "base_version": None,
            "client_time": "2024-03-01T09:00:00Z", "fields": values}


def _push(phi, token: str, device_id: str, mutations: list) -> dict:
    r = phi.sync("/push", token, {"device_id": device_id, "schema_version": phi.state.model.schema_version,
                                  "mutations": mutations})
    assert r.status_code == 202, r.get_json()
    return r.get_json()


def _pull(phi, token: str, device_id: str):
    return phi.sync("/pull", token, {"device_id": device_id, "schema_version": phi.state.model.schema_version,
                                     "cursor": 0, "limit": 100, "results_after": 0})


def test_a_push_is_audited_in_its_batch_and_a_failing_audit_leaves_the_batch_for_later(phi_app):
    rep = phi_app.rep_token("rep-1")
    device = phi_app.register(rep)
    record_id, values = str(uuid.uuid4()), phi_app.prescription()
    sync = phi_app.state.sync
    with audit_store_down(phi_app):
        _push(phi_app, rep, device, [_mutation(phi_app, 1, record_id, values)])   # received: the queue has it
        (message,) = sync.queue.receive(10, visibility_timeout=60.0)
        with pytest.raises(AuditUnavailable):
            sync.handle(message)
        # even the last delivery is never rejected for an audit outage (it would lose the write)
        from dataclasses import replace
        with pytest.raises(AuditUnavailable):
            sync.handle(replace(message, receive_count=99))
        sync.queue.release([message.receipt])
    assert count(phi_app, "prescription") == 0
    assert count(phi_app, LEDGER.name) == 0                          # not applied, not answered
    assert sync.drain() == 1                                         # retried: applies once the audit works
    assert count(phi_app, "prescription") == 1
    (entry,) = phi_app.entries(entity="prescription")
    assert (entry.action, entry.channel, entry.actor, entry.device) == ("create", "push", "rep-1", device)
    assert entry.record_ids == (record_id,) and entry.fields == PHI
    assert entry.subjects == (ref(phi_app, values["patient_id"]),)
    assert sync.drain() == 0 and count(phi_app, LEDGER.name) == 1    # exactly once


def test_a_pull_carrying_phi_is_audited_and_fails_when_the_audit_fails(phi_app):
    rep = phi_app.rep_token("rep-1")
    device = phi_app.register(rep)
    record_id, values = str(uuid.uuid4()), phi_app.prescription()
    _push(phi_app, rep, device, [_mutation(phi_app, 1, record_id, values)])
    phi_app.state.sync.drain()
    with phi_app.state.engine.connect() as conn:
        served = conn.execute(sa.select(DEVICES.c.served_cursor).where(DEVICES.c.device_id == device)).scalar_one()
    with audit_store_down(phi_app):
        r = _pull(phi_app, rep, device)
        assert_503(r)
        assert_no_phi(r, (values["patient_name"], values["diagnosis"]))
        r = phi_app.client.get(f"/api/v1/sync/results?device_id={device}", headers=phi_app.sync_headers(rep))
        assert_503(r)
    with phi_app.state.engine.connect() as conn:   # the failed pull left no bookkeeping behind
        assert conn.execute(sa.select(DEVICES.c.served_cursor)
                            .where(DEVICES.c.device_id == device)).scalar_one() == served
    r = _pull(phi_app, rep, device)
    assert r.status_code == 200
    (result,) = r.get_json()["results"]
    assert result["row"]["patient_name"] == values["patient_name"]   # the device's own record, with its PHI
    entry = phi_app.entries(entity="prescription")[-1]
    assert (entry.action, entry.channel, entry.device, entry.actor) == ("read", "pull", device, "rep-1")
    assert entry.record_ids == (record_id,) and entry.fields == PHI
    assert entry.subjects == (ref(phi_app, values["patient_id"]),)
    # a duplicate push answers with the record too: audited as well
    _push(phi_app, rep, device, [_mutation(phi_app, 1, record_id, values)])
    entry = phi_app.entries(entity="prescription")[-1]
    assert (entry.action, entry.channel, entry.record_ids) == ("read", "push", (record_id,))
    assert phi_app.audit.verify().ok


# -- no PHI in the audit store -------------------------------------------------------------------

def test_the_audit_store_holds_no_phi_value(phi_app):
    rep = phi_app.rep_token("rep-1")
    device = phi_app.register(rep)
    written = [phi_app.prescription(patient_name="Ottoline Quibbleworth", diagnosis="Xylophone lung",
                                    patient_dob="1931-12-25"),
               phi_app.prescription(patient_name="Bartholomew Zedcastle", diagnosis="Quasar tremor",
                                    patient_dob="1944-02-29")]
    created = phi_app.ok("POST", "/prescription", rep, written[0])
    _push(phi_app, rep, device, [_mutation(phi_app, 1, str(uuid.uuid4()), written[1])])
    phi_app.state.sync.drain()
    phi_app.ok("GET", "/prescription", rep)
    assert _pull(phi_app, rep, device).status_code == 200
    reason = "Ottoline Quibbleworth collapsed at Zanzibarville market; ER needs her history"
    supervisor = phi_app.token("sup-1", "supervisor")
    r = phi_app.request("GET", f"/prescription/{created['id']}", supervisor,
                        headers={"X-Fieldsync-Break-Glass": reason})
    assert r.status_code == 200 and r.get_json()["diagnosis"] == "Xylophone lung"
    entries = phi_app.entries()
    assert {"create", "read"} <= {e.action for e in entries}
    assert any(e.purpose == "break-glass" and e.has_reason for e in entries)
    dump = _audit_tables_text(phi_app)
    assert "Quibbleworth" not in dump   # positive control below: the search does find stored text
    assert written[0]["patient_id"] not in dump
    assert ref(phi_app, written[0]["patient_id"]) in dump
    for values in written:
        for name in PHI:
            assert str(values[name]) not in dump, name
    for word in ("Ottoline", "Quibbleworth", "Zanzibarville", "collapsed"):
        assert word not in dump
    assert any(e.reason == reason for e in phi_app.audit.entries(decrypt_reasons=True))


def _audit_tables_text(phi) -> str:
    """Every column of every row of the audit tables, as the database hands them out."""
    parts = []
    with phi.state.engine.connect() as conn:
        for table in ("fs_audit_head", "fs_audit_entries", "fs_audit_checkpoints", "fs_audit_keys"):
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                parts.extend(v.hex() + repr(bytes(v)) if isinstance(v, (bytes, memoryview)) else str(v) for v in row)
    return "\n".join(parts)


# -- the channel of authentication on the sync API ----------------------------------------------

def test_a_session_started_on_a_sync_endpoint_is_audited_on_the_sync_channel(phi_app):
    rep = phi_app.token("rep-1", "field_rep")
    device = phi_app.register(rep)                       # the token's first use: registration
    other = phi_app.token("rep-2", "field_rep")
    r = phi_app.client.post("/api/v1/sync/pull", json={"device_id": device, "cursor": None},
                            headers=phi_app.sync_headers(other))   # another token's first use: a pull
    assert r.status_code not in (401, 429), r.get_json()   # authenticated (the session started) ...
    starts = [e for e in phi_app.entries() if e.detail.get("event") == "session_start" and e.actor != "admin-1"]
    assert {(e.actor, e.channel) for e in starts} == {("rep-1", "sync"), ("rep-2", "sync")}
    issued = [e for e in phi_app.entries() if e.detail.get("event") == "device_token_issued"]
    assert [e.channel for e in issued] == ["sync"]
