"""Break-glass reads: a role granted `break_glass` sees every field of a record, PHI included,
when it gives a reason; without a reason 400, without the grant 403; every attempt audited with
purpose "break-glass" and the reason stored encrypted. Row filters still apply."""

from __future__ import annotations

import sqlalchemy as sa
import yaml

from auth_support import AuthApp

PHI = ("patient_id", "patient_name", "patient_dob", "diagnosis")
HEADER = "X-Fieldsync-Break-Glass"
REASON = "pharmacist reports an adverse reaction for Jane Q. Marple; rep unreachable"


def _prescription(app: AuthApp, rep: str = "rep-asha") -> dict:
    return app.ok("POST", "/prescription", app.rep_token(rep), app.prescription())


def _break_glass_entries(app: AuthApp, decrypt: bool = False):
    return [e for e in app.audit.entries(decrypt_reasons=decrypt) if e.purpose == "break-glass"]


def test_a_granted_role_sees_phi_with_a_reason_and_the_read_is_audited(auth_app):
    app = auth_app
    created = _prescription(app)
    supervisor = app.token("sup-1", "supervisor")
    plain = app.ok("GET", f"/prescription/{created['id']}", supervisor)
    assert not set(PHI) & set(plain)                                   # hidden without break-glass
    assert _break_glass_entries(app) == []

    record = app.ok("GET", f"/prescription/{created['id']}", supervisor, headers={HEADER: REASON})
    assert {k: record[k] for k in PHI} == {k: created[k] for k in PHI}
    page = app.ok("GET", "/prescription", supervisor, headers={HEADER: REASON})
    assert page["items"][0]["diagnosis"] == "Chronic zebrafish allergy"

    entries = _break_glass_entries(app, decrypt=True)
    assert len(entries) == 2
    for entry in entries:
        assert (entry.action, entry.outcome, entry.actor, entry.role, entry.entity) == \
            ("read", "success", "sup-1", "supervisor", "prescription")
        assert entry.record_ids == (created["id"],) and set(entry.fields) == set(PHI)
        assert entry.reason == REASON and len(entry.subjects) == 1
        assert created["patient_id"] not in entry.subjects                  # a reference, not the value
    # the reason names a patient: it is stored encrypted, never in the clear
    with app.state.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM fs_audit_entries")).all()
    dump = repr(rows)
    assert "Marple" not in dump and "adverse reaction" not in dump and "zebrafish" not in dump


def test_without_a_reason_the_request_is_400_and_audited(lite_app):
    app = lite_app
    created = _prescription(app)
    supervisor = app.token("sup-1", "supervisor")
    for value in ("", "   ", "x" * 501):
        r = app.request("GET", f"/prescription/{created['id']}", supervisor, headers={HEADER: value})
        assert r.status_code == 400 and r.get_json()["type"].endswith("/break-glass-reason"), r.get_json()
        assert "diagnosis" not in r.get_data(as_text=True)
    refused = _break_glass_entries(app)
    assert len(refused) == 3 and {e.outcome for e in refused} == {"failure"}
    assert {e.detail["event"] for e in refused} == {"break_glass_refused"}


def test_without_the_grant_the_request_is_403_and_audited(lite_app):
    app = lite_app
    created = _prescription(app)
    analyst = app.token("ana-1", "analyst")
    r = app.request("GET", f"/prescription/{created['id']}", analyst, headers={HEADER: "curious"})
    assert r.status_code == 403 and r.get_json()["type"].endswith("/break-glass-not-granted")
    assert "Marple" not in r.get_data(as_text=True)
    [entry] = _break_glass_entries(app, decrypt=True)
    assert (entry.outcome, entry.actor, entry.role, entry.entity, entry.reason) == \
        ("denied", "ana-1", "analyst", "prescription", "curious")
    assert entry.record_ids == ()
    # a role without read access at all gets the ordinary 403 (no break-glass on entities it cannot read)
    r = app.request("GET", "/expense", app.token("ana-1", "analyst"), headers={HEADER: "curious"})
    assert r.status_code == 403


def test_break_glass_is_for_reads_only(lite_app):
    app = lite_app
    rep = app.rep_token()
    r = app.request("POST", "/prescription", rep, app.prescription(), headers={HEADER: "emergency"})
    assert r.status_code == 400 and "reads (GET) only" in r.get_json()["detail"]
    assert app.ok("GET", "/prescription", rep)["items"] == []        # nothing was written


def test_row_filters_still_apply_under_break_glass(make_app, defs_copy, example_model):
    path = defs_copy / "transactions" / "prescription.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["permissions"]["field_rep"]["visible"] = ["rep_id", "retailer_id", "territory_id", "product_id",
                                                  "dosage", "prescribed_at", "patient_id", "patient_name",
                                                  "patient_dob", "diagnosis"]
    doc["permissions"]["supervisor"]["row_filter"] = "territory_id == $user.region"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    from fieldsync.defs import load_model
    app = make_app(model=load_model(defs_copy))
    mine = _prescription(app)
    other_territory = app.ok("POST", "/territory", app.token("admin-1", "admin"),
                             {"code": "S-1", "name": "South", "region": "south"})
    bina = app.token("rep-bina", "field_rep", territory_ids=[other_territory["id"], app.territory["id"]])
    app.ok("POST", "/prescription", bina, app.prescription(territory_id=other_territory["id"]))
    supervisor = app.token("sup-1", "supervisor", region=app.territory["id"])
    page = app.ok("GET", "/prescription", supervisor, headers={HEADER: REASON})
    assert [r["id"] for r in page["items"]] == [mine["id"]] and page["items"][0]["diagnosis"]
    [entry] = _break_glass_entries(app)
    assert entry.record_ids == (mine["id"],)


def test_the_definition_language_grants_break_glass(example_model, defs_copy):
    from fieldsync.defs import DefinitionErrors, load_model
    prescription = example_model.entity("prescription")
    assert prescription.permission("supervisor").break_glass is True
    assert prescription.permission("analyst").break_glass is False
    path = defs_copy / "transactions" / "prescription.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["permissions"]["admin"] = {"actions": ["delete"], "break_glass": True}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    try:
        load_model(defs_copy)
    except DefinitionErrors as exc:
        assert any("break_glass widens reads" in str(e) for e in exc.errors), exc.errors
    else:
        raise AssertionError("break_glass without read was accepted")
