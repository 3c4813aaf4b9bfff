"""Invariant 7 for the queue: no record data in plaintext in queued payloads, on any backend
(the behaviour suite checks the raw bodies of SQS and the broker the same way)."""

from __future__ import annotations

import sqlite3

import pytest

from fieldsync.errors import Error, KeyUnavailable, QueueDecryptError
from fieldsync.crypto.keys import LocalKeyProvider
from fieldsync.queue.embedded import SqliteQueue
from fieldsync.queue.encrypted import MAGIC, EncryptedQueue

MARKER = b"Ramesh Kumar, HbA1c 9.1%"


def test_round_trip_and_nothing_readable_in_the_file(tmp_path):
    inner = SqliteQueue(tmp_path / "q.db")
    queue = EncryptedQueue(inner, LocalKeyProvider(tmp_path / "keys"))
    queue.send_batch([(MARKER + b" #%d" % i, "device-1") for i in range(3)])
    [first] = queue.receive(1)
    assert first.body == MARKER + b" #0" and first.group == "device-1"
    queue.ack([first.receipt])
    inner.close()
    raw = sqlite3.connect(tmp_path / "q.db").execute("SELECT body FROM fs_queue").fetchall()
    assert len(raw) == 2 and all(body.startswith(MAGIC) and MARKER not in body for (body,) in raw)
    for name in ("q.db", "q.db-wal"):
        path = tmp_path / name
        if path.exists():
            assert MARKER not in path.read_bytes()
    assert (tmp_path / "keys" / "master.key").stat().st_mode & 0o777 == 0o600


def test_another_master_key_or_an_altered_body_does_not_open(tmp_path):
    sealer = EncryptedQueue(SqliteQueue(tmp_path / "a.db"), LocalKeyProvider(tmp_path / "k1"))
    envelope = sealer.seal(MARKER)
    stranger = EncryptedQueue(SqliteQueue(tmp_path / "b.db"), LocalKeyProvider(tmp_path / "k2"))
    with pytest.raises(KeyUnavailable):
        stranger.open(envelope)
    altered = envelope[:-1] + bytes([envelope[-1] ^ 1])
    with pytest.raises(QueueDecryptError):
        sealer.open(altered)
    with pytest.raises(Error):
        sealer.open(b"plain text")


def test_data_keys_rotate(tmp_path):
    queue = EncryptedQueue(SqliteQueue(tmp_path / "q.db"), LocalKeyProvider(tmp_path / "keys"), rotate_after=2)
    envelopes = [queue.seal(b"x") for _ in range(5)]
    wrapped = [e[6:6 + int.from_bytes(e[4:6], "big")] for e in envelopes]
    assert wrapped[0] == wrapped[1] != wrapped[2] == wrapped[3] != wrapped[4]
    assert [queue.open(e) for e in envelopes] == [b"x"] * 5


def test_a_pushed_batch_is_sealed_in_the_servers_queue(tmp_path):
    from fieldsync.api import create_app
    from fieldsync.auth.tokens import issue_token
    from fieldsync.seed import load_seed
    from fieldsync.ids import new_id
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": "q" * 32, "SYNC_LISTENERS": 0,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}"})
    state = app.extensions["fieldsync"]
    load_seed(state.config, "examples/seed")
    token = issue_token("q" * 32, "rep-asha", "field_rep", {"territory_ids": ["270707fc-40e4-5205-8dad-51e11ccbfacf"]})
    headers = {"Authorization": "Bearer " + token, "Fieldsync-Protocol": "1"}
    client = app.test_client()
    device = client.post("/api/v1/sync/devices", json={"install_id": "i", "schema_version": 1}, headers=headers).json
    retailer = next(r for r in state.store.list("retailer", limit=50).items
                    if r["territory_id"] == "270707fc-40e4-5205-8dad-51e11ccbfacf")
    note = MARKER.decode()
    r = client.post("/api/v1/sync/push", headers=headers, json={
        "device_id": device["device_id"], "schema_version": 1, "mutations": [{
            "seq": 1, "entity": "visit", "op": "insert", "id": new_id(), "base_version": None,
            "client_time": "2026-11-27T09:00:00Z",
            "fields": {"retailer_id": retailer["id"], "territory_id": retailer["territory_id"],
                       "visited_at": "2026-11-27T09:00:00Z", "purpose": "order", "notes": note}}]})
    assert r.status_code == 202
    queue_file = tmp_path / "data" / "queue.db"
    with sqlite3.connect(queue_file) as raw:
        bodies = [b for (b,) in raw.execute("SELECT body FROM fs_queue")]
    assert len(bodies) == 1 and bodies[0].startswith(MAGIC) and MARKER not in bodies[0]
    assert b"notes" not in bodies[0] and b"rep-asha" not in bodies[0]
    assert state.sync.drain() == 1                          # the listener opens it and applies it
    assert [v["notes"] for v in state.store.list("visit", limit=5).items] == [note]
