"""The device store: created from the device schema JSON in one transaction, reopened as is,
migrated additively (new tables and columns; nothing dropped, the outbox kept: invariant 9)."""

from __future__ import annotations

import sqlite3

import pytest

from fieldsync.client import ClientError


def tables(path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    try:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: [c[1] for c in conn.execute(f'PRAGMA table_info("{n}")')] for n in names}
    finally:
        conn.close()


def test_first_open_creates_every_table_from_the_schema_json(make_client, server, schema, tmp_path):
    make_client(server)
    path = tmp_path / "device.db"
    found = tables(path)
    for entity in schema["entities"]:
        columns = [c["name"] for c in entity["columns"]] + [b["name"] for b in entity["bookkeeping_columns"]]
        assert found[entity["table"]] == columns
    for platform in ("_outbox", "_quarantine", "_sync_state", "_meta"):
        assert platform in found
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == schema["schema_version"]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    meta = dict(conn.execute('SELECT key, value FROM "_meta"'))
    assert meta["schema_version"] == str(schema["schema_version"]) and meta["fingerprint"] == schema["fingerprint"]
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"ix_visit_retailer_id", "ix__outbox_status", "ix__outbox_record"} <= indexes
    conn.close()
    assert server.requests == []  # creating a store from a given schema needs no network


def test_without_a_schema_the_store_is_created_from_the_servers(make_client, server, schema):
    server.schema_document = schema
    client = make_client(server, schema=None)
    assert server.paths() == ["/schema"]
    assert client.query("visit") == []


def test_a_reopened_store_keeps_data_and_outbox(make_client, server, visit):
    client = make_client(server)
    record_id = client.insert("visit", visit(notes="kept"))
    client.close()
    again = make_client(server, schema=None)  # no schema given and none fetched: the store has it
    assert again.get("visit", record_id)["notes"] == "kept"
    assert again.status().pending == 1
    assert server.requests == []


def test_a_newer_schema_migrates_additively_keeping_rows_and_outbox(make_client, server, schema, visit, tmp_path):
    client = make_client(server)
    record_id = client.insert("visit", visit(notes="before"))
    client.close()

    newer = dict(schema, schema_version=2, fingerprint="f2")
    newer["entities"] = [dict(e) for e in schema["entities"]]
    for entity in newer["entities"]:
        if entity["name"] == "visit":
            entity["columns"] = entity["columns"] + [{
                "name": "mood", "sqlite_type": "TEXT", "type": "enum", "storage": "text", "required": False,
                "label": "Mood", "primary_key": False, "values": ["good", "bad"], "encryption": "plain", "phi": False}]
    brand_new = dict(next(e for e in schema["entities"] if e["name"] == "territory"),
                     name="region", table="region", indexes=[])
    newer["entities"].append(brand_new)

    client = make_client(server, schema=newer)
    found = tables(tmp_path / "device.db")
    assert "mood" in found["visit"] and "region" in found
    assert client.get("visit", record_id)["notes"] == "before"
    assert client.get("visit", record_id)["mood"] is None
    assert client.status().pending == 1
    client.update("visit", record_id, {"mood": "good"})
    assert client.get("visit", record_id)["mood"] == "good"
    conn = sqlite3.connect(tmp_path / "device.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    conn.close()


def test_an_older_schema_never_downgrades_the_store(make_client, server, schema, tmp_path):
    make_client(server, schema=dict(schema, schema_version=3)).close()
    client = make_client(server, schema=schema)  # an app downgrade: the store stays at 3
    conn = sqlite3.connect(tmp_path / "device.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
    conn.close()
    assert client.query("visit") == []


def test_unknown_entities_and_fields_are_refused(make_client, server):
    client = make_client(server)
    with pytest.raises(ClientError, match="no entity"):
        client.query("spaceship")
    with pytest.raises(ClientError, match="no field"):
        client.query("visit", order_by="colour")
