"""Pull pages on the server: snapshot, stream change kinds, scope changes, windows, resets,
and the protocol's request-level rules (version header, schema versions, compression, limits)."""

from __future__ import annotations

import gzip
import json

import pytest
import zstandard

from fieldsync.api import create_app
from fieldsync.auth.tokens import issue_token
from fieldsync.seed import load_seed
from fieldsync.ids import new_id
from fieldsync.sync.service import compact_history

from test_server_push import PUNE_CENTRAL, PUNE_RURAL, SECRET, Device, retailer_in, visit_fields


@pytest.fixture
def app(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}"})
    load_seed(app.extensions["fieldsync"].config, "examples/seed")
    yield app
    app.extensions["fieldsync"].engine.dispose()


def apply_pages(pages, local=None):
    """A device store in a dict {(entity, id): row}: applies pages as docs/sync-design.md says."""
    local = {} if local is None else local
    for page in pages:
        for ch in page["changes"]:
            key = (ch.get("entity"), ch.get("id"))
            if ch["kind"] == "clear":
                for k in [k for k in local if k[0] == ch["entity"]]:
                    del local[k]
            elif ch["kind"] == "upsert":
                if key not in local or local[key]["version"] < ch["version"]:
                    local[key] = dict(ch["row"], version=ch["version"])
            elif ch["kind"] == "patch":
                assert key in local and local[key]["version"] == ch["from_version"], ch
                local[key].update(ch["fields"], version=ch["version"])
            elif ch["kind"] in ("delete", "remove"):
                local.pop(key, None)
    return local


def server_view(app, entity, predicate):
    store = app.extensions["fieldsync"].store
    return {r["id"]: r for r in store.list(entity, limit=1000).items if predicate(r)}


def test_first_pull_is_a_snapshot_of_the_scope_only(app):
    dev = Device(app)
    pages = dev.pull_all(limit=3)
    assert pages[0]["phase"] == "snapshot" and pages[0]["resume"] is not None and pages[0]["cursor"] == 0
    assert pages[-1]["resume"] is None and pages[-1]["cursor"] == pages[-1]["head"]
    assert all(p["scope_hash"] is None for p in pages[:-1]) and pages[-1]["scope_hash"].startswith("s1:")
    local = apply_pages(pages)
    retailers = {k[1] for k in local if k[0] == "retailer"}
    assert retailers == set(server_view(app, "retailer", lambda r: r["territory_id"] == PUNE_CENTRAL))
    assert {k[1] for k in local if k[0] == "territory"} == {PUNE_CENTRAL}
    product_rows = [v for k, v in local.items() if k[0] == "product"]
    assert product_rows and all(row["active"] for row in product_rows)   # the role's row filter
    assert not any(k[0] == "prescription" for k in local)   # push-only entities are never pulled


def test_stream_sends_patches_deletes_and_removals(app):
    dev = Device(app)
    pages = dev.pull_all()
    local = apply_pages(pages)
    cursor, scope_hash = pages[-1]["cursor"], pages[-1]["scope_hash"]
    store = app.extensions["fieldsync"].store
    central = sorted(server_view(app, "retailer", lambda r: r["territory_id"] == PUNE_CENTRAL))
    rural = sorted(server_view(app, "retailer", lambda r: r["territory_id"] == PUNE_RURAL))
    store.update("retailer", central[0], {"phone": "+91 20 0000 0001"}, expected_version=1)   # patch
    store.update("retailer", central[1], {"territory_id": PUNE_RURAL}, expected_version=1)    # leaves scope
    store.update("retailer", rural[0], {"territory_id": PUNE_CENTRAL}, expected_version=1)    # enters scope
    store.update("retailer", rural[1], {"phone": "+91 20 0000 0002"}, expected_version=1)     # never seen
    pages = dev.pull_all(cursor=cursor, scope_hash=scope_hash)
    kinds = {(c["kind"], c["id"]) for p in pages for c in p["changes"]}
    assert ("patch", central[0]) in kinds and ("remove", central[1]) in kinds and ("upsert", rural[0]) in kinds
    assert not any(i == rural[1] for _, i in kinds)      # nothing about a record it may not see
    patch = next(c for p in pages for c in p["changes"] if c["id"] == central[0])
    assert patch["fields"] == {"phone": "+91 20 0000 0001"} and patch["from_version"] == 1
    local = apply_pages(pages, local)
    expected = server_view(app, "retailer", lambda r: r["territory_id"] == PUNE_CENTRAL)
    assert {k[1] for k in local if k[0] == "retailer"} == set(expected)
    for rid, row in expected.items():
        assert local[("retailer", rid)]["phone"] == row["phone"]


def test_new_territory_brings_old_rows_and_dropped_one_is_purged(app):
    """Invariant 4 for scope changes: the rows of a territory given later have positions older
    than the cursor, and still arrive; the rows of a territory taken away are removed."""
    dev = Device(app)
    pages = dev.pull_all()
    local = apply_pages(pages)
    cursor, old_hash = pages[-1]["cursor"], pages[-1]["scope_hash"]
    dev.token = issue_token(SECRET, "rep-asha", "field_rep", {"territory_ids": [PUNE_RURAL]})
    pages = dev.pull_all(cursor=cursor, scope_hash=old_hash, limit=2)
    assert pages[0]["phase"] == "rescope" and pages[-1]["scope_hash"] != old_hash
    assert all(p["cursor"] == cursor for p in pages)
    local = apply_pages(pages, local)
    assert {k[1] for k in local if k[0] == "retailer"} == \
        set(server_view(app, "retailer", lambda r: r["territory_id"] == PUNE_RURAL))
    assert {k[1] for k in local if k[0] == "territory"} == {PUNE_RURAL}
    # products do not depend on territories: not cleared, not re-sent
    assert not any(c.get("entity") == "product" for p in pages for c in p["changes"])


def test_lost_resume_restarts_the_phase_safely(app):
    dev = Device(app)
    first = dev.post("/pull", {"device_id": dev.device_id, "schema_version": 1, "cursor": 0, "limit": 2}).json
    assert first["resume"]
    forged = first["resume"][:-2] + ("AA" if not first["resume"].endswith("AA") else "BB")
    r = dev.post("/pull", {"device_id": dev.device_id, "schema_version": 1, "cursor": 0, "limit": 2,
                           "resume": forged})
    assert r.status_code == 400 and r.json["type"].endswith("/invalid-resume")
    again = dev.pull_all(limit=2)       # no resume: the phase starts over
    assert again[0]["changes"][0] == {"kind": "clear", "entity": "territory"}


def test_parent_entering_scope_brings_its_children(app):
    dev = Device(app)
    oid = new_id()
    store = app.extensions["fieldsync"].store
    product = store.list("product", limit=1).items[0]
    order = store.create("order", {"id": oid, "rep_id": "rep-asha", "retailer_id": retailer_in(app, PUNE_RURAL)["id"],
                                   "territory_id": PUNE_RURAL, "ordered_at": "2026-11-27T09:00:00Z"},
                         children={"lines": [{"product_id": product["id"], "quantity": 2, "unit_price": "10.00"}]})
    pages = dev.pull_all()
    assert ("order", oid) not in apply_pages(pages)
    cursor, scope_hash = pages[-1]["cursor"], pages[-1]["scope_hash"]
    store.update("order", oid, {"territory_id": PUNE_CENTRAL, "retailer_id": retailer_in(app, PUNE_CENTRAL)["id"]},
                 expected_version=1)
    pages = dev.pull_all(cursor=cursor, scope_hash=scope_hash)
    local = apply_pages(pages)
    line_id = order["lines"][0]["id"]
    assert ("order", oid) in local and ("order_line", line_id) in local


def test_window_floors_are_reported_and_old_rows_not_sent(app):
    dev = Device(app)
    store = app.extensions["fieldsync"].store
    old = store.create("visit", {"rep_id": "rep-asha", "retailer_id": retailer_in(app, PUNE_CENTRAL)["id"],
                                 "territory_id": PUNE_CENTRAL, "visited_at": "2020-01-01T00:00:00Z",
                                 "purpose": "order"})
    new = store.create("visit", {"rep_id": "rep-asha", **visit_fields(app)})
    pages = dev.pull_all()
    assert set(pages[-1]["windows"]) == {"order", "visit", "expense"}
    local = apply_pages(pages)
    assert ("visit", new["id"]) in local and ("visit", old["id"]) not in local


def test_cursor_older_than_retention_gets_a_typed_reset(app):
    import datetime as dt
    dev = Device(app)
    pages = dev.pull_all()
    cursor = pages[-1]["cursor"]
    state = app.extensions["fieldsync"]
    store = state.store
    store.update("retailer", retailer_in(app, PUNE_CENTRAL)["id"], {"phone": "+91 20 0000 0009"}, expected_version=1)
    store.update("retailer", retailer_in(app, PUNE_CENTRAL)["id"], {"phone": "+91 20 0000 0010"}, expected_version=2)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    done = compact_history(state.engine, store, retention_days=0, now=later)
    assert done["changes_deleted"] > 0
    r = dev.post("/pull", {"device_id": dev.device_id, "schema_version": 1, "cursor": cursor,
                           "scope_hash": pages[-1]["scope_hash"]})
    assert r.status_code == 410 and r.json["type"].endswith("/sync-reset")
    assert r.json["reason"] == "cursor-too-old" and r.json["horizon"] > cursor
    # the reset procedure: cursor 0, no scope hash -> a snapshot that converges
    local = apply_pages(dev.pull_all())
    assert local[("retailer", retailer_in(app, PUNE_CENTRAL)["id"])]["phone"] == "+91 20 0000 0010"
    r = dev.post("/pull", {"device_id": dev.device_id, "schema_version": 1, "cursor": 10 ** 9})
    assert r.status_code == 410 and r.json["reason"] == "cursor-ahead"


def test_protocol_header_schema_versions_and_devices(app):
    dev = Device(app)
    client = app.test_client()
    no_header = client.post("/api/v1/sync/pull", json={}, headers={"Authorization": "Bearer " + dev.token})
    assert no_header.status_code == 400 and no_header.json["supported"] == [1]
    no_token = client.post("/api/v1/sync/pull", json={}, headers={"Fieldsync-Protocol": "1"})
    assert no_token.status_code == 401
    too_new = dev.post("/pull", {"device_id": dev.device_id, "schema_version": 2, "cursor": 0})
    assert too_new.status_code == 409 and too_new.json["type"].endswith("/schema-too-new")
    push_new = dev.post("/push", {"device_id": dev.device_id, "schema_version": 2, "mutations": [
        dev.mutation("visit", "insert", new_id(), visit_fields(app))]})
    assert push_new.status_code == 409
    assert app.extensions["fieldsync"].sync.queue.pending() == 0       # nothing received
    unknown = dev.post("/pull", {"device_id": new_id(), "schema_version": 1, "cursor": 0})
    assert unknown.status_code == 404 and unknown.json["type"].endswith("/unknown-device")
    thief = Device(app, user="rep-other", install="i-9")
    stolen = thief.post("/pull", {"device_id": dev.device_id, "schema_version": 1, "cursor": 0})
    assert stolen.status_code == 403 and stolen.json["type"].endswith("/device-user-mismatch")
    again = dev.post("/devices", {"install_id": "i-1", "schema_version": 1})
    assert again.status_code == 200 and again.json["device_id"] == dev.device_id
    listing = client.get("/api/v1/sync/devices", headers={
        "Authorization": "Bearer " + issue_token(SECRET, "admin-meera", "admin", {}), "Fieldsync-Protocol": "1"})
    assert {d["device_id"] for d in listing.json["items"]} == {dev.device_id, thief.device_id}
    assert dev.client.get("/api/v1/sync/devices", headers=dev.headers()).status_code == 403


def test_ack_is_monotonic_and_bounded(app):
    dev = Device(app)
    pages = dev.pull_all()
    head = pages[-1]["cursor"]
    ack = dev.post("/ack", {"device_id": dev.device_id, "cursor": head, "results_through": 0,
                            "outbox": {"pending": 2}, "quarantined": 1})
    assert ack.status_code == 200 and ack.json["acked_cursor"] == head
    lower = dev.post("/ack", {"device_id": dev.device_id, "cursor": 0})
    assert lower.json["acked_cursor"] == head
    beyond = dev.post("/ack", {"device_id": dev.device_id, "cursor": head + 5})
    assert beyond.status_code == 400
    status = dev.client.get(f"/api/v1/sync/devices/{dev.device_id}", headers=dev.headers()).json
    assert status["device_reported"]["outbox"] == {"pending": 2} and status["acked_cursor"] == head


def test_bodies_are_compressed_both_ways_and_limited(app, tmp_path):
    dev = Device(app)
    body = json.dumps({"device_id": dev.device_id, "schema_version": 1, "cursor": 0}).encode()
    r = dev.client.post("/api/v1/sync/pull", data=gzip.compress(body), headers={
        **dev.headers(), "Content-Type": "application/json", "Content-Encoding": "gzip", "Accept-Encoding": "zstd"})
    assert r.status_code == 200 and r.headers["Content-Encoding"] == "zstd"
    page = json.loads(zstandard.ZstdDecompressor().stream_reader(r.data).read())
    assert page["phase"] == "snapshot"
    r = dev.client.post("/api/v1/sync/pull", data=body, headers={
        **dev.headers(), "Content-Type": "application/json", "Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip" and json.loads(gzip.decompress(r.data))["phase"] == "snapshot"
    r = dev.client.post("/api/v1/sync/pull", data=body, headers={**dev.headers(), "Content-Encoding": "br"})
    assert r.status_code == 415 and "gzip" in r.headers["Accept-Encoding"]
    # a decompression bomb: small on the wire, over the limit once inflated
    bomb = gzip.compress(b'{"pad": "' + b"a" * (5 * 1024 * 1024) + b'"}')
    assert len(bomb) < 4 * 1024 * 1024
    r = dev.client.post("/api/v1/sync/push", data=bomb, headers={**dev.headers(), "Content-Encoding": "gzip",
                                                                  "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json["max_bytes"] == 4 * 1024 * 1024
    many = [dev.mutation("visit", "insert", new_id(), {}) for _ in range(1001)]
    r = dev.post("/push", {"device_id": dev.device_id, "schema_version": 1, "mutations": many})
    assert r.status_code == 413 and r.json["max_mutations"] == 1000
    assert app.extensions["fieldsync"].sync.queue.pending() == 0


def test_fields_the_role_may_not_see_are_never_sent(defs_copy, tmp_path):
    """Invariant 6 for columns: a product field outside field_rep's `visible` list stays on the
    server, in snapshots, patches and results alike."""
    path = defs_copy / "masters" / "product.yaml"
    text = path.read_text()
    path.write_text(text.replace("fields:\n", "fields:\n  cost_price:\n    type: decimal\n    precision: 10\n"
                                 "    scale: 2\n", 1))
    app = create_app({"DATA_DIR": str(tmp_path / "d2"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 's2.db'}", "DEFS_DIR": str(defs_copy)})
    load_seed(app.extensions["fieldsync"].config, "examples/seed")
    store = app.extensions["fieldsync"].store
    product = next(p for p in store.list("product", limit=100).items if p["active"])
    store.update("product", product["id"], {"cost_price": "12.50"}, expected_version=product["version"])
    dev = Device(app)
    pages = dev.pull_all()
    assert "12.50" not in json.dumps(pages) and "cost_price" not in json.dumps(pages)
    store.update("product", product["id"], {"cost_price": "13.50", "name": "Renamed"},
                 expected_version=product["version"] + 1)
    more = dev.pull_all(cursor=pages[-1]["cursor"], scope_hash=pages[-1]["scope_hash"])
    patch = next(c for p in more for c in p["changes"] if c["id"] == product["id"])
    assert patch["kind"] == "patch" and patch["fields"] == {"name": "Renamed"}
    assert "13.50" not in json.dumps(more)


def test_entity_leaving_the_scope_is_cleared(defs_copy, tmp_path):
    """An analyst makes visits push-only: devices drop the visits they held (invariant 6)."""
    from fieldsync.defs import load_model
    app = create_app({"DATA_DIR": str(tmp_path / "d3"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 's3.db'}", "DEFS_DIR": str(defs_copy)})
    state = app.extensions["fieldsync"]
    load_seed(state.config, "examples/seed")
    state.store.create("visit", {"rep_id": "rep-asha", **visit_fields(app)})
    dev = Device(app)
    pages = dev.pull_all()
    local = apply_pages(pages)
    assert any(k[0] == "visit" for k in local)
    path = defs_copy / "transactions" / "visit.yaml"
    path.write_text(path.read_text().replace("  direction: both\n", "  direction: push\n", 1))
    state.swap_model(load_model(defs_copy))
    more = dev.pull_all(cursor=pages[-1]["cursor"], scope_hash=pages[-1]["scope_hash"])
    assert {"kind": "clear", "entity": "visit"} in more[0]["changes"]
    assert not any(k[0] == "visit" for k in apply_pages(more, local))


def test_a_device_synced_at_position_zero_is_reset_when_history_is_gone(tmp_path):
    """A device whose snapshot ended at head 0 streams from 0; once retention removed changes
    it never saw (a create and delete), it must reset rather than miss the delete silently."""
    import datetime as dt
    app = create_app({"DATA_DIR": str(tmp_path / "d4"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 's4.db'}"})
    state = app.extensions["fieldsync"]
    dev = Device(app)
    pages = dev.pull_all()
    assert pages[-1]["cursor"] == 0 and pages[-1]["scope_hash"]
    territory = state.store.create("territory", {"name": "Nashik", "code": "NSK1", "region": "west"})
    state.store.delete("territory", territory["id"])
    compact_history(state.engine, state.store, retention_days=0,
                    now=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1))
    r = dev.post("/pull", {"device_id": dev.device_id, "schema_version": 1, "cursor": 0,
                           "scope_hash": pages[-1]["scope_hash"]})
    assert r.status_code == 410 and r.json["reason"] == "cursor-too-old"


def test_a_body_over_the_limit_by_content_length_names_the_limit(app):
    dev = Device(app)
    big = b'{"pad": "' + b"a" * (5 * 1024 * 1024) + b'"}'
    r = dev.client.post("/api/v1/sync/push", data=big, headers={**dev.headers(), "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json["max_bytes"] == 4 * 1024 * 1024
    assert r.json["type"].endswith("/payload-too-large")


def _phase_upserts(page) -> int:
    return sum(1 for c in page["changes"] if c["kind"] == "upsert" and c["position"] is None)


def test_remaining_counts_down_the_records_a_phase_still_sends(app):
    """§6.1: during a snapshot or rescope phase `remaining` is the number of records the phase
    has still to send (plus the positions the stream has after it), so a progress bar moves."""
    dev = Device(app)
    pages = dev.pull_all(limit=3)
    assert len(pages) > 3
    for i, page in enumerate(pages):
        later = sum(_phase_upserts(p) for p in pages[i + 1:])
        assert page["remaining"] == (max(later, 1) if page["has_more"] else 0), (i, page["remaining"], later)
    assert pages[0]["remaining"] > pages[1]["remaining"] > pages[2]["remaining"]
    # a rescope (a new territory) counts the same way
    cursor, old_hash = pages[-1]["cursor"], pages[-1]["scope_hash"]
    dev.token = issue_token(SECRET, "rep-asha", "field_rep", {"territory_ids": [PUNE_RURAL]})
    pages = dev.pull_all(cursor=cursor, scope_hash=old_hash, limit=2)
    assert pages[0]["phase"] == "rescope" and len(pages) >= 2
    for i, page in enumerate(pages):
        later = sum(_phase_upserts(p) for p in pages[i + 1:])
        assert page["remaining"] == (max(later, 1) if page["has_more"] else 0), (i, page["remaining"], later)


def test_snapshot_rows_are_the_stored_records_in_wire_form(app):
    """Snapshot pages read date-times as SQLite stores them and rewrite that text: every value
    sent (times included, to the microsecond and with their Z) is the record's wire value."""
    store = app.extensions["fieldsync"].store
    visit = store.create("visit", {"rep_id": "rep-asha", **visit_fields(app, visited_at="2026-11-27T09:00:00.123456Z")})
    dev = Device(app)
    local = apply_pages(dev.pull_all(limit=7))
    assert local
    compared = 0
    for (entity, record_id), row in local.items():
        stored = server_view(app, entity, lambda r: r["id"] == record_id)[record_id]
        for name, value in row.items():
            assert value == stored[name], (entity, name, value, stored[name])
            compared += name in ("created_at", "updated_at")
    assert compared == 2 * len(local)
    assert local[("visit", visit["id"])]["visited_at"] == "2026-11-27T09:00:00.123456Z"


def test_a_device_gets_its_own_writes_back_in_results_not_as_changes(app):
    """protocol §6.4: a record whose last change is the pulling device's own push comes back in
    that mutation's result (its `row` read at delivery), not a second time as a change; a
    record someone else changed after it comes as a change; another device gets them all."""
    asha, other = Device(app), Device(app, install="i-2")
    pages = asha.pull_all()
    cursor, scope_hash = pages[-1]["cursor"], pages[-1]["scope_hash"]
    other_pages = other.pull_all()
    other_cursor, other_hash = other_pages[-1]["cursor"], other_pages[-1]["scope_hash"]
    mine, changed_later = new_id(), new_id()
    order_id = new_id()
    product = app.extensions["fieldsync"].store.list("product", limit=1).items[0]
    asha.push([asha.mutation("visit", "insert", mine, visit_fields(app, notes="mine")),
               asha.mutation("visit", "insert", changed_later, visit_fields(app, notes="first")),
               asha.mutation("order", "insert", order_id, {
                   "retailer_id": retailer_in(app, PUNE_CENTRAL)["id"], "territory_id": PUNE_CENTRAL,
                   "ordered_at": "2026-11-27T09:00:00Z"}),
               asha.mutation("order_line", "insert", line_id := new_id(), {
                   "order_id": order_id, "product_id": product["id"], "quantity": 2, "unit_price": "10.00"})])
    assert app.extensions["fieldsync"].sync.drain() == 1
    store = app.extensions["fieldsync"].store
    store.update("visit", changed_later, {"notes": "changed on the server"}, expected_version=1)

    pages = asha.pull_all(cursor=cursor, scope_hash=scope_hash)
    changed = {(c["entity"], c["id"]) for p in pages for c in p["changes"]}
    assert changed == {("visit", changed_later)}
    results = {r["seq"]: r for p in pages for r in p["results"]}
    assert [results[s]["status"] for s in (1, 2, 3, 4)] == ["applied"] * 4
    assert results[1]["row"]["id"] == mine and results[1]["row"]["notes"] == "mine"
    assert results[2]["row"]["notes"] == "changed on the server"   # read at delivery, as the change
    assert results[4]["row"]["id"] == line_id
    assert pages[-1]["cursor"] == pages[-1]["head"]   # the cursor moves past what was left out

    seen = {(c["entity"], c["id"]) for p in other.pull_all(cursor=other_cursor, scope_hash=other_hash)
            for c in p["changes"]}
    assert {("visit", mine), ("visit", changed_later), ("order", order_id), ("order_line", line_id)} <= seen


def test_a_record_a_phase_page_brought_and_deleted_after_is_deleted_on_the_device(app):
    """A snapshot's pages read the tables after the phase began, so a record created meanwhile
    reaches the device from a page; the stream then starts again at the phase's cursor, before
    that create. Deleted afterwards, the record's create and delete fall in one stream range:
    the device must get the delete, though the row before the range was not in its scope."""
    dev = Device(app)
    store = app.extensions["fieldsync"].store
    body = {"device_id": dev.device_id, "schema_version": 1, "cursor": 0, "scope_hash": None, "resume": None,
            "limit": 1, "results_after": 0}
    first = dev.post("/pull", body).json
    assert first["phase"] == "snapshot" and first["has_more"]
    visit_id = new_id()
    store.create("visit", {"id": visit_id, "rep_id": "rep-asha", **visit_fields(app)})   # after the phase began
    pages = [first]
    while pages[-1]["has_more"] and pages[-1]["phase"] == "snapshot":
        last = pages[-1]
        pages.append(dev.post("/pull", dict(body, cursor=last["cursor"], scope_hash=last["scope_hash"],
                                            resume=last["resume"], limit=1000)).json)
    local = apply_pages(pages)
    assert ("visit", visit_id) in local              # a phase page brought it
    phase_end = next(p for p in pages if p["resume"] is None)
    store.delete("visit", visit_id, expected_version=1)
    stream = dev.pull_all(cursor=phase_end["cursor"], scope_hash=phase_end["scope_hash"])
    kinds = [(c["kind"], c["id"]) for p in stream for c in p["changes"] if c.get("id") == visit_id]
    assert kinds == [("delete", visit_id)]
    assert ("visit", visit_id) not in apply_pages(stream, local)
