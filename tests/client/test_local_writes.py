"""Local writes (§10.1): the row and its outbox entry in one transaction, values validated like
the server validates them, reads in wire form, no network."""

from __future__ import annotations

import json
import sqlite3

import pytest

from fieldsync.client import ClientError, ValidationError


def outbox(path) -> list[dict]:
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute('SELECT * FROM "_outbox" ORDER BY seq')]
    finally:
        conn.close()


def count(path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    finally:
        conn.close()


def add_failing_trigger(path, table: str, event: str) -> None:
    """A real database failure inside the write's transaction (a trigger that aborts)."""
    conn = sqlite3.connect(path)
    conn.execute(f'CREATE TRIGGER fail_{table.strip("_")} BEFORE {event} ON "{table}" '
                 "BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END")
    conn.commit()
    conn.close()


def test_insert_writes_the_row_and_its_outbox_entry(make_client, server, visit, tmp_path, clock):
    client = make_client(server)
    record_id = client.insert("visit", visit(notes="met owner", duration_minutes=30, location={"lat": 28.6, "lon": 77}))
    row = client.get("visit", record_id)
    assert row["notes"] == "met owner" and row["location"] == {"lat": 28.6, "lon": 77.0}
    assert row["visited_at"] == "2026-11-26T15:00:00.000000Z" and row["version"] == 0
    [entry] = outbox(tmp_path / "device.db")
    assert entry["op"] == "insert" and entry["record_id"] == record_id and entry["status"] == "pending"
    assert entry["base_version"] is None
    assert json.loads(entry["fields"])["duration_minutes"] == 30
    assert entry["client_time"] == "2026-11-27T09:00:00.000000Z"
    assert server.requests == []


def test_ids_are_time_ordered_uuid7(make_client, server, visit, clock):
    client = make_client(server)
    ids = []
    for _ in range(5):
        ids.append(client.insert("visit", visit()))
        clock.advance(0.001)
    assert ids == sorted(ids) and all(i[14] == "7" for i in ids)


def test_a_failing_outbox_insert_leaves_no_row_either(make_client, server, visit, tmp_path):
    client = make_client(server)
    add_failing_trigger(tmp_path / "device.db", "_outbox", "INSERT")
    with pytest.raises(sqlite3.DatabaseError, match="simulated"):
        client.insert("visit", visit())
    assert count(tmp_path / "device.db", "visit") == 0 and outbox(tmp_path / "device.db") == []


def test_a_failing_update_or_delete_leaves_the_row_as_it_was(make_client, server, visit, tmp_path):
    client = make_client(server)
    record_id = client.insert("visit", visit(notes="original"))
    add_failing_trigger(tmp_path / "device.db", "_outbox", "INSERT")
    with pytest.raises(sqlite3.DatabaseError):
        client.update("visit", record_id, {"notes": "changed"})
    with pytest.raises(sqlite3.DatabaseError):
        client.delete("visit", record_id)
    assert client.get("visit", record_id)["notes"] == "original"
    assert len(outbox(tmp_path / "device.db")) == 1


def test_update_queues_only_changed_fields_with_the_base_version(make_client, server, visit, tmp_path):
    client = make_client(server)
    record_id = client.insert("visit", visit(notes="a"))
    client.update("visit", record_id, {"notes": "b", "purpose": "order"})  # purpose unchanged
    client.update("visit", record_id, {"notes": "b"})                       # nothing changes: no entry
    entries = outbox(tmp_path / "device.db")
    assert [e["op"] for e in entries] == ["insert", "update"]
    assert json.loads(entries[1]["fields"]) == {"notes": "b"} and entries[1]["base_version"] == 0
    assert entries[1]["seq"] > entries[0]["seq"]


def test_delete_hides_the_row_but_keeps_it_until_settled(make_client, server, visit, tmp_path):
    client = make_client(server)
    record_id = client.insert("visit", visit())
    client.delete("visit", record_id)
    assert client.get("visit", record_id) is None and client.query("visit") == []
    assert count(tmp_path / "device.db", "visit") == 1
    assert [e["op"] for e in outbox(tmp_path / "device.db")] == ["insert", "delete"]
    with pytest.raises(ClientError, match="no visit"):
        client.update("visit", record_id, {"notes": "too late"})


def test_bad_values_raise_validation_error_naming_field_and_reason(make_client, server, visit, tmp_path):
    client = make_client(server)
    with pytest.raises(ValidationError) as caught:
        client.insert("visit", visit(purpose="gossip", duration_minutes="long", visited_at="yesterday"))
    problems = {p.field: p.reason for p in caught.value.problems}
    assert problems["purpose"].startswith("must be one of")
    assert problems["duration_minutes"] == "must be a whole number"
    assert "ISO 8601" in problems["visited_at"]
    with pytest.raises(ValidationError, match="retailer_id"):
        client.insert("visit", {"purpose": "order"})
    with pytest.raises(ValidationError, match="is set by the server"):
        client.insert("visit", visit(rep_id="someone-else"))
    with pytest.raises(ValidationError, match="not a field"):
        client.insert("visit", visit(colour="red"))
    with pytest.raises(ValidationError, match="comes from the server"):
        client.insert("product", {"sku": "x"})
    assert outbox(tmp_path / "device.db") == [] and client.query("visit") == []


def test_values_come_back_in_wire_form(make_client, server, tmp_path):
    client = make_client(server)
    record_id = client.insert("expense", {"spent_on": "2026-11-20", "category": "meals", "amount": 12.5,
                                          "approved": False, "details": {"receipts": [1, 2]}})
    row = client.get("expense", record_id)
    assert row["amount"] == "12.50" and row["approved"] is False and row["details"] == {"receipts": [1, 2]}
    assert row["spent_on"] == "2026-11-20" and row["currency"] == "INR"  # the field's default


def test_query_filters_orders_and_limits(make_client, server, visit, clock):
    client = make_client(server)
    for minutes, purpose in ((30, "order"), (10, "survey"), (20, "order")):
        client.insert("visit", visit(duration_minutes=minutes, purpose=purpose))
        clock.advance(1)
    assert [r["duration_minutes"] for r in client.query("visit", where={"purpose": "order"},
                                                        order_by="duration_minutes")] == [20, 30]
    assert [r["duration_minutes"] for r in client.query("visit", order_by="-duration_minutes", limit=2)] == [30, 20]
    assert [r["duration_minutes"] for r in client.query("visit", where={"notes": None})] == [30, 10, 20]
    with pytest.raises(ValidationError):
        client.query("visit", where={"duration_minutes": "many"})
