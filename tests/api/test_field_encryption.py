"""Field-level encryption of the example prescriptions through the REST API, on SQLite and
PostgreSQL: ciphertext at rest (records and change log), bound to its row and field, searchable
where the definition says so, per-patient keys, and tampering detected (invariant 7)."""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import sqlalchemy as sa

from fieldsync.crypto.fields import ciphertext_key_id
from fieldsync.store.changelog import CHANGES_TABLE

PHI = ("patient_name", "patient_dob", "diagnosis", "patient_id")


def _prescription(world, **overrides):
    body = {"retailer_id": world["r_north"]["id"], "territory_id": world["north"]["id"],
            "patient_id": str(uuid.uuid4()), "patient_name": "Asha Kulkarni", "patient_dob": "1961-04-12",
            "diagnosis": "Type 2 diabetes with early nephropathy", "product_id": world["pill"]["id"],
            "dosage": "500 mg twice daily", "prescribed_at": "2026-11-20T10:00:00Z"}
    body.update(overrides)
    return body


@pytest.fixture
def rep(api, world):
    return api.as_user("rep-1", "field_rep", territory_ids=[world["north"]["id"]])


@pytest.fixture
def compliance(api):
    return api.as_user("officer-1", "compliance")


def _raw_row(app, record_id):
    engine = app.extensions["fieldsync"].engine
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("select * from prescription where id = :id"), {"id": record_id})
                    .mappings().one())


def _raw_changes(app) -> str:
    engine = app.extensions["fieldsync"].engine
    with engine.connect() as conn:
        return "\n".join(f"{r[0]}\n{r[1] or ''}" for r in conn.execute(
            sa.text(f"select row, prev from {CHANGES_TABLE} where entity = 'prescription'")))


def _set_raw(app, record_id, **values):
    engine = app.extensions["fieldsync"].engine
    sets = ", ".join(f"{k} = :{k}" for k in values)
    with engine.begin() as conn:
        conn.execute(sa.text(f"update prescription set {sets} where id = :id"), {"id": record_id, **values})


def test_prescription_phi_is_ciphertext_in_the_table_and_the_change_log(app, world, rep):
    body = _prescription(world)
    created = rep.ok("POST", "/prescription", body)
    assert {k: created[k] for k in PHI} == {k: body[k] for k in PHI}      # the writer gets its values back
    row = _raw_row(app, created["id"])
    assert row["patient_id"].startswith("d1.")                              # deterministic (lookups)
    for name in ("patient_name", "patient_dob", "diagnosis"):
        assert row[name].startswith("e1."), (name, row[name][:8])
        assert ciphertext_key_id(row[name])
    assert len(row["fs_bidx_patient_name"]) == 32
    raw = json.dumps({k: str(v) for k, v in row.items()}) + _raw_changes(app)
    for name in PHI:
        assert str(body[name]) not in raw, name
    assert "Asha" not in raw and "nephropathy" not in raw
    again = rep.ok("GET", f"/prescription/{created['id']}")
    assert {k: again[k] for k in PHI} == {k: body[k] for k in PHI}


def test_roles_without_the_right_never_see_phi(app, world, rep, api):
    created = rep.ok("POST", "/prescription", _prescription(world))
    as_admin = api.ok("GET", f"/prescription/{created['id']}")
    assert not set(PHI) & set(as_admin) and "dosage" not in as_admin
    assert as_admin["prescribed_at"] == created["prescribed_at"]
    analyst = api.as_user("ana-1", "analyst").ok("GET", "/prescription")
    assert analyst["items"] and all(not set(PHI) & set(item) for item in analyst["items"])


def test_a_ciphertext_moved_to_another_row_or_field_or_altered_does_not_decrypt(app, world, rep):
    a = rep.ok("POST", "/prescription", _prescription(world, diagnosis="Asthma"))
    b = rep.ok("POST", "/prescription", _prescription(world, diagnosis="Migraine"))
    row_a, row_b = _raw_row(app, a["id"]), _raw_row(app, b["id"])

    # swap the diagnoses of two rows: each fails, naming field and record, never a value
    _set_raw(app, a["id"], diagnosis=row_b["diagnosis"])
    r = rep.get(f"/prescription/{a['id']}")
    assert r.status_code == 500 and r.get_json()["type"].endswith("/integrity-failure")
    detail = r.get_json()["detail"]
    assert "prescription.diagnosis" in detail and a["id"] in detail and "Migraine" not in detail
    _set_raw(app, a["id"], diagnosis=row_a["diagnosis"])
    assert rep.ok("GET", f"/prescription/{a['id']}")["diagnosis"] == "Asthma"

    # the same row's ciphertext moved into another field
    _set_raw(app, a["id"], patient_dob=row_a["diagnosis"])
    assert rep.get(f"/prescription/{a['id']}").status_code == 500
    _set_raw(app, a["id"], patient_dob=row_a["patient_dob"])

    # one bit flipped in the ciphertext body
    prefix, kid, body = row_a["diagnosis"].split(".", 2)
    data = bytearray(base64.b64decode(body, validate=True))
    data[len(data) // 2] ^= 0x01
    flipped = f"{prefix}.{kid}." + base64.b64encode(bytes(data)).decode()
    _set_raw(app, a["id"], diagnosis=flipped)
    assert rep.get(f"/prescription/{a['id']}").status_code == 500

    # a plaintext written straight into the column is refused too (no silent "legacy" read)
    _set_raw(app, a["id"], diagnosis="Asthma")
    assert rep.get(f"/prescription/{a['id']}").status_code == 500


def test_equality_search_on_deterministic_and_blind_indexed_fields(app, world, rep, compliance):
    patient = str(uuid.uuid4())
    first = rep.ok("POST", "/prescription", _prescription(world, patient_id=patient, patient_name="Jane Doe"))
    second = rep.ok("POST", "/prescription", _prescription(world, patient_id=patient, patient_name="Jane Doe"))
    rep.ok("POST", "/prescription", _prescription(world, patient_name="John Roe"))
    found = compliance.ok("GET", f"/prescription?patient_id={patient}")
    assert sorted(i["id"] for i in found["items"]) == sorted([first["id"], second["id"]])
    # a blind index matches the normalised value: case and spacing do not matter
    by_name = compliance.ok("GET", "/prescription?patient_name=jane%20%20DOE")
    assert sorted(i["id"] for i in by_name["items"]) == sorted([first["id"], second["id"]])
    both = compliance.ok("GET", "/prescription?patient_name__in=Jane%20Doe,John%20Roe")
    assert len(both["items"]) == 3
    # ciphertexts have no order and encrypt-mode fields cannot be searched
    assert compliance.get("/prescription?patient_name__gte=A").status_code == 400
    assert compliance.get("/prescription?sort=patient_name").status_code == 400
    assert compliance.get("/prescription?diagnosis=Asthma").status_code == 400
    # the row filter of field_rep still applies to a search
    other = rep.as_user("rep-2", "field_rep", territory_ids=[])
    assert other.ok("GET", f"/prescription?patient_id={patient}")["items"] == []


def test_each_patient_has_its_own_key(app, world, rep):
    a = rep.ok("POST", "/prescription", _prescription(world))
    b = rep.ok("POST", "/prescription", _prescription(world))
    a2 = rep.ok("POST", "/prescription", _prescription(world, patient_id=a["patient_id"]))
    kid = lambda rec, f: ciphertext_key_id(_raw_row(app, rec["id"])[f])
    assert kid(a, "diagnosis") == kid(a2, "diagnosis") == kid(a, "patient_name")
    assert kid(a, "diagnosis") != kid(b, "diagnosis")
    # the patient id itself is under the entity key: one key for every row, so it can be searched
    assert kid(a, "patient_id") == kid(b, "patient_id")


def test_changing_the_patient_moves_the_values_to_the_new_patients_key(app, world, compliance):
    from fieldsync.crypto.rotation import shred_subject
    state = app.extensions["fieldsync"]
    store = state.store
    created = store.create("prescription", _prescription(world, rep_id="rep-1"))
    old_patient, new_patient = created["patient_id"], str(uuid.uuid4())
    store.update("prescription", created["id"], {"patient_id": new_patient}, expected_version=1)
    shred_subject(store, state.crypto, old_patient)        # the old patient's key is gone ...
    after = store.get("prescription", created["id"])
    assert after["diagnosis"] == created["diagnosis"] and after["patient_name"] == created["patient_name"]


def test_shredding_one_patient_leaves_the_others_readable(app, world, rep, compliance):
    from fieldsync.crypto.rotation import shred_subject
    state = app.extensions["fieldsync"]
    gone = rep.ok("POST", "/prescription", _prescription(world, patient_name="Gone Patient"))
    kept = rep.ok("POST", "/prescription", _prescription(world, patient_name="Kept Patient"))
    destroyed = shred_subject(state.store, state.crypto, gone["patient_id"])
    assert len(destroyed) == 1
    state.crypto.keyring.forget()
    after = compliance.ok("GET", f"/prescription/{gone['id']}")
    assert after["diagnosis"] is None and after["patient_name"] is None and after["patient_dob"] is None
    assert after["dosage"] == gone["dosage"] and after["patient_id"] == gone["patient_id"]
    assert compliance.ok("GET", f"/prescription/{kept['id']}")["diagnosis"] == kept["diagnosis"]
    assert compliance.ok("GET", "/prescription?patient_name=Gone%20Patient")["items"] == []
    assert len(compliance.ok("GET", "/prescription?patient_name=Kept%20Patient")["items"]) == 1
    with state.engine.connect() as conn:
        state_row = conn.execute(sa.text("select state, wrapped from fs_data_keys where kid = :k"),
                                 {"k": destroyed[0]}).one()
    assert state_row[0] == "destroyed" and state_row[1] is None
    # a new prescription for the shredded patient gets a new key and is readable
    again = rep.ok("POST", "/prescription", _prescription(world, patient_id=gone["patient_id"]))
    assert compliance.ok("GET", f"/prescription/{again['id']}")["diagnosis"] == again["diagnosis"]


def test_a_write_racing_a_shred_makes_the_patients_next_key(app, world, rep, compliance):
    """The patient's key destroyed after the write made sure of it and before its transaction:
    the write goes again with a new key instead of failing."""
    from fieldsync.crypto.rotation import shred_subject
    state = app.extensions["fieldsync"]
    crypto = state.crypto
    original = crypto.ensure_subjects
    patient = str(uuid.uuid4())
    rep.ok("POST", "/prescription", _prescription(world, patient_id=patient))
    shredded = []

    def ensure_then_shred(entity, values):
        original(entity, values)
        if not shredded:
            shredded.append(shred_subject(state.store, crypto, patient))

    crypto.ensure_subjects = ensure_then_shred
    try:
        created = rep.ok("POST", "/prescription", _prescription(world, patient_id=patient, diagnosis="Gout"))
    finally:
        crypto.ensure_subjects = original
    assert shredded and shredded[0]
    assert compliance.ok("GET", f"/prescription/{created['id']}")["diagnosis"] == "Gout"
