"""Field-level encryption with KEY_PROVIDER=kms: the prescriptions' data keys are generated and
unwrapped by AWS KMS (moto in server mode, real HTTP) with an encryption context of references
only, and a server restarted on the same database reads them back."""

from __future__ import annotations

import json
import uuid

import sqlalchemy as sa

from fieldsync.api import create_app
from fieldsync.auth import issue_token

SECRET = "kms-field-secret"


def _app(tmp_path, url, kms_key, moto_endpoint, example_model):
    return create_app({"DATABASE_URL": url, "SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path / "var"),
                       "KEY_PROVIDER": "kms", "KMS_KEY_ID": kms_key["Arn"], "KMS_ENDPOINT_URL": moto_endpoint,
                       "SYNC_LISTENERS": 0}, model=example_model)


def test_prescriptions_are_encrypted_under_kms_wrapped_data_keys(tmp_path, kms, kms_key, moto_endpoint,
                                                                 example_model, aws_credentials):
    url = f"sqlite:///{tmp_path / 'server.db'}"
    assert kms.describe_key(KeyId=kms_key["KeyId"])["KeyMetadata"]["Enabled"]
    app = _app(tmp_path, url, kms_key, moto_endpoint, example_model)
    client = app.test_client()
    admin = {"Authorization": "Bearer " + issue_token(SECRET, "admin-1", "admin", {}, ttl=3600)}
    territory = client.post("/api/v1/territory", json={"code": "N", "name": "N", "region": "north"}, headers=admin).get_json()
    # the rep works in the territory: a prescription may name only records its rep reads
    rep = {"Authorization": "Bearer " + issue_token(SECRET, "rep-1", "field_rep", {"territory_ids": [territory["id"]]},
                                                    ttl=3600)}
    retailer = client.post("/api/v1/retailer", json={"name": "R", "territory_id": territory["id"]}, headers=admin).get_json()
    product = client.post("/api/v1/product", json={"sku": "P", "name": "P", "category": "pharma", "unit_price": "1.00"},
                          headers=admin).get_json()
    body = {"retailer_id": retailer["id"], "territory_id": territory["id"], "patient_id": str(uuid.uuid4()),
            "patient_name": "Farida Bhattacharya", "patient_dob": "1950-02-02", "diagnosis": "atrial fibrillation",
            "product_id": product["id"], "prescribed_at": "2026-11-20T10:00:00Z"}
    created = client.post("/api/v1/prescription", json=body, headers=rep)
    assert created.status_code == 201, created.get_json()
    record_id = created.get_json()["id"]
    engine = app.extensions["fieldsync"].engine
    with engine.connect() as conn:
        keys = conn.execute(sa.text("select scope, provider, wrapped from fs_data_keys where state = 'active'")).all()
    assert keys and {k.provider for k in keys} == {"kms"}
    assert all(bytes(k.wrapped).startswith(b"K1") for k in keys)
    assert any(k.scope.startswith("subject:prescription:") for k in keys)
    assert "Farida" not in json.dumps([k.scope for k in keys])       # scopes hold references only
    engine.dispose()

    again = _app(tmp_path, url, kms_key, moto_endpoint, example_model)   # a restarted server
    try:
        got = again.test_client().get(f"/api/v1/prescription/{record_id}", headers=rep).get_json()
        assert got["diagnosis"] == "atrial fibrillation" and got["patient_name"] == "Farida Bhattacharya"
    finally:
        again.extensions["fieldsync"].engine.dispose()
