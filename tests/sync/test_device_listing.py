"""What admins see of devices: GET /api/v1/sync/devices and `fieldsync devices` show the schema
and app version a device last synced with, and the admin endpoints need no Fieldsync-Protocol
header (they are not the device protocol)."""

from __future__ import annotations

import json

import pytest

from fieldsync.api import create_app
from fieldsync.auth.tokens import issue_token
from fieldsync.cli import main

SECRET = "k" * 32
PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"


@pytest.fixture
def upgraded_defs(defs_copy):
    app_yaml = defs_copy / "app.yaml"
    app_yaml.write_text(app_yaml.read_text().replace("schema_version: 1", "schema_version: 2"))
    return defs_copy


@pytest.fixture
def app(db_url, tmp_path, upgraded_defs):
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                      "DATABASE_URL": db_url, "DEFS_DIR": str(upgraded_defs)})
    yield app
    app.extensions["fieldsync"].engine.dispose()


def _headers(token, protocol=True):
    return {"Authorization": "Bearer " + token, **({"Fieldsync-Protocol": "1"} if protocol else {})}


def test_admin_device_endpoints_need_no_protocol_header(app):
    client = app.test_client()
    rep = issue_token(SECRET, "rep-asha", "field_rep", {"territory_ids": [PUNE_CENTRAL]})
    admin = issue_token(SECRET, "admin-meera", "admin", {})
    device = client.post("/api/v1/sync/devices", json={"install_id": "i-1", "schema_version": 1},
                         headers=_headers(rep)).json["device_id"]
    listed = client.get("/api/v1/sync/devices", headers=_headers(admin, protocol=False))
    assert listed.status_code == 200, listed.json
    assert [d["device_id"] for d in listed.json["items"]] == [device]
    one = client.get(f"/api/v1/sync/devices/{device}", headers=_headers(admin, protocol=False))
    assert one.status_code == 200 and one.json["device_id"] == device
    revoked = client.post(f"/api/v1/sync/devices/{device}/revoke", json={"reason": "lost"},
                          headers=_headers(admin, protocol=False))
    assert revoked.status_code == 200 and revoked.json["status"] == "revoked"
    # a version the server does not speak is still refused where the header is sent
    wrong = client.get("/api/v1/sync/devices", headers={**_headers(admin), "Fieldsync-Protocol": "99"})
    assert wrong.status_code == 400
    # the device protocol itself still needs it
    pull = client.post("/api/v1/sync/pull", json={"device_id": device, "schema_version": 2, "cursor": 0},
                       headers=_headers(rep, protocol=False))
    assert pull.status_code == 400 and pull.json["type"].endswith("protocol-unsupported")


def test_devices_show_the_versions_of_the_last_sync(app, db_url, tmp_path, capsys):
    client = app.test_client()
    rep = issue_token(SECRET, "rep-asha", "field_rep", {"territory_ids": [PUNE_CENTRAL]})
    admin = issue_token(SECRET, "admin-meera", "admin", {})
    device = client.post("/api/v1/sync/devices", headers=_headers(rep),
                         json={"install_id": "i-1", "schema_version": 1, "app_version": "1.0.0"}).json["device_id"]
    # the app is upgraded: the device migrated its store to schema 2 and syncs with it
    r = client.post("/api/v1/sync/pull", headers=_headers(rep),
                    json={"device_id": device, "schema_version": 2, "app_version": "1.1.0", "cursor": 0})
    assert r.status_code == 200, r.json
    status = client.get(f"/api/v1/sync/devices/{device}", headers=_headers(admin)).json
    assert (status["schema_version"], status["app_version"]) == (2, "1.1.0")
    r = client.post("/api/v1/sync/push", headers=_headers(rep),
                    json={"device_id": device, "schema_version": 2, "app_version": "1.2.0", "mutations": []})
    assert r.status_code == 202, r.json
    status = client.get(f"/api/v1/sync/devices/{device}", headers=_headers(admin)).json
    assert (status["schema_version"], status["app_version"]) == (2, "1.2.0")
    # a push or pull that does not name its app version keeps the one known
    r = client.post("/api/v1/sync/pull", headers=_headers(rep), json={"device_id": device, "schema_version": 2})
    assert r.status_code == 200, r.json
    assert client.get(f"/api/v1/sync/devices/{device}", headers=_headers(admin)).json["app_version"] == "1.2.0"
    bad = client.post("/api/v1/sync/pull", headers=_headers(rep),
                      json={"device_id": device, "schema_version": 2, "app_version": "x" * 65})
    assert bad.status_code == 400

    capsys.readouterr()
    assert main(["devices", "--database-url", db_url, "--data-dir", str(tmp_path / "data"), "--json"]) == 0
    item, = json.loads(capsys.readouterr().out)["items"]
    assert (item["schema_version"], item["app_version"]) == (2, "1.2.0")
    assert main(["devices", "--database-url", db_url, "--data-dir", str(tmp_path / "data")]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert "schema_version" in header and "app_version" in header
    assert "1.2.0" in row.split()
