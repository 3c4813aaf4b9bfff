"""The admin UI's keys page (admin/fieldsync_admin/keys.py): who sees it (admin acts,
compliance reads), the key list without material, a rotation re-encrypting in the background
until done, shredding a subject or an entity behind a typed confirmation, all audited as the
CLI audits (action "key"), and a POST without the CSRF token refused."""

from __future__ import annotations

import json
import re
import uuid

import pytest
import sqlalchemy as sa

from fieldsync.crypto.fields import ciphertext_key_id
from fieldsync_admin.keys import rotation_jobs
from tests.admin.conftest import AdminClient

# most tests run on SQLite; the two whose SQL differs most (the re-encryption scan, shredding
# by blind index) run on PostgreSQL as well
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

PAGE = "/admin/keys/"


def prescriptions(app, patients: list[str]) -> list[dict]:
    """One prescription per patient in `patients`, written through the record store."""
    store = app.extensions["fieldsync"].store
    territory = store.create("territory", {"code": "N-1", "name": "North", "region": "north"})
    retailer = store.create("retailer", {"name": "Shop N", "territory_id": territory["id"]})
    product = store.create("product", {"sku": "PILL", "name": "Pill", "category": "pharma", "unit_price": "2.50"})
    return [store.create("prescription", {
        "rep_id": "rep-1", "retailer_id": retailer["id"], "territory_id": territory["id"], "patient_id": patient,
        "patient_name": f"Patient {n}", "patient_dob": "1970-01-02", "diagnosis": f"Condition number {n}",
        "product_id": product["id"], "prescribed_at": "2026-11-20T10:00:00Z"}) for n, patient in enumerate(patients)]


def key_events(app, event: str) -> list:
    return [e for e in app.extensions["fieldsync"].audit.entries()
            if e.action == "key" and e.detail.get("event") == event]


def kids_in_rows(app) -> set[str]:
    with app.extensions["fieldsync"].engine.connect() as conn:
        return {ciphertext_key_id(v) for row in conn.execute(sa.text(
            "select patient_id, patient_name, patient_dob, diagnosis from prescription")) for v in row if v}


# -- who sees what --------------------------------------------------------------------------------

@sqlite_only
def test_admin_acts_compliance_reads_analyst_is_refused(admin_app, browser_as):
    admin = browser_as("admin")
    page = admin.text(admin.get(PAGE))
    assert 'id="fs-rotate"' in page and 'id="fs-shred-subject"' in page and 'id="fs-shred-entity"' in page
    compliance = browser_as("compliance")
    answer = compliance.get(PAGE)
    assert answer.status_code == 200
    read_only = compliance.text(answer)
    assert 'id="fs-keys-read-only"' in read_only and "entity:prescription" in read_only
    assert 'id="fs-rotate"' not in read_only and 'id="fs-shred-subject"' not in read_only
    assert compliance.get(PAGE + "progress").status_code == 200
    for path, form in (("rotate", {"entity": ""}), ("shred-entity", {"entity": "prescription", "confirm": "prescription",
                                                                      "reason": "r"})):
        assert compliance.post(PAGE + path, form).status_code == 403
    analyst = browser_as("analyst")
    assert analyst.get(PAGE).status_code == 403 and analyst.get(PAGE + "progress").status_code == 403
    assert analyst.post(PAGE + "rotate", {"entity": ""}).status_code == 403
    anonymous = AdminClient(admin_app).get(PAGE)
    assert anonymous.status_code == 302 and "/admin/login" in anonymous.headers["Location"]
    assert key_events(admin_app, "rotate") == [] and key_events(admin_app, "shred-entity") == []


@sqlite_only
def test_the_list_shows_scopes_states_and_providers_but_never_material_or_patients(admin_app, browser_as):
    patient = str(uuid.uuid4())
    prescriptions(admin_app, [patient])
    client = browser_as("admin")
    page = client.text(client.get(PAGE))
    state = admin_app.extensions["fieldsync"]
    keys = list(state.crypto.keyring.describe())
    assert keys and all(f'<code>{k["kid"]}</code>' in page for k in keys)
    ref = state.crypto.subject_ref(patient)
    assert f'data-scope="subject:prescription:{ref}" data-state="active"' in page
    assert re.search(r'data-scope="entity:prescription" data-state="active"', page) and ">local<" in page
    assert patient not in page
    with state.engine.connect() as conn:
        wrapped = [r[0] for r in conn.execute(sa.text("select wrapped from fs_data_keys"))]
    import base64
    for material in wrapped:
        as_bytes = material if isinstance(material, bytes) else str(material).encode()
        assert base64.b64encode(as_bytes).decode()[:16] not in page and as_bytes.hex()[:16] not in page


# -- rotation -------------------------------------------------------------------------------------

def test_rotation_re_encrypts_in_the_background_until_done(admin_app, browser_as):
    records = prescriptions(admin_app, [str(uuid.uuid4()) for _ in range(3)])
    state = admin_app.extensions["fieldsync"]
    before = kids_in_rows(admin_app)
    client = browser_as("admin")
    answer = client.post(PAGE + "rotate", {"entity": "prescription"})
    assert answer.status_code == 303
    job = rotation_jobs(state).latest()
    assert job is not None and job.wait(60)
    progress = json.loads(client.text(client.get(PAGE + "progress")))
    assert progress["running"] is False
    [shown] = progress["jobs"]
    # 3 rows x 4 encrypted fields were under the old keys; all re-encrypted, none left
    assert (shown["state"], shown["entity"], shown["values_total"], shown["values_reencrypted"],
            shown["values_remaining"], shown["percent"]) == ("done", "prescription", 12, 12, 0, 100)
    assert shown["rows"] == 3 and shown["started_by"] == "ada-admin"
    after = kids_in_rows(admin_app)
    assert after and not after & before                                  # nothing under the old keys
    for record in records:                                                # and every value reads back
        assert state.store.get("prescription", record["id"])["diagnosis"] == record["diagnosis"]
    page = client.text(client.get(PAGE))
    assert re.search(r"\d+ key\(s\) rotated for prescription; re-encrypting in the background", page)
    assert f'id="fs-rotation-{job.id}" data-state="done"' in page
    [rotated] = key_events(admin_app, "rotate")
    assert (rotated.actor, rotated.channel, rotated.entity, rotated.detail["keys"]) == \
           ("ada-admin", "admin", "prescription", shown["keys_rotated"])
    [pass_event] = [e for e in key_events(admin_app, "reencrypt") if e.actor == "ada-admin"]
    assert pass_event.detail["rows"] == 3 and pass_event.detail["job"] == job.id


@sqlite_only
def test_rotating_every_entity_and_a_bad_entity(admin_app, browser_as):
    prescriptions(admin_app, [str(uuid.uuid4())])
    state = admin_app.extensions["fieldsync"]
    client = browser_as("admin")
    for bad in ("territory", "nosuch", "\x00"):
        assert client.post(PAGE + "rotate", {"entity": bad}).status_code == 303
        assert "is not an entity with encrypted fields" in client.text(client.get(PAGE))
    assert rotation_jobs(state).latest() is None and key_events(admin_app, "rotate") == []
    assert client.post(PAGE + "rotate", {"entity": ""}).status_code == 303
    job = rotation_jobs(state).latest()
    assert job.wait(60) and job.progress()["state"] == "done" and job.entity is None
    assert key_events(admin_app, "rotate")[0].entity is None


@sqlite_only
def test_a_second_rotation_waits_for_the_running_one(admin_app, browser_as, monkeypatch):
    import threading
    from fieldsync_admin import keys as keys_module
    release = threading.Event()
    real = keys_module.values_under_retired_keys

    def slow(*args, **kwargs):
        assert release.wait(60)
        return real(*args, **kwargs)
    monkeypatch.setattr(keys_module, "values_under_retired_keys", slow)
    client = browser_as("admin")
    client.post(PAGE + "rotate", {"entity": "prescription"})
    job = rotation_jobs(admin_app.extensions["fieldsync"]).latest()
    assert job.progress()["state"] == "counting" and 'data-running="true"' in client.text(client.get(PAGE))
    assert 'src="/admin/assets/keys.js"' in client.text(client.get(PAGE))
    client.post(PAGE + "rotate", {"entity": "prescription"})
    assert "a rotation is still re-encrypting" in client.text(client.get(PAGE))
    release.set()
    assert job.wait(60) and len(key_events(admin_app, "rotate")) == 1


# -- shredding ------------------------------------------------------------------------------------

def test_shredding_a_subject_makes_only_its_values_unreadable(admin_app, browser_as):
    gone, kept = str(uuid.uuid4()), str(uuid.uuid4())
    lost, still = prescriptions(admin_app, [gone, kept])
    state = admin_app.extensions["fieldsync"]
    client = browser_as("admin")
    answer = client.post(PAGE + "shred-subject", {"entity": "", "subject": gone, "confirm": gone,
                                                   "reason": "erasure request 17"})
    assert answer.status_code == 303
    ref = state.crypto.subject_ref(gone)
    page = client.text(client.get(PAGE))
    assert f"key(s) of subject {ref} destroyed" in page and gone not in page
    got = state.store.get("prescription", lost["id"])
    assert (got["diagnosis"], got["patient_name"], got["patient_dob"]) == (None, None, None)
    assert got["prescribed_at"] == lost["prescribed_at"]
    other = state.store.get("prescription", still["id"])
    assert (other["diagnosis"], other["patient_name"]) == (still["diagnosis"], still["patient_name"])
    [event] = key_events(admin_app, "shred-subject")
    assert (event.actor, event.channel, event.subjects, event.detail["destroyed"]) == \
           ("ada-admin", "admin", (ref,), event.detail["destroyed"]) and event.detail["destroyed"]
    assert gone not in json.dumps([e.detail for e in state.audit.entries()], default=str)


@sqlite_only
def test_shredding_an_entity_makes_all_its_values_unreadable(admin_app, browser_as):
    records = prescriptions(admin_app, [str(uuid.uuid4()), str(uuid.uuid4())])
    state = admin_app.extensions["fieldsync"]
    client = browser_as("admin")
    answer = client.post(PAGE + "shred-entity", {"entity": "prescription", "confirm": "prescription",
                                                  "reason": "test data set withdrawn"})
    assert answer.status_code == 303
    assert "of prescription destroyed" in client.text(client.get(PAGE))
    for record in records:
        got = state.store.get("prescription", record["id"])
        assert got["diagnosis"] is None and got["patient_dob"] is None and got["rep_id"] == "rep-1"
    [event] = key_events(admin_app, "shred-entity")
    assert (event.entity, event.actor, event.detail["destroyed"] != []) == ("prescription", "ada-admin", True)
    assert not [k for k in state.crypto.keyring.describe()
                if k["scope"] in ("entity:prescription", "index:prescription") and k["state"] != "destroyed"]


@sqlite_only
@pytest.mark.parametrize("path, form, message", [
    ("shred-subject", {"subject": "S", "confirm": "s", "reason": "r"}, "the confirmation does not match the subject"),
    ("shred-subject", {"subject": "S", "confirm": "", "reason": "r"}, "the confirmation does not match the subject"),
    ("shred-subject", {"subject": "", "confirm": "", "reason": "r"}, "type the subject"),
    ("shred-subject", {"subject": "S", "confirm": "S", "reason": ""}, "give a reason"),
    ("shred-subject", {"subject": "S", "confirm": "S", "reason": "r" * 501}, "the reason must be at most"),
    ("shred-subject", {"entity": "territory", "subject": "S", "confirm": "S", "reason": "r"}, "names no encryption subject"),
    ("shred-subject", {"subject": "S\x00", "confirm": "S\x00", "reason": "r"}, "characters of text"),
    ("shred-entity", {"entity": "prescription", "confirm": "Prescription", "reason": "r"},
     "the confirmation does not match the entity"),
    ("shred-entity", {"entity": "prescription", "confirm": "visit", "reason": "r"}, "the confirmation does not match"),
    ("shred-entity", {"entity": "prescription", "confirm": "prescription", "reason": "   "}, "give a reason"),
    ("shred-entity", {"entity": "territory", "confirm": "territory", "reason": "r"}, "is not an entity with encrypted"),
    ("shred-entity", {"confirm": "", "reason": "r"}, "choose an entity"),
])
def test_a_shred_with_a_wrong_confirmation_or_no_reason_is_refused(admin_app, browser_as, path, form, message):
    patient = str(uuid.uuid4())
    [record] = prescriptions(admin_app, [patient])
    form = {k: (patient if v == "S" else v.replace("S", patient)) for k, v in form.items()} \
        if "subject" in form else form
    client = browser_as("admin")
    before = list(admin_app.extensions["fieldsync"].crypto.keyring.describe())
    answer = client.post(PAGE + path, form)
    assert answer.status_code == 303
    assert message in client.text(client.get(PAGE))
    state = admin_app.extensions["fieldsync"]
    assert list(state.crypto.keyring.describe()) == before
    assert state.store.get("prescription", record["id"])["diagnosis"] == record["diagnosis"]
    assert key_events(admin_app, "shred-subject") == [] and key_events(admin_app, "shred-entity") == []


@sqlite_only
def test_an_unknown_subject_destroys_nothing_and_says_so(admin_app, browser_as):
    prescriptions(admin_app, [str(uuid.uuid4())])
    client = browser_as("admin")
    client.post(PAGE + "shred-subject", {"subject": "no-such-patient", "confirm": "no-such-patient", "reason": "r"})
    assert "had no keys" in client.text(client.get(PAGE))
    [event] = key_events(admin_app, "shred-subject")
    assert event.detail["destroyed"] == []


@sqlite_only
def test_a_post_without_the_csrf_token_is_refused(admin_app, browser_as):
    [record] = prescriptions(admin_app, [str(uuid.uuid4())])
    client = browser_as("admin")
    form = {"entity": "prescription", "confirm": "prescription", "reason": "r"}
    assert client.post(PAGE + "shred-entity", form, csrf=False).status_code == 400
    assert client.post(PAGE + "shred-entity", {**form, "csrf_token": "forged"}, csrf=False).status_code == 400
    assert client.post(PAGE + "rotate", {"entity": ""}, csrf=False).status_code == 400
    state = admin_app.extensions["fieldsync"]
    assert state.store.get("prescription", record["id"])["diagnosis"] == record["diagnosis"]
    assert rotation_jobs(state).latest() is None and key_events(admin_app, "shred-entity") == []


def test_the_overview_counts_every_subject_key_but_lists_only_the_first(example_model):
    """A subject key per patient: the page counts them all in one streamed pass and lists the
    first SUBJECT_KEYS_SHOWN, with every entity, index and reference key."""
    from fieldsync_admin.keys import key_overview

    def key(kid, scope, state="active", version=1):
        return {"kid": kid, "scope": scope, "version": version, "state": state, "provider": "local",
                "created_at": None, "retired_at": None, "destroyed_at": None}
    keys = [key("e1", "entity:prescription", "retired"), key("e2", "entity:prescription", version=2),
            key("i1", "index:prescription"), key("r1", "subject-ref")] + \
           [key(f"s{n}", f"subject:prescription:sr_{n:032x}", "destroyed" if n == 0 else "active") for n in range(5)]
    overview, listed, total, subjects = key_overview(iter(keys), example_model, subject_keys_shown=2)
    [prescription] = [o for o in overview if o["entity"] == "prescription"]
    assert [k["kid"] for k in prescription["active"]] == ["e2", "i1"] and prescription["retired"] == 1
    assert prescription["subjects"] == {"destroyed": 1, "active": 4}
    assert [k["kid"] for k in listed] == ["e1", "e2", "i1", "r1", "s0", "s1"] and (total, subjects) == (9, 5)


@sqlite_only
def test_a_failed_pass_is_shown_not_hidden(admin_app, browser_as, monkeypatch):
    from fieldsync_admin import keys as keys_module

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(keys_module, "reencrypt", broken)
    prescriptions(admin_app, [str(uuid.uuid4())])
    client = browser_as("admin")
    client.post(PAGE + "rotate", {"entity": "prescription"})
    job = rotation_jobs(admin_app.extensions["fieldsync"]).latest()
    assert job.wait(60)
    page = client.get(PAGE)
    assert page.status_code == 200
    assert f'id="fs-rotation-{job.id}" data-state="failed"' in client.text(page)
    assert "RuntimeError (see the server log)" in client.text(page) and "disk on fire" not in client.text(page)
    assert key_events(admin_app, "reencrypt") == [] and len(key_events(admin_app, "rotate")) == 1
