"""The encrypted device store against the real server (create_app on SQLite, WsgiTransport):
enrolment issues a device secret the server keeps wrapped and gives again to the same device,
a full sync cycle runs on an encrypted store, and a plain store migrated after enrolment
delivers the writes it held."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid

import pytest
import sqlalchemy as sa

from fieldsync.client import (Client, DeviceRevoked, ProtocolError, StoreKey, StoreLocked, WsgiTransport,
                              enroll)
from fieldsync.client.store_key import StoreHeader
from fieldsync.crypto.keys import LocalKeyProvider
from fieldsync.errors import KeyUnavailable
from fieldsync.sync.device_secrets import DeviceSecrets
from fieldsync.store.sync_tables import DEVICE_SECRETS, DEVICES, create_sync_tables

PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"
SAI = "2fd6ae15-929b-509f-9c04-01a819382ca2"      # a retailer in PUNE
PATIENT = "Anjali Venkataraman-Iyer"
DIAGNOSIS = "stage 2 hypertension with proteinuria"


def prescription(client: Client) -> dict:
    product = client.query("product", limit=1)[0]
    return {"retailer_id": SAI, "territory_id": PUNE, "patient_id": str(uuid.uuid4()), "patient_name": PATIENT,
            "patient_dob": "1972-06-15", "diagnosis": DIAGNOSIS, "product_id": product["id"],
            "prescribed_at": dt.datetime.now(dt.timezone.utc).isoformat()}


def server_files(tmp_path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in tmp_path.glob("server.db*")}


def device_rows(app, user: str) -> list:
    with app.extensions["fieldsync"].engine.connect() as conn:
        return list(conn.execute(sa.select(DEVICES.c.device_id).where(DEVICES.c.user_id == user)))


class Recording:
    """A transport that keeps every request body and answer (to see what crossed the wire)."""

    def __init__(self, inner):
        self.inner = inner
        self.exchanges: list[tuple[str, dict | None, dict | None]] = []

    def request(self, method, path, *, headers, body):
        status, answer_headers, data = self.inner.request(method, path, headers=headers, body=body)
        self.exchanges.append((path, json.loads(body) if body else None, json.loads(data) if data else None))
        return status, answer_headers, data


def test_enrol_then_a_full_sync_cycle_on_an_encrypted_store(app, settle, token, tmp_path, schema_document):
    bearer = token("rep-asha")
    path = tmp_path / "asha.db"
    enrollment = enroll(path, WsgiTransport(app), bearer, schema=schema_document,
                        install_info={"platform": "test", "app_version": "1"}, scrypt_n=1024)
    assert len(enrollment.device_secret) == 32 and enrollment.user_id == "rep-asha"
    # the secret never shows in a repr (a hex id ending in b made a "b'" check fail at random)
    assert "device_secret" not in repr(enrollment)
    assert repr(enrollment.device_secret) not in repr(enrollment) and enrollment.device_secret.hex() not in repr(enrollment)
    header = StoreHeader.read(path)
    assert (header.device_id, header.install_id) == (enrollment.device_id, enrollment.install_id)
    assert not path.exists()                           # enrolment makes the header, not the store

    client = Client(path, WsgiTransport(app), bearer, schema=schema_document,
                    store_key=enrollment.store_key(pin="4826"))
    assert client.encrypted
    first = client.sync()
    assert first.pulled > 0 and client.get("retailer", SAI)["name"] == "Sai Medical Stores"
    assert client.status().device_id == enrollment.device_id     # the enrolled device, not a second one
    rx_id = client.insert("prescription", prescription(client))
    visit_id = client.insert("visit", {"retailer_id": SAI, "territory_id": PUNE, "purpose": "order",
                                       "visited_at": "2026-11-26T10:00:00Z"})
    assert client.sync().pushed == 2
    settle()
    client.sync()
    rx = client.get("prescription", rx_id)
    assert rx["version"] == 1 and rx["rep_id"] == "rep-asha" and rx["diagnosis"] == DIAGNOSIS
    assert client.get("visit", visit_id)["version"] == 1
    assert client.status().pending == 0 and client.quarantined() == []
    for sibling in tmp_path.glob("asha.db*"):
        data = sibling.read_bytes()
        assert PATIENT.encode() not in data and DIAGNOSIS.encode() not in data, sibling.name
    client.close()
    assert len(device_rows(app, "rep-asha")) == 1
    header = StoreHeader.read(path)
    assert header.pin is True                          # the first open recorded that a PIN is set

    # a re-login after the keystore was wiped: enrolling again gives the same device and secret
    again = enroll(path, WsgiTransport(app), bearer, schema=schema_document)
    assert (again.device_id, again.device_secret) == (enrollment.device_id, enrollment.device_secret)
    assert StoreHeader.read(path) == header            # the salt is part of the key: never rewritten
    # both issues are key operations in the audit trail, which holds references only
    audit = app.extensions["fieldsync"].audit
    issued = [(e.detail.get("event"), e.actor, e.device) for e in audit.entries(actor="rep-asha")
              if e.action == "key"]
    assert issued == [("device_secret_issued", "rep-asha", enrollment.device_id),
                      ("device_secret_reissued", "rep-asha", enrollment.device_id)]
    with app.extensions["fieldsync"].engine.connect() as conn:
        audit_rows = repr(conn.execute(sa.text("SELECT * FROM fs_audit_entries")).fetchall())
    assert base64.b64encode(enrollment.device_secret).decode() not in audit_rows
    assert enrollment.device_secret.hex() not in audit_rows
    with Client(path, WsgiTransport(app), bearer, store_key=again.store_key(pin="4826")) as reopened:
        assert reopened.get("prescription", rx_id)["patient_name"] == PATIENT


def test_the_server_keeps_device_secrets_wrapped_and_per_device(app, token, tmp_path, schema_document):
    transport = Recording(WsgiTransport(app))
    ana = enroll(tmp_path / "ana.db", transport, token("rep-ana"), schema=schema_document, scrypt_n=1024)
    ana_tablet = enroll(tmp_path / "ana-tablet.db", transport, token("rep-ana"), schema=schema_document)
    ben = enroll(tmp_path / "ben.db", transport, token("rep-ben"), schema=schema_document)
    assert len({ana.device_secret, ana_tablet.device_secret, ben.device_secret}) == 3
    assert len({ana.device_id, ana_tablet.device_id, ben.device_id}) == 3
    with app.extensions["fieldsync"].engine.connect() as conn:
        wrapped = {r.device_id: bytes(r.wrapped) for r in conn.execute(sa.select(DEVICE_SECRETS))}
    assert set(wrapped) == {ana.device_id, ana_tablet.device_id, ben.device_id}
    for enrollment in (ana, ana_tablet, ben):
        for data in list(server_files(tmp_path).values()) + list(wrapped.values()):
            assert enrollment.device_secret not in data         # invariant 7: never in clear
    # the secret goes only to a registration that asks for it
    register = [answer for path, body, answer in transport.exchanges if path.endswith("/devices")]
    assert all("device_secret" in a for a in register)
    with Client(tmp_path / "plain.db", transport, token("rep-ana"), schema=schema_document) as plain:
        plain.sync()
    plain_registration = [(b, a) for p, b, a in transport.exchanges if p.endswith("/devices")][-1]
    assert "issue_secret" not in plain_registration[0] and "device_secret" not in plain_registration[1]


def test_a_wrapped_secret_moved_to_another_device_does_not_unwrap(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'secrets.db'}")
    create_sync_tables(engine)
    secrets = DeviceSecrets(LocalKeyProvider(tmp_path / "keys"))
    now = dt.datetime.now(dt.timezone.utc)
    with engine.begin() as conn:
        first, made = secrets.issue(conn, "device-a", now)
        assert made and secrets.issue(conn, "device-a", now) == (first, False)
        secrets.issue(conn, "device-b", now)
        a = conn.execute(sa.select(DEVICE_SECRETS.c.wrapped).where(DEVICE_SECRETS.c.device_id == "device-a")).scalar()
        conn.execute(DEVICE_SECRETS.update().where(DEVICE_SECRETS.c.device_id == "device-b").values(wrapped=a))
        with pytest.raises(KeyUnavailable):
            secrets.issue(conn, "device-b", now)
    engine.dispose()


def test_a_revoked_device_gets_no_secret_and_bad_requests_are_refused(app, token, tmp_path, schema_document):
    bearer = token("rep-asha")
    enrollment = enroll(tmp_path / "asha.db", WsgiTransport(app), bearer, schema=schema_document)
    with app.extensions["fieldsync"].engine.begin() as conn:
        conn.execute(DEVICES.update().where(DEVICES.c.device_id == enrollment.device_id).values(status="revoked"))
    with pytest.raises(DeviceRevoked):
        enroll(tmp_path / "asha.db", WsgiTransport(app), bearer, schema=schema_document)
    status, _, body = WsgiTransport(app).request(
        "POST", "/api/v1/sync/devices", body=json.dumps({"install_id": "x", "schema_version": 1,
                                                         "issue_secret": "yes"}).encode(),
        headers={"Authorization": f"Bearer {bearer}", "Fieldsync-Protocol": "1",
                 "Content-Type": "application/json"})
    assert status == 400 and "issue_secret" in body.decode()


def test_enrol_refuses_an_encrypted_store_without_its_header_and_a_server_without_secrets(
        tmp_path, schema_document, enrolled, server):
    path, secret = enrolled()
    Client(path, server, "t", schema=schema_document, store_key=StoreKey(secret)).close()
    StoreHeader.path_for(path).unlink()
    with pytest.raises(StoreLocked, match="header .* is missing"):
        enroll(path, server, "t", schema=schema_document)
    assert server.bodies("/devices") == []                             # refused before asking the server
    with pytest.raises(ProtocolError, match="no valid device_secret"):
        enroll(tmp_path / "other.db", server, "t", schema=schema_document)   # the fake server has none
    assert not StoreHeader.path_for(tmp_path / "other.db").exists()


def test_a_plain_store_migrated_after_enrolment_delivers_its_waiting_writes(app, settle, token, tmp_path,
                                                                          schema_document):
    bearer = token("rep-asha")
    path = tmp_path / "asha.db"
    plain = Client(path, WsgiTransport(app), bearer, schema=schema_document)
    plain.sync()
    device_id = plain.status().device_id
    rx_id = plain.insert("prescription", prescription(plain))       # offline: waits in the outbox
    assert plain.status().pending == 1
    plain.close()

    enrollment = enroll(path, WsgiTransport(app), bearer)            # the app update: start encrypting
    assert enrollment.device_id == device_id                         # the plain store's own install
    client = Client(path, WsgiTransport(app), bearer, store_key=enrollment.store_key())
    assert client.encrypted and client.status().pending == 1
    for sibling in tmp_path.glob("asha.db*"):
        assert PATIENT.encode() not in sibling.read_bytes(), sibling.name
    client.sync()
    settle()
    client.sync()
    assert client.status().pending == 0 and client.get("prescription", rx_id)["version"] == 1
    store = app.extensions["fieldsync"].store
    with store.engine.connect() as conn:
        table = store.table(store.model.entity("prescription"))
        assert conn.execute(sa.select(sa.func.count()).select_from(table).where(table.c.id == rx_id)).scalar() == 1
    assert len(device_rows(app, "rep-asha")) == 1
    client.close()
