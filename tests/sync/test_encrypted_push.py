"""Pushes of encrypted entities through the applier (the listener's code path), on SQLite and
PostgreSQL, with a definition that lets field reps update their prescriptions: inserts and
updates are stored as ciphertext, an update to the same value is `unchanged` (ciphertexts
differ on every write, the values do not), and a change of patient moves the record's other
encrypted values to the new patient's key."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
import sqlalchemy as sa

from fieldsync.api import create_app
from fieldsync.defs import load_model
from fieldsync.crypto.fields import ciphertext_key_id
from fieldsync.store.changelog import CHANGES_TABLE, decode_row
from fieldsync.sync.apply import PushBatch
from fieldsync.sync.applier import MutationApplier

PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"
SAI = "2fd6ae15-929b-509f-9c04-01a819382ca2"


@pytest.fixture
def server(defs_copy, db_url, tmp_path):
    path = defs_copy / "transactions" / "prescription.yaml"
    text = path.read_text()
    assert "actions: [read, create]\n    row_filter" in text
    path.write_text(text.replace("actions: [read, create]\n    row_filter", "actions: [read, create, update]\n    row_filter"))
    model = load_model(defs_copy)
    app = create_app({"DATABASE_URL": db_url, "SECRET_KEY": "s", "DATA_DIR": str(tmp_path / "var"),
                      "SYNC_LISTENERS": 0}, model=model)
    state = app.extensions["fieldsync"]
    store = state.store
    territory = store.create("territory", {"id": PUNE, "code": "PN", "name": "Pune", "region": "west"})
    store.create("retailer", {"id": SAI, "name": "Sai", "territory_id": territory["id"]})
    product = store.create("product", {"sku": "P", "name": "P", "category": "pharma", "unit_price": "1.00"})
    yield state, product["id"]
    state.engine.dispose()


class Device:
    def __init__(self, state):
        self.state = state
        self.applier = MutationApplier(lambda: state.store)
        self.seq = 0
        self.id = str(uuid.uuid4())

    def push(self, *mutations) -> list[dict]:
        now = dt.datetime.now(dt.timezone.utc).isoformat()
        batch_mutations = []
        for op, record_id, fields, base in mutations:
            self.seq += 1
            m = {"seq": self.seq, "entity": "prescription", "op": op, "id": record_id, "fields": fields,
                 "client_time": now}
            if base is not None:
                m["base_version"] = base
            batch_mutations.append(m)
        batch = PushBatch(device_id=self.id, user_id="rep-1", role="field_rep",
                          attributes={"territory_ids": [PUNE]}, received_at=now, sent_at=now,
                          schema_version=self.state.model.schema_version, mutations=batch_mutations)
        return self.applier.apply_batch(batch)


def _raw(state, record_id):
    with state.engine.connect() as conn:
        return dict(conn.execute(sa.text("select * from prescription where id = :i"), {"i": record_id}).mappings().one())


def test_pushed_inserts_and_updates_are_encrypted_and_compared_by_value(server):
    state, product = server
    device = Device(state)
    rx = str(uuid.uuid4())
    patient = str(uuid.uuid4())
    fields = {"retailer_id": SAI, "territory_id": PUNE, "patient_id": patient, "patient_name": "Ravi Deshpande",
              "patient_dob": "1955-03-03", "diagnosis": "chronic obstructive pulmonary disease",
              "product_id": product, "prescribed_at": "2026-11-20T10:00:00Z"}
    [created] = device.push(("insert", rx, fields, None))
    assert created["status"] == "applied", created
    row = _raw(state, rx)
    assert row["diagnosis"].startswith("e1.") and "Ravi" not in json.dumps(row, default=str)

    [same] = device.push(("update", rx, {"diagnosis": fields["diagnosis"]}, 1))
    assert same["status"] == "applied" and same["effect"] == "unchanged", same
    assert _raw(state, rx)["diagnosis"] == row["diagnosis"]           # untouched

    [changed] = device.push(("update", rx, {"diagnosis": "COPD, exacerbation"}, 1))
    assert changed["effect"] == "changed", changed
    got = state.store.get("prescription", rx)
    assert got["diagnosis"] == "COPD, exacerbation" and got["patient_name"] == "Ravi Deshpande"
    with state.engine.connect() as conn:
        rows = [json.loads(r[0]) for r in conn.execute(sa.text(
            f"select row from {CHANGES_TABLE} where record_id = :i order by position"), {"i": rx})]
    entity = state.model.entity("prescription")
    assert [decode_row(entity, r, state.crypto)["diagnosis"] for r in rows] == \
           ["chronic obstructive pulmonary disease", "COPD, exacerbation"]
    assert all("COPD" not in json.dumps(r) for r in rows)

    # the record moves to another patient: its other values follow to that patient's key
    other = str(uuid.uuid4())
    old_kid = ciphertext_key_id(_raw(state, rx)["patient_name"])
    [moved] = device.push(("update", rx, {"patient_id": other}, 2))
    assert moved["effect"] == "changed", moved
    after = _raw(state, rx)
    assert ciphertext_key_id(after["patient_name"]) != old_kid
    assert ciphertext_key_id(after["patient_name"]) == ciphertext_key_id(after["diagnosis"])
    from fieldsync.crypto.rotation import shred_subject
    shred_subject(state.store, state.crypto, patient)                  # the first patient is shredded ...
    state.crypto.keyring.forget()
    kept = state.store.get("prescription", rx)                          # ... the moved record is not
    assert kept["patient_id"] == other and kept["diagnosis"] == "COPD, exacerbation"
    assert kept["patient_name"] == "Ravi Deshpande"


def test_an_update_naming_no_patient_is_keyed_by_the_stored_one(server):
    state, product = server
    device = Device(state)
    rx = str(uuid.uuid4())
    patient = str(uuid.uuid4())
    device.push(("insert", rx, {"retailer_id": SAI, "territory_id": PUNE, "patient_id": patient,
                                "patient_name": "Meera Nair", "patient_dob": "1990-09-09", "diagnosis": "asthma",
                                "product_id": product, "prescribed_at": "2026-11-20T10:00:00Z"}, None))
    from fieldsync.crypto.rotation import shred_subject
    shred_subject(state.store, state.crypto, patient)
    state.crypto.keyring.forget()
    # the patient's key is gone: the applier makes a new one before the batch transaction
    [updated] = device.push(("update", rx, {"diagnosis": "asthma, controlled"}, 1))
    assert updated["status"] == "applied" and updated["effect"] == "changed", updated
    got = state.store.get("prescription", rx)
    assert got["diagnosis"] == "asthma, controlled" and got["patient_name"] is None
