"""A plain device store becomes an encrypted one (sqlcipher_export into a new file, atomic
replace): every table, row, outbox entry and sequence counter is kept, the plaintext file is
gone, the next sync delivers what was waiting, and an interrupted migration leaves the plain
store as it was."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import uuid

import pytest
from sqlcipher3 import dbapi2 as sqlcipher

from fieldsync.client import ClientError, StoreKey, StoreLocked
from fieldsync.client import store_cipher
from fieldsync.client.store_cipher import PLAIN_MAGIC, key_literal
from fieldsync.client.store_key import StoreHeader

RETAILER = "0192a000-0000-7000-8000-000000000301"
TERRITORY = "0192a000-0000-7000-8000-000000000011"
PATIENT = "Farida Shaikh-Pathan"
DIAGNOSIS = "chronic obstructive pulmonary disease"


def prescription():
    return {"retailer_id": RETAILER, "territory_id": TERRITORY, "patient_id": str(uuid.uuid4()),
            "patient_name": PATIENT, "patient_dob": "1958-09-30", "diagnosis": DIAGNOSIS,
            "product_id": "0192a000-0000-7000-8000-000000000401", "prescribed_at": "2026-11-26T15:00:00Z"}


def dump(conn) -> dict:
    """Every row of every table (sqlite_sequence included) and the user_version."""
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    out = {name: sorted(tuple(r) for r in conn.execute(f'SELECT * FROM "{name}"')) for name in tables}
    out["user_version"] = conn.execute("PRAGMA user_version").fetchone()[0]
    return out


def plain_dump(path) -> dict:
    conn = sqlite3.connect(path)
    try:
        return dump(conn)
    finally:
        conn.close()


def encrypted_dump(path, key: bytes) -> dict:
    conn = sqlcipher.connect(str(path))
    try:
        conn.execute(f'PRAGMA key = "{key_literal(key)}"')
        return dump(conn)
    finally:
        conn.close()


@pytest.fixture
def plain_store(make_client, server, visit, tmp_path):
    """A plain store with synced rows, a settled write (its outbox entry gone), a received one
    and two pending ones; closed. Returns (path, the plain client's install id)."""
    server.server_insert("retailer", RETAILER, name="Sai Medical", territory_id=TERRITORY)
    client = make_client(server)
    settled = client.insert("visit", visit(notes="settled"))
    client.sync()
    server.auto_process = False
    client.insert("visit", visit(notes="received"))
    client.sync()
    client.insert("prescription", prescription())
    client.update("visit", settled, {"notes": "changed offline"})
    status = client.status()
    assert (status.pending, status.received) == (2, 1)
    install_id = client._store.state("install_id")
    client.close()
    return tmp_path / "device.db", install_id


def test_a_plain_store_opened_with_a_key_is_encrypted_keeping_everything_then_syncs(
        plain_store, make_client, server, visit):
    path, install_id = plain_store
    before = plain_dump(path)
    assert before["sqlite_sequence"] == [("_outbox", 4)] and len(before["_outbox"]) == 3
    StoreHeader.new("device-1", install_id, scrypt_n=1024).write(path)   # what enroll() writes
    secret = bytes(range(32))
    client = make_client(server, store_key=StoreKey(secret))
    assert client.encrypted
    assert path.read_bytes()[:16] != PLAIN_MAGIC
    key = StoreHeader.read(path).derive(StoreKey(secret))
    after = encrypted_dump(path, key)
    assert after == before                              # every row, outbox entry, counter, version
    assert not path.with_name("device.db.encrypting").exists()
    for sibling in path.parent.glob("device.db*"):
        data = sibling.read_bytes()
        assert PATIENT.encode() not in data and DIAGNOSIS.encode() not in data, sibling.name
    # the AUTOINCREMENT counter went along: a new write never reuses a seq (invariant 2)
    client.insert("visit", visit(notes="after encryption"))
    assert max(e["seq"] for e in client._store.conn.execute('SELECT seq FROM "_outbox"')) == 5
    # the waiting writes are delivered by the next sync, with the seqs they had
    server.auto_process = True
    server.process()
    client.sync()
    assert client.status().pending == 0 and client.status().received == 0
    assert sorted(seq for (_, seq) in server.ledger) == [1, 2, 3, 4, 5]
    rx = client.query("prescription")[0]
    assert rx["version"] == 1 and rx["patient_name"] == PATIENT


def test_rekey_of_an_open_plain_client_encrypts_it_in_place(plain_store, make_client, server, visit):
    path, install_id = plain_store
    StoreHeader.new("device-1", install_id, scrypt_n=1024).write(path)
    client = make_client(server)
    assert not client.encrypted
    before = plain_dump(path)
    secret = bytes(range(1, 33))
    client.rekey(StoreKey(secret, pin="0000"))
    assert client.encrypted and StoreHeader.read(path).pin is True
    client.insert("visit", visit(notes="written after"))   # the client carries on, on the new file
    client.close()
    with pytest.raises(StoreLocked):
        make_client(server)
    reopened = make_client(server, store_key=StoreKey(secret, pin="0000"))
    assert reopened.status().pending == 3
    key = StoreHeader.read(path).derive(StoreKey(secret, pin="0000"))
    reopened.close()
    after = encrypted_dump(path, key)
    assert {k: v for k, v in after.items() if k not in ("_outbox", "visit", "sqlite_sequence")} == \
        {k: v for k, v in before.items() if k not in ("_outbox", "visit", "sqlite_sequence")}
    assert set(before["_outbox"]) < set(after["_outbox"]) and after["sqlite_sequence"] == [("_outbox", 5)]


def test_an_interrupted_encryption_leaves_the_plain_store_as_it_was(plain_store, make_client, server,
                                                                  monkeypatch):
    path, install_id = plain_store
    StoreHeader.new("device-1", install_id, scrypt_n=1024).write(path)
    before = plain_dump(path)

    def failing_check(conn, store_path):
        raise ClientError("simulated failure after the copy")
    monkeypatch.setattr(store_cipher, "_check_copy", failing_check)
    with pytest.raises(ClientError, match="simulated failure"):
        make_client(server, store_key=StoreKey(bytes(32)))
    assert path.read_bytes()[:16] == PLAIN_MAGIC and plain_dump(path) == before
    assert not path.with_name("device.db.encrypting").exists()
    monkeypatch.undo()
    # a copy a crash left behind (before its rename) is thrown away and the migration redone
    path.with_name("device.db.encrypting").write_bytes(b"half a copy")
    client = make_client(server, store_key=StoreKey(bytes(32)))
    assert client.encrypted and client.status().pending == 2
    assert not path.with_name("device.db.encrypting").exists()


def test_a_store_another_process_is_writing_is_not_encrypted_under_it(plain_store, monkeypatch):
    path, _ = plain_store
    monkeypatch.setattr(store_cipher, "EXCLUSIVE_WAIT", 0.2)
    # another process (file locks do not conflict between two SQLite libraries of one process)
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys\n"
                               f"c = sqlite3.connect({str(path)!r}, isolation_level=None)\n"
                               "c.execute('BEGIN IMMEDIATE'); c.execute('UPDATE _sync_state SET value = value')\n"
                               "print('ready', flush=True); sys.stdin.readline(); c.execute('ROLLBACK')\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "ready"
        with pytest.raises(ClientError, match="is in use by another connection"):
            store_cipher.encrypt_plain_store(str(path), bytes(32))
    finally:
        writer.communicate("go\n", timeout=20)
    assert writer.returncode == 0
    assert path.read_bytes()[:16] == PLAIN_MAGIC
    assert not path.with_name("device.db.encrypting").exists()
    store_cipher.encrypt_plain_store(str(path), bytes(32))      # once it is free, it works
    assert path.read_bytes()[:16] != PLAIN_MAGIC
