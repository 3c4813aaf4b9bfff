"""The encrypted device store, locally (the in-memory fake server where a server is needed):
open, close and reopen; wrong keys and PINs refused clearly and harmlessly; rekeying; PHI
absent from the raw files; the SDK's features and its background thread on an encrypted store."""

from __future__ import annotations

import importlib.util
import sys
import threading
import uuid
from pathlib import Path

import pytest

from fieldsync.client import StoreKey, StoreLocked, WrongStoreKey
from fieldsync.client.store_cipher import PLAIN_MAGIC
from fieldsync.client.store_key import StoreHeader

ROOT = Path(__file__).resolve().parents[2]
PATIENT = "Meera Kulkarni-Deshpande"
DIAGNOSIS = "gestational diabetes, insulin started"


def prescription(**overrides):
    fields = {"retailer_id": "0192a000-0000-7000-8000-000000000301",
              "territory_id": "0192a000-0000-7000-8000-000000000011", "patient_id": str(uuid.uuid4()),
              "patient_name": PATIENT, "patient_dob": "1991-04-12", "diagnosis": DIAGNOSIS,
              "product_id": "0192a000-0000-7000-8000-000000000401", "prescribed_at": "2026-11-26T15:00:00Z"}
    fields.update(overrides)
    return fields


def generated_models():
    spec = importlib.util.spec_from_file_location("fieldsync_models", ROOT / "generated/sdk/python/fieldsync_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module        # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def store_files(path) -> dict[str, bytes]:
    """The store and everything SQLite keeps next to it, as raw bytes."""
    return {p.name: p.read_bytes() for p in path.parent.glob(path.name + "*") if p.is_file()}


def test_an_encrypted_store_opens_closes_and_reopens_with_its_key(make_client, server, enrolled, visit):
    path, secret = enrolled()
    client = make_client(server, store_key=StoreKey(secret))
    assert client.encrypted
    visit_id = client.insert("visit", visit(notes="first call"))
    rx_id = client.insert("prescription", prescription())
    client.close()
    assert path.read_bytes()[:16] != PLAIN_MAGIC   # not an SQLite file any more: SQLCipher's salt
    again = make_client(server, store_key=StoreKey(secret))
    assert again.get("visit", visit_id)["notes"] == "first call"
    assert again.get("prescription", rx_id)["patient_name"] == PATIENT
    assert again.status().pending == 2
    # the install id enroll() registered is the one the first sync registers (no second device)
    again.sync()
    assert server.bodies("/devices")[0]["install_id"] == "install-device"


def test_a_wrong_secret_is_refused_clearly_and_changes_nothing(make_client, server, enrolled, visit):
    path, secret = enrolled()
    client = make_client(server, store_key=StoreKey(secret))
    visit_id = client.insert("visit", visit())
    client.close()
    before = store_files(path)
    with pytest.raises(WrongStoreKey) as caught:
        make_client(server, store_key=StoreKey(bytes(32)))
    message = str(caught.value)
    assert f"the store at {path} does not open with this key" in message
    assert "wrong device secret or PIN" in message and "not a database" not in message
    assert caught.value.path == str(path)
    assert store_files(path) == before                 # nothing written by the failed open
    assert make_client(server, store_key=StoreKey(secret)).get("visit", visit_id) is not None


def test_a_wrong_or_missing_pin_is_refused_clearly(make_client, server, enrolled, visit):
    path, secret = enrolled()
    client = make_client(server, store_key=StoreKey(secret, pin="2468"))
    assert StoreHeader.read(path).pin is True        # a store made with a PIN says so in its header
    client.insert("visit", visit())
    client.close()
    with pytest.raises(WrongStoreKey, match=r"does not open with this key \(a wrong device secret or PIN"):
        make_client(server, store_key=StoreKey(secret, pin="2469"))
    with pytest.raises(WrongStoreKey, match="protected by a PIN and none was given"):
        make_client(server, store_key=StoreKey(secret))
    assert make_client(server, store_key=StoreKey(secret, pin="2468")).status().pending == 1


def test_an_encrypted_store_opened_without_a_key_is_locked(make_client, server, enrolled):
    path, secret = enrolled()
    make_client(server, store_key=StoreKey(secret)).close()
    with pytest.raises(StoreLocked, match=f"the store at {path} is encrypted: open it with store_key") as caught:
        make_client(server)
    assert not isinstance(caught.value, WrongStoreKey)


def test_a_key_without_a_header_asks_for_enrolment(make_client, server, tmp_path):
    with pytest.raises(StoreLocked, match=r"no store header at .*device\.db\.header: enroll the device first"):
        make_client(server, store_key=StoreKey(bytes(32)))
    assert not (tmp_path / "device.db").exists()   # no store made under a key nobody can derive again


def test_rekey_to_a_new_pin_then_only_the_new_key_opens(make_client, server, enrolled, visit):
    path, secret = enrolled()
    client = make_client(server, store_key=StoreKey(secret))
    visit_id = client.insert("visit", visit(notes="before the PIN"))
    client.rekey(StoreKey(secret, pin="1357"))
    client.insert("visit", visit(notes="after the PIN"))      # the open client goes on working
    client.close()
    assert StoreHeader.read(path).pin is True
    with pytest.raises(WrongStoreKey, match="protected by a PIN"):
        make_client(server, store_key=StoreKey(secret))
    reopened = make_client(server, store_key=StoreKey(secret, pin="1357"))
    assert reopened.get("visit", visit_id)["notes"] == "before the PIN"
    assert reopened.status().pending == 2
    reopened.rekey(StoreKey(secret, pin="8642"))               # a PIN change
    reopened.close()
    with pytest.raises(WrongStoreKey):
        make_client(server, store_key=StoreKey(secret, pin="1357"))
    last = make_client(server, store_key=StoreKey(secret, pin="8642"))
    last.rekey(StoreKey(secret))                                # the PIN removed
    last.close()
    assert StoreHeader.read(path).pin is False
    assert make_client(server, store_key=StoreKey(secret)).status().pending == 2


def test_no_phi_in_the_raw_bytes_of_the_encrypted_store_its_wal_and_header(make_client, server, enrolled,
                                                                            tmp_path):
    path, secret = enrolled()
    client = make_client(server, store_key=StoreKey(secret))
    rx = client.insert("prescription", prescription())
    client.update("prescription", rx, {"diagnosis": DIAGNOSIS + " (reviewed)"})
    files = store_files(path)
    assert files.get("device.db-wal"), "the writes should still be in the WAL when the files are read"
    assert {"device.db", "device.db-wal", "device.db.header"} <= set(files)
    for name, data in files.items():
        for value in (PATIENT, DIAGNOSIS, "reviewed"):
            assert value.encode() not in data, f"{value!r} in clear in {name}"
    # the same writes in a plain store are readable in its files: the check above can fail
    plain = make_client(server, name="plain")
    plain.insert("prescription", prescription())
    assert any(PATIENT.encode() in data for data in store_files(tmp_path / "plain.db").values())
    client.close()
    for name, data in store_files(path).items():
        assert PATIENT.encode() not in data and DIAGNOSIS.encode() not in data, name


def test_sync_quarantine_and_typed_models_work_on_an_encrypted_store(make_client, server, enrolled, visit):
    models = generated_models()
    path, secret = enrolled()
    server.server_insert("retailer", "0192a000-0000-7000-8000-000000000301", name="Sai Medical",
                         territory_id="0192a000-0000-7000-8000-000000000011")
    server.reject = lambda m: "validation" if m["fields"].get("notes") == "refuse me" else None
    client = make_client(server, store_key=StoreKey(secret))
    kept = client.insert("visit", visit(notes="fine"))
    client.insert("visit", visit(notes="refuse me"))
    report = client.sync()
    assert (report.pushed, report.rejected) == (2, 1)
    [held] = client.quarantined()
    assert held.name == "validation" and held.fields["notes"] == "refuse me"
    client.resubmit(held.seq, {"notes": "fixed"})
    client.sync()
    assert client.quarantined() == [] and client.status().pending == 0
    typed = client.query(models.Visit, where={"notes": "fine"})
    assert [v.id for v in typed] == [kept] and isinstance(typed[0], models.Visit)
    assert client.get("retailer", "0192a000-0000-7000-8000-000000000301")["name"] == "Sai Medical"


def test_background_sync_app_writes_and_a_rekey_share_the_encrypted_store(make_client, server, enrolled, visit):
    path, secret = enrolled()
    pushed = threading.Event()

    def notice_push(method, route, body, headers):
        if route.endswith("/push"):
            pushed.set()
        return None                                   # answered by the fake server as usual
    server.hooks.append(notice_push)
    client = make_client(server, store_key=StoreKey(secret))
    errors: list[BaseException] = []
    client.on_error(errors.append)
    client.start(interval=3600, debounce=0)
    go = threading.Event()

    def write(prefix: str) -> None:
        go.wait(10)
        for i in range(25):
            client.insert("visit", visit(notes=f"{prefix}-{i}"))

    writers = [threading.Thread(target=write, args=(name,)) for name in ("app", "widget")]
    for thread in writers:
        thread.start()
    go.set()
    assert pushed.wait(20), "the background thread never pushed"
    client.rekey(StoreKey(secret, pin="9753"))         # while the thread and the writers run
    for thread in writers:
        thread.join(20)
        assert not thread.is_alive()
    client.stop()
    client.sync()
    assert errors == []
    assert client.status().pending == 0 and len(server.ledger) == 50
    client.close()
    reopened = make_client(server, store_key=StoreKey(secret, pin="9753"))
    notes = {v["notes"] for v in reopened.query("visit")}
    assert notes == {f"{p}-{i}" for p in ("app", "widget") for i in range(25)}
