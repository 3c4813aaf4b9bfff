"""Applying pull pages and results (§5.2, §6.3, §10.2, §10.3 with sync-design.md decisions 3, 4,
6): pages are given as dicts by a scripted server; each is applied in one local transaction."""

from __future__ import annotations

import json
import sqlite3

import pytest

from fieldsync.client import ProtocolError

PROBLEMS = "https://fieldsync.dev/problems/"
ORDER = "0192a000-0000-7000-8000-000000000901"
LINE_1 = "0192a000-0000-7000-8000-000000000911"
LINE_2 = "0192a000-0000-7000-8000-000000000912"
RETAILER = "0192a000-0000-7000-8000-000000000301"
TERRITORY = "0192a000-0000-7000-8000-000000000011"
P1 = "0192a000-0000-7000-8000-000000000501"
P2 = "0192a000-0000-7000-8000-000000000502"


def page(cursor, changes=(), results=(), **extra):
    body = {"device_id": "device-1", "schema_version": 1, "phase": "stream", "cursor": cursor, "resume": None,
            "scope_hash": "s1:aa", "has_more": False, "remaining": 0, "head": cursor, "windows": {},
            "changes": list(changes), "results": list(results), "write_checkpoint": 0, "unsettled": 0}
    body.update(extra)
    return body


def product(record_id, version, position, name="Tablet", **extra):
    row = {"sku": "SKU-" + record_id[-3:], "name": name, "category": "pharma", "unit_price": "10.00",
           "created_at": "2026-01-01T00:00:00.000000Z", "updated_at": f"2026-01-0{version}T00:00:00.000000Z"}
    row.update(extra)
    return {"kind": "upsert", "entity": "product", "id": record_id, "position": position, "version": version,
            "row": row}


def script_pulls(server, pages):
    """Answer the next pulls with `pages` (then fall back to the fake server)."""
    queue = list(pages)

    def hook(method, path, body, headers):
        if path.endswith("/pull") and queue:
            return 200, {}, json.dumps(queue.pop(0)).encode()
        return None
    server.hooks.append(hook)
    return queue


def raw_rows(tmp_path, table):
    conn = sqlite3.connect(tmp_path / "device.db")
    conn.row_factory = sqlite3.Row
    try:
        return {r["id"]: dict(r) for r in conn.execute(f'SELECT * FROM "{table}"')}
    finally:
        conn.close()


def test_upsert_patch_delete_and_remove(make_client, server, tmp_path):
    client = make_client(server)
    script_pulls(server, [
        page(3, [product(P1, 1, 1), product(P2, 1, 2)]),
        page(5, [{"kind": "patch", "entity": "product", "id": P1, "position": 4, "version": 2, "from_version": 1,
                  "fields": {"name": "Tablet XL", "active": True}, "updated_at": "2026-02-01T00:00:00.000000Z"},
                 {"kind": "delete", "entity": "product", "id": P2, "position": 5, "version": 2}]),
        page(6, [{"kind": "remove", "entity": "product", "id": P1, "position": 6, "reason": "scope"}]),
    ])
    report = client.sync()
    assert report.pages == 1 and report.pulled == 2 and report.cursor == 3
    assert client.get("product", P1)["name"] == "Tablet" and client.get("product", P2)["version"] == 1
    client.sync()
    p1 = client.get("product", P1)
    assert (p1["name"], p1["active"], p1["version"], p1["updated_at"]) == ("Tablet XL", True, 2,
                                                                           "2026-02-01T00:00:00.000000Z")
    assert p1["sku"] == "SKU-501"  # fields not in the patch are kept
    assert client.get("product", P2) is None
    client.sync()
    assert client.query("product") == [] and client.status().cursor == 6


def test_upsert_clears_fields_absent_from_row_and_ignores_older_versions(make_client, server):
    client = make_client(server)
    script_pulls(server, [page(1, [product(P1, 2, 1, description="long text")]),
                          page(2, [product(P1, 1, 2, name="older")]),
                          page(3, [product(P1, 3, 3)])])
    client.sync()
    assert client.get("product", P1)["description"] == "long text"
    client.sync()
    assert client.get("product", P1)["name"] == "Tablet"   # version 1 < 2: ignored
    client.sync()
    row = client.get("product", P1)
    assert row["version"] == 3 and row["description"] is None  # hidden or cleared field -> NULL


def test_a_patch_that_does_not_fit_asks_for_a_refetch(make_client, server):
    client = make_client(server)
    script_pulls(server, [
        page(1, [product(P1, 1, 1)]),
        page(3, [{"kind": "patch", "entity": "product", "id": P1, "position": 3, "version": 3, "from_version": 2,
                  "fields": {"name": "skipped a version"}, "updated_at": "2026-03-01T00:00:00.000000Z"},
                 {"kind": "patch", "entity": "product", "id": P2, "position": 2, "version": 2, "from_version": 1,
                  "fields": {"name": "never seen"}, "updated_at": "2026-03-01T00:00:00.000000Z"}]),
        page(4, [product(P1, 3, 4, name="refetched")]),
        page(5),
    ])
    client.sync()
    client.sync()
    assert client.get("product", P1)["name"] == "Tablet" and client.get("product", P2) is None
    client.sync()
    pulls = server.bodies("/pull")
    assert sorted(i["id"] for i in pulls[2]["refetch"]) == [P1, P2]
    assert client.get("product", P1)["name"] == "refetched"
    client.sync()
    assert server.bodies("/pull")[3]["refetch"] == []  # answered: not asked again


def test_dirty_rows_keep_their_local_values_whatever_arrives(make_client, server, visit, tmp_path):
    client = make_client(server)
    server.auto_process = False  # the pushes stay unprocessed: the rows stay dirty
    kept = client.insert("visit", visit(notes="mine"))
    deleted_here = client.insert("visit", visit(notes="also mine"))
    v = lambda rid, version, pos, notes: {"kind": "upsert", "entity": "visit", "id": rid, "position": pos,
                                          "version": version, "row": {**visit(notes=notes)}}
    script_pulls(server, [page(4, [v(kept, 5, 1, "server's"),
                                   {"kind": "patch", "entity": "visit", "id": kept, "position": 2, "version": 6,
                                    "from_version": 5, "fields": {"notes": "patched"}, "updated_at": None},
                                   {"kind": "remove", "entity": "visit", "id": deleted_here, "position": 3,
                                    "reason": "scope"},
                                   {"kind": "clear", "entity": "visit"},
                                   {"kind": "delete", "entity": "visit", "id": kept, "position": 4, "version": 7}])])
    client.sync()
    assert client.get("visit", kept)["notes"] == "mine" and client.get("visit", kept)["version"] == 0
    assert client.get("visit", deleted_here)["notes"] == "also mine"
    assert all(r["_dirty"] == 1 for r in raw_rows(tmp_path, "visit").values())


def test_clear_deletes_clean_rows_of_the_entity_only(make_client, server, visit):
    client = make_client(server)
    script_pulls(server, [page(2, [product(P1, 1, 1), product(P2, 1, 2)]),
                          page(2, [{"kind": "clear", "entity": "product"}, product(P2, 1, 2)], scope_hash="s1:bb")])
    client.sync()
    mine = client.insert("visit", visit())
    client.sync()
    assert [r["id"] for r in client.query("product")] == [P2]
    assert client.get("visit", mine) is not None


def test_removing_a_parent_deletes_its_clean_children(make_client, server):
    client = make_client(server)
    order_row = {"retailer_id": RETAILER, "territory_id": TERRITORY, "ordered_at": "2026-11-20T10:00:00.000000Z",
                 "rep_id": "user", "status": "submitted"}
    line = lambda rid: {"kind": "upsert", "entity": "order_line", "id": rid, "position": 2, "version": 1,
                        "row": {"order_id": ORDER, "product_id": P1, "quantity": 1}}
    script_pulls(server, [page(3, [{"kind": "upsert", "entity": "order", "id": ORDER, "position": 1, "version": 1,
                                    "row": order_row}, line(LINE_1), line(LINE_2)]),
                          page(4, [{"kind": "remove", "entity": "order", "id": ORDER, "position": 4,
                                    "reason": "scope"}])])
    client.sync()
    assert len(client.query("order_line")) == 2
    client.update("order_line", LINE_2, {"quantity": 5})  # a dirty child stays until it settles
    server.auto_process = False
    client.sync()
    assert client.get("order", ORDER) is None
    assert [r["id"] for r in client.query("order_line")] == [LINE_2]


def _order_with_lines(ordered_at="2026-11-20T10:00:00.000000Z"):
    order_row = {"retailer_id": RETAILER, "territory_id": TERRITORY, "ordered_at": ordered_at,
                 "rep_id": "user", "status": "submitted"}
    line = lambda rid: {"kind": "upsert", "entity": "order_line", "id": rid, "position": 2, "version": 1,
                        "row": {"order_id": ORDER, "product_id": P1, "quantity": 1}}
    return [{"kind": "upsert", "entity": "order", "id": ORDER, "position": 1, "version": 1, "row": order_row},
            line(LINE_1), line(LINE_2)]


def test_removing_a_dirty_parent_keeps_it_and_all_its_children(make_client, server):
    """protocol §6.3: a remove of a dirty parent is skipped, and its children stay with it."""
    client = make_client(server)
    script_pulls(server, [page(3, _order_with_lines()),
                          page(4, [{"kind": "remove", "entity": "order", "id": ORDER, "position": 4,
                                    "reason": "scope"}])])
    client.sync()
    client.update("order", ORDER, {"remarks": "mine"})   # the parent is dirty
    server.auto_process = False
    client.sync()
    assert client.get("order", ORDER) is not None
    assert sorted(r["id"] for r in client.query("order_line")) == [LINE_1, LINE_2]


def test_a_window_purge_takes_the_clean_children_of_a_purged_parent(make_client, server):
    """protocol §6.6: a clean row below the floor goes with its clean children; a dirty child stays."""
    client = make_client(server)
    script_pulls(server, [page(3, _order_with_lines("2026-01-02T10:00:00.000000Z")),
                          page(3, [], windows={"order": "2026-06-01T00:00:00Z"})])
    client.sync()
    client.update("order_line", LINE_2, {"quantity": 5})
    server.auto_process = False
    client.sync()
    assert client.get("order", ORDER) is None
    assert [r["id"] for r in client.query("order_line")] == [LINE_2]


def test_results_settle_entries_applied_deleted_rejected_quarantined(make_client, server, visit, tmp_path):
    client = make_client(server)
    server.auto_process = False
    ok = client.insert("visit", visit(notes="fine"))
    bad = client.insert("visit", visit(notes="REJECT"))
    client.sync()
    assert client.status().received == 2
    server.reject = lambda m: "validation" if m["fields"].get("notes") == "REJECT" else None
    server.process()
    report = client.sync()
    assert (report.applied, report.rejected) == (1, 1)
    status = client.status()
    assert (status.pending, status.sent, status.received, status.quarantined) == (0, 0, 0, 1)
    # applied: the entry is gone, the row is the server's (version 1, clean)
    rows = raw_rows(tmp_path, "visit")
    assert rows[ok]["_version"] == 1 and rows[ok]["_dirty"] == 0 and rows[ok]["_created_at"]
    # rejected with row null (the record does not exist on the server): the local row goes
    assert bad not in rows
    [q] = client.quarantined()
    assert (q.entity, q.op, q.record_id, q.name) == ("visit", "insert", bad, "validation")
    assert q.code == PROBLEMS + "validation" and q.reason.startswith("validation")
    assert q.fields["notes"] == "REJECT" and q.errors == [{"field": "notes", "reason": "refused"}]


def test_a_rejected_update_repairs_the_row_from_the_result(make_client, server, visit):
    client = make_client(server)
    record_id = client.insert("visit", visit(notes="v1"))
    client.sync()
    client.sync()
    assert client.get("visit", record_id)["version"] == 1
    server.reject = lambda m: "stale" if m["op"] == "update" else None
    client.update("visit", record_id, {"notes": "mine, refused"})
    client.sync()
    row = client.get("visit", record_id)
    assert row["notes"] == "v1" and row["version"] == 1   # repaired from the result's row
    assert client.quarantined()[0].name == "stale"


def test_a_record_with_two_entries_settles_on_the_last(make_client, server, visit, tmp_path):
    client = make_client(server)
    server.auto_process = False
    record_id = client.insert("visit", visit(notes="first"))
    client.sync()                     # insert received, not processed
    client.update("visit", record_id, {"notes": "second"})
    server.process()                  # the insert is applied (version 1, notes "first")
    client.sync()                     # pushes the update; the insert's result arrives
    rows = raw_rows(tmp_path, "visit")
    assert rows[record_id]["notes"] == "second" and rows[record_id]["_dirty"] == 1  # not settled yet
    server.process()
    client.sync()
    rows = raw_rows(tmp_path, "visit")
    assert rows[record_id]["notes"] == "second" and rows[record_id]["_version"] == 2
    assert rows[record_id]["_dirty"] == 0 and client.status().received == 0


def test_a_page_that_fails_midway_leaves_the_store_untouched(make_client, server):
    client = make_client(server)
    script_pulls(server, [page(2, [product(P1, 1, 1), {"kind": "teleport", "entity": "product", "id": P2,
                                                       "position": 2, "version": 1}]),
                          page(2, [product(P1, 1, 1), product(P2, 1, 2)])])
    with pytest.raises(ProtocolError, match="teleport"):
        client.sync()
    assert client.get("product", P1) is None and client.status().cursor == 0
    client.sync()  # the same range is pulled again from the old cursor
    assert server.bodies("/pull")[1]["cursor"] == 0
    assert {r["id"] for r in client.query("product")} == {P1, P2}


def test_sync_reset_keeps_outbox_quarantine_and_device_id(make_client, server, visit, tmp_path):
    client = make_client(server)
    script_pulls(server, [page(7, [product(P1, 1, 1)], write_checkpoint=0)])
    client.sync()
    server.auto_process = False
    server.reject = lambda m: "validation" if m["fields"].get("notes") == "REJECT" else None
    client.insert("visit", visit(notes="REJECT"))
    client.sync()
    server.process()
    client.sync()
    assert client.status().quarantined == 1
    pending = client.insert("visit", visit(notes="offline"))
    device_id = client.status().device_id

    def reset_once(method, path, body, headers, done=[]):
        if path.endswith("/pull") and not done:
            done.append(True)
            return 410, {}, json.dumps({"type": PROBLEMS + "sync-reset", "status": 410, "horizon": 35100}).encode()
    server.hooks.append(reset_once)
    report = client.sync()
    assert report.complete
    pulls = server.bodies("/pull")
    assert pulls[-1]["cursor"] == 0 and pulls[-1]["scope_hash"] is None and pulls[-1]["resume"] is None
    assert client.get("product", P1) is None   # clean: dropped by the reset, not in the snapshot
    status = client.status()
    assert status.device_id == device_id and status.quarantined == 1
    assert client.get("visit", pending)["notes"] == "offline"


def test_reset_drops_clean_rows_and_keeps_dirty_ones(make_client, server, visit):
    client = make_client(server)
    script_pulls(server, [page(1, [product(P1, 1, 1)])])
    client.sync()
    server.auto_process = False
    dirty = client.insert("visit", visit(notes="unsent"))

    def reset_then_empty(method, path, body, headers, calls=[]):
        if path.endswith("/push"):
            return 503, {"retry-after": "5"}, b"{}"
        if path.endswith("/pull"):
            calls.append(body)
            if len(calls) == 1:
                return 410, {}, json.dumps({"type": PROBLEMS + "sync-reset", "status": 410}).encode()
            return 200, {}, json.dumps(page(9)).encode()
    server.hooks.append(reset_then_empty)
    from fieldsync.client import ServerUnavailable
    with pytest.raises(ServerUnavailable) as caught:
        client.sync()
    assert caught.value.retry_after == 5
    server.hooks.clear()
    server.hooks.append(lambda m, p, b, h: reset_then_empty(m, p, b, h) if p.endswith("/pull") else None)
    client.sync()
    assert client.get("product", P1) is None          # clean: dropped by the reset
    assert client.get("visit", dirty)["notes"] == "unsent"


def test_window_floor_purges_clean_rows_below_it(make_client, server, schema, visit):
    for entity in schema["entities"]:
        if entity["name"] == "visit":  # schema.json does not carry window_field yet (see report)
            entity["sync"] = dict(entity["sync"], window_field="visited_at")
    client = make_client(server, schema=schema)
    old = {"kind": "upsert", "entity": "visit", "id": P1, "position": 1, "version": 1,
           "row": visit(visited_at="2026-08-01T00:00:00.000000Z")}
    recent = {"kind": "upsert", "entity": "visit", "id": P2, "position": 2, "version": 1,
              "row": visit(visited_at="2026-08-29T00:00:00.000000Z")}
    script_pulls(server, [page(2, [old, recent]),
                          page(2, windows={"visit": "2026-08-29T00:00:00Z"})])
    client.sync()
    server.auto_process = False
    mine = client.insert("visit", visit(visited_at="2026-01-01T00:00:00Z"))  # dirty: kept
    client.sync()
    assert {r["id"] for r in client.query("visit")} == {P2, mine}
