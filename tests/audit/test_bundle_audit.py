"""PHI handed out in a snapshot bundle (docs/protocol.md §14.4) is audited with the pull that
hands it out, as a page's would be (invariant 8), and the bundle on disk holds none of it in
plaintext (invariant 7). The example's prescriptions are push-only, so this test's model lets
reps pull their own."""

from __future__ import annotations

import datetime as dt
import shutil
import uuid
from pathlib import Path

import pytest

from audit_support import PhiApp, SECRET
from fieldsync.defs import load_model

ROOT = Path(__file__).resolve().parents[2]
PHI = ("patient_dob", "patient_id", "patient_name", "diagnosis")


@pytest.fixture
def pulled_phi_app(tmp_path, db_url):
    defs = tmp_path / "defs"
    shutil.copytree(ROOT / "entity_defs", defs)
    path = defs / "transactions" / "prescription.yaml"
    text = path.read_text()
    assert "  direction: push\n" in text
    path.write_text(text.replace("  direction: push\n", "  direction: both\n"))
    from fieldsync.api import create_app
    app = create_app({"DATABASE_URL": db_url, "SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path / "data"),
                      "SYNC_LISTENERS": 0, "BUNDLE_MIN_ROWS": 1}, model=load_model(defs))
    phi = PhiApp(app)
    yield phi
    phi.close()


def _pull(phi, token, device, cursor=0, scope_hash=None):
    r = phi.sync("/pull", token, {"device_id": device, "schema_version": phi.state.model.schema_version,
                                  "cursor": cursor, "scope_hash": scope_hash, "bundles": True})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_phi_in_a_bundle_is_audited_when_it_is_handed_out(pulled_phi_app):
    phi = pulled_phi_app
    rep = phi.rep_token("rep-1")
    device = phi.register(rep)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")   # inside the 30-day window
    values = phi.prescription(patient_name="Ottoline Quibbleworth", diagnosis="Xylophone lung", prescribed_at=now)
    record_id = str(uuid.uuid4())
    r = phi.sync("/push", rep, {"device_id": device, "schema_version": phi.state.model.schema_version,
                                "mutations": [{"seq": 1, "entity": "prescription", "op": "insert", "id": record_id,
                                               "base_version": None, "client_time": "2024-03-01T09:00:00Z",
                                               "fields": values}]})
    assert r.status_code == 202
    assert phi.state.sync.drain() == 1
    before = len(phi.entries(entity="prescription"))
    # the first bundle holds what every rep of the territory shares; the rep's own records follow
    first = _pull(phi, rep, device)
    assert first["phase"] == "bundle" and "prescription" not in first["bundle"]["manifest"]["entities"]
    second = _pull(phi, rep, device, first["bundle"]["manifest"]["cursor"], first["bundle"]["scope_hash"])
    assert second["phase"] == "bundle" and "prescription" in second["bundle"]["manifest"]["entities"]
    entries = phi.entries(entity="prescription")[before:]
    reads = [e for e in entries if e.action == "read" and e.channel == "pull"]
    assert reads and reads[-1].device == device and reads[-1].actor == "rep-1"
    assert record_id in reads[-1].record_ids and set(reads[-1].fields) == set(PHI)
    # the bundle on disk, its row and the audit store hold none of the PHI in plaintext
    data_dir = Path(phi.state.config["DATA_DIR"]) / "bundles"
    blob = b"".join(p.read_bytes() for p in data_dir.glob("*.fsb"))
    assert blob and b"Ottoline" not in blob and b"Xylophone" not in blob
    assert phi.state.audit.verify().ok
