"""Invariant 7 end to end: PHI written through REST and through device pushes (and read back by
pulls and REST) is nowhere in plaintext at rest — not in the bytes of the server's database
files, the queue's storage, the key directory, the audit store, the devices' encrypted stores,
nor in the logs. On SQLite the files are searched byte for byte; on PostgreSQL every row of
every table of the test's schema is searched as text, plus the queue files."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from fieldsync.api import create_app
from fieldsync.auth import issue_token
from fieldsync.client import Client, WsgiTransport, enroll
from fieldsync.seed import load_seed

ROOT = Path(__file__).resolve().parents[2]
PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"
SAI = "2fd6ae15-929b-509f-9c04-01a819382ca2"      # a retailer in PUNE
SECRET = "phi-at-rest-secret"


def _phi(n: int) -> dict:
    """Distinctive PHI values (long enough that a match cannot be chance)."""
    return {"patient_id": str(uuid.uuid4()), "patient_name": f"Zenobia Quillfeather-{n}x",
            "patient_dob": f"19{40 + n:02d}-0{1 + n % 9}-2{n % 9}",
            "diagnosis": f"idiopathic thrombocytopenic purpura, relapse {n} after splenectomy"}


def _needles(values: list[dict]) -> list[str]:
    return [str(v) for phi in values for v in phi.values()]


def _found(needles: list[str], haystack: bytes) -> list[str]:
    found = []
    for needle in needles:
        for form in (needle.encode(), needle.encode("utf-16-le"), needle.upper().encode()):
            if form in haystack:
                found.append(needle)
                break
    return found


def _exercise(app, tmp_path: Path, schema_document, settle) -> list[dict]:
    """Write PHI through REST and through two devices' pushes , read it
    back through REST; return every PHI value written."""
    written = []
    http = app.test_client()
    rep_token = issue_token(SECRET, "rep-asha", "field_rep", {"territory_ids": [PUNE]}, ttl=3600)
    product = http.get("/api/v1/product?limit=1", headers={"Authorization": f"Bearer {rep_token}"}).get_json()
    product_id = product["items"][0]["id"]
    base = {"retailer_id": SAI, "territory_id": PUNE, "product_id": product_id,
            "prescribed_at": dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")}
    for n in range(3):                                           # REST writes
        phi = _phi(n)
        r = http.post("/api/v1/prescription", json={**base, **phi},
                      headers={"Authorization": f"Bearer {rep_token}"})
        assert r.status_code == 201, r.get_json()
        written.append(phi)
        got = http.get(f"/api/v1/prescription/{r.get_json()['id']}",
                       headers={"Authorization": f"Bearer {rep_token}"}).get_json()
        assert got["diagnosis"] == phi["diagnosis"]               # REST read
    # a device with an encrypted store pushes an insert and an update
    path = tmp_path / "devices" / "asha.db"
    path.parent.mkdir()
    enrollment = enroll(path, WsgiTransport(app), rep_token, schema=schema_document,
                        install_info={"platform": "test", "app_version": "1"}, scrypt_n=1024)
    device = Client(path, WsgiTransport(app), rep_token, schema=schema_document,
                    store_key=enrollment.store_key(pin="2468"))
    device.sync()
    for n in range(3, 5):
        phi = _phi(n)
        device.insert("prescription", {**base, **phi})
        written.append(phi)
    device.sync()
    settle()
    report = device.sync()
    assert not device.quarantined(), device.quarantined()
    assert report.pulled >= 0
    # a second device of the same user syncs: prescriptions are push-only in the example, so it
    # receives none of them (their PHI stays on the device that wrote it and the server)
    path2 = tmp_path / "devices" / "asha-tablet.db"
    enrollment2 = enroll(path2, WsgiTransport(app), rep_token, schema=schema_document,
                         install_info={"platform": "test", "app_version": "1"}, scrypt_n=1024)
    tablet = Client(path2, WsgiTransport(app), rep_token, schema=schema_document,
                    store_key=enrollment2.store_key(pin="1357"))
    tablet.sync()
    assert tablet.query("prescription") == [] and tablet.query("retailer")
    assert {r["diagnosis"] for r in device.query("prescription")} == {phi["diagnosis"] for phi in written[3:]}
    device.close()
    tablet.close()
    return written


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_no_phi_in_plaintext_on_the_sqlite_server(tmp_path, example_model, schema_document, caplog):
    caplog.set_level(logging.DEBUG)
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(tmp_path / "var"), "SYNC_LISTENERS": 2}, model=example_model)
    state = app.extensions["fieldsync"]
    try:
        load_seed(state.config, ROOT / "examples" / "seed", store=state.store)
        written = _exercise(app, tmp_path, schema_document, lambda: state.sync.wait_idle(30))
        # every PHI access left an audit entry (references only)
        with state.engine.connect() as conn:
            audited = conn.execute(sa.text("select count(*) from fs_audit_entries where entity = 'prescription'")).scalar()
        assert audited >= 5
    finally:
        state.sync.stop()
        state.engine.dispose()      # the last connection checkpoints the WAL into the file
    needles = _needles(written)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "server.db" for p in files) and any(p.name.startswith("queue") for p in files)
    assert any(p.parent.name == "devices" for p in files)
    server_bytes = (tmp_path / "server.db").read_bytes()
    # the search can fail: plain values (a retailer's name) and the ciphertexts are in the file
    assert _found(["Sai Medical Stores"], server_bytes) and b"e1." in server_bytes and b"d1." in server_bytes
    for p in files:
        assert not _found(needles, p.read_bytes()), f"PHI in plaintext in {p.relative_to(tmp_path)}"
    assert not _found(needles, caplog.text.encode()), "PHI in the logs"


@pytest.mark.postgres
def test_no_phi_in_plaintext_on_the_postgresql_server(pg_url, tmp_path, example_model, schema_document, caplog):
    caplog.set_level(logging.DEBUG)
    app = create_app({"DATABASE_URL": pg_url, "SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path / "var"),
                      "SYNC_LISTENERS": 2}, model=example_model)
    state = app.extensions["fieldsync"]
    try:
        load_seed(state.config, ROOT / "examples" / "seed", store=state.store)
        written = _exercise(app, tmp_path, schema_document, lambda: state.sync.wait_idle(30))
        dump = []
        with state.engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            assert "fs_audit_entries" in tables and "prescription" in tables and "fs_changes" in tables
            for table in tables:
                quoted = conn.dialect.identifier_preparer.quote(table)
                dump += [str(r[0]) for r in conn.execute(sa.text(f"select t::text from {quoted} t"))]
    finally:
        state.sync.stop()
        state.engine.dispose()
    needles = _needles(written)
    text = "\n".join(dump).encode()
    assert b"e1." in text and b"d1." in text            # the ciphertexts are there
    assert not _found(needles, text), "PHI in plaintext in a PostgreSQL table"
    for p in (tmp_path / "var").rglob("*"):
        if p.is_file():
            assert not _found(needles, p.read_bytes()), f"PHI in plaintext in {p.relative_to(tmp_path)}"
    assert not _found(needles, caplog.text.encode()), "PHI in the logs"
