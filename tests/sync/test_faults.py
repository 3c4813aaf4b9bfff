"""Devices and the server under faults: a worker killed between apply and ack, a push sent three
times, a device restarted with a full outbox, a device older than the tombstone window, one bad
mutation in a batch of 500, and scope changes (invariants 1, 2, 4, 5, 6).

Every test runs real `fieldsync.client.Client`s against the real server (see conftest.py): the
network faults are injected by the devices' transports, the worker faults by `drain()`.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from fieldsync.client import TransportError
from fieldsync.seed import BENGALURU_EAST, PUNE_CENTRAL, PUNE_RURAL
from fieldsync.ids import utc_now
from fieldsync.sync.service import compact_history

ASHA = {"user": "rep-asha", "territory_ids": [PUNE_CENTRAL, PUNE_RURAL]}


def when(days_ago: float = 1.0) -> str:
    """A wire datetime inside every sync window."""
    value = utc_now() - dt.timedelta(days=days_ago)
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def visit_at(retailer: dict, **extra) -> dict:
    fields = {"retailer_id": retailer["id"], "territory_id": retailer["territory_id"], "visited_at": when(),
              "purpose": "order"}
    fields.update(extra)
    return fields


def asha(server):
    return server.device(ASHA["user"], territory_ids=ASHA["territory_ids"])


def first_retailer(device, territory=None) -> dict:
    rows = sorted(device.rows("retailer").values(), key=lambda r: r["id"])
    return next(r for r in rows if territory is None or r["territory_id"] == territory)


# -- invariant 2: exactly-once effect ------------------------------------------------------------

def test_worker_killed_between_apply_and_ack_leaves_one_effect(sync_server, settle, assert_converged,
                                                               assert_exactly_once):
    server = sync_server
    device = asha(server)
    device.sync()
    retailer = first_retailer(device)
    visit_id = device.client.insert("visit", visit_at(retailer, notes="first call"))
    device.client.update("retailer", retailer["id"], {"phone": "+91 20 5555 0101"})
    device.sync()
    assert [e["status"] for e in device.outbox()] == ["received", "received"]

    assert server.drain(fail_after_apply=True) == 1   # applied and committed, never acked
    assert server.queued() == 1                        # so the queue still holds the batch
    assert server.drain() == 1                         # the redelivery
    assert server.queued() == 0

    assert [(r["seq"], r["status"]) for r in server.ledger(device.device_id)] == [(1, "applied"), (2, "applied")]
    assert [(c["seq"], c["record_id"], c["version"]) for c in server.changes(origin=device.device_id)] == [
        (1, visit_id, 1), (2, retailer["id"], retailer["version"] + 1)]
    assert server.records("visit")[visit_id]["version"] == 1
    assert server.records("retailer")[retailer["id"]]["version"] == retailer["version"] + 1
    settle(server, [device])
    assert device.quarantine() == []
    assert_exactly_once(server, device)
    assert_converged(server, device)


def test_the_same_push_sent_three_times_has_one_effect_and_one_result(sync_server, settle, assert_converged,
                                                                      assert_exactly_once):
    server = sync_server
    device = asha(server)
    device.sync()
    retailer = first_retailer(device)
    visit_id = device.client.insert("visit", visit_at(retailer))
    device.client.update("visit", visit_id, {"notes": "owner away"})
    device.sync()
    [push] = [(body, answer) for _, path, body, status, answer, _ in device.transport.exchanges
              if path.endswith("/push")]
    assert push[1]["received"] == [1, 2]

    # the same request twice more before any worker ran: received again, queued again
    for _ in range(2):
        status, answer = device.transport.replay("POST", "/api/v1/sync/push", push[0], device.token)
        assert (status, answer["received"], answer["results"]) == (202, [1, 2], [])
    assert server.drain() == 3
    # and once more after: answered from the ledger, nothing queued
    status, answer = device.transport.replay("POST", "/api/v1/sync/push", push[0], device.token)
    assert status == 202 and answer["received"] == []
    assert [(r["seq"], r["status"], r["first"]["status"], r["first"]["version"]) for r in answer["results"]] == [
        (1, "duplicate", "applied", 1), (2, "duplicate", "applied", 2)]
    assert server.queued() == 0

    visit = server.records("visit")[visit_id]
    assert (visit["version"], visit["notes"]) == (2, "owner away")
    status, results = device.transport.replay("GET", f"/api/v1/sync/results?device_id={device.device_id}",
                                              None, device.token)
    assert [(r["seq"], r["status"]) for r in results["results"]] == [(1, "applied"), (2, "applied")]
    settle(server, [device])
    assert_exactly_once(server, device)
    assert_converged(server, device)


def test_duplicated_and_lost_answers_on_the_wire_change_nothing(sync_server, settle, assert_converged,
                                                                assert_exactly_once):
    server = sync_server
    device = asha(server)
    device.sync()
    retailer = first_retailer(device)
    ids = [device.client.insert("visit", visit_at(retailer, duration_minutes=n)) for n in range(3)]
    device.transport.fail("duplicate", path="/push")
    device.sync()
    device.client.update("visit", ids[0], {"notes": "second thoughts"})
    device.transport.fail("drop_response", path="/push")
    with pytest.raises(TransportError):
        device.sync()
    assert [e["status"] for e in device.outbox()] == ["received"] * 3 + ["sent"]
    settle(server, [device])
    assert sorted(device.transport.faults_injected) == [("drop_response", "/api/v1/sync/push"),
                                                       ("duplicate", "/api/v1/sync/push")]
    assert_exactly_once(server, device)
    assert_converged(server, device)
    assert server.records("visit")[ids[0]]["version"] == 2


# -- invariant 1: a restarted device loses nothing -----------------------------------------------

def test_device_restarted_with_a_full_outbox_converges(sync_server, settle, assert_converged,
                                                       assert_exactly_once):
    server = sync_server
    device = asha(server)
    device.sync()
    device_id = device.device_id
    retailer = first_retailer(device, PUNE_RURAL)
    sent = [device.client.insert("visit", visit_at(retailer, notes=f"visit {n}")) for n in range(2)]
    device.transport.fail("drop_response", path="/push")    # the server got them; the device cannot know
    with pytest.raises(TransportError):
        device.sync()
    device.client.update("retailer", retailer["id"], {"phone": "+91 2114 000 111"})   # never sent
    order = device.client.insert("order", {"retailer_id": retailer["id"], "territory_id": PUNE_RURAL,
                                           "ordered_at": when(), "total": "120.50"})
    line = device.client.insert("order_line", {"order_id": order, "product_id": sorted(device.rows("product"))[0],
                                               "quantity": 3, "unit_price": "40.17"})
    assert [e["status"] for e in device.outbox()] == ["sent", "sent", "pending", "pending", "pending"]

    device.restart()
    assert device.device_id == device_id
    assert [e["status"] for e in device.outbox()] == ["sent", "sent", "pending", "pending", "pending"]
    assert server.drain() == 1          # the batch whose answer was lost is applied meanwhile
    settle(server, [device])
    assert device.device_id == device_id
    assert_exactly_once(server, device)
    assert_converged(server, device)
    assert [(q["seq"], q["code"], q["reason"], q["errors"]) for q in device.quarantine()] == []
    assert set(sent) <= set(device.rows("visit")) and order in device.rows("order")
    assert device.rows("order_line")[line]["order_id"] == order
    assert server.records("retailer")[retailer["id"]]["phone"] == "+91 2114 000 111"


# -- invariant 4: older than the tombstone window ------------------------------------------------

def test_device_past_the_tombstone_window_resets_and_keeps_its_outbox(sync_server, settle, assert_converged,
                                                                      assert_exactly_once):
    server = sync_server
    store = server.store
    doomed = store.create("visit", {**visit_at(server.records("retailer")[_seed_retailer(server, PUNE_CENTRAL)]),
                                    "rep_id": "rep-asha"})
    device = asha(server)
    device.sync()
    assert doomed["id"] in device.rows("visit")
    cursor = device.state("cursor")

    # while the device is in a drawer: the server deletes a visit it holds and moves on
    store.delete("visit", doomed["id"])
    retailer = first_retailer(device, PUNE_CENTRAL)
    store.update("retailer", retailer["id"], {"name": "Sai Medical Stores (new)"}, expected_version=None)
    # its user writes offline
    mine = device.client.insert("visit", visit_at(retailer, notes="offline"))
    device.client.update("retailer", retailer["id"], {"phone": "+91 20 1111 2222"})
    # 200 days later the server compacts: history and tombstones before the window are gone
    done = compact_history(server.engine, store, 90, now=utc_now() + dt.timedelta(days=200))
    assert done["tombstones_purged"] >= 1 and done["horizon"] > cursor + 1

    # and writes again while the sync is under way, after its push: unsent when the reset runs
    during: list[str] = []

    def write_during_the_pull(method, path):
        if path.endswith("/pull") and not during:
            during.append(device.client.insert("visit", visit_at(retailer, notes="during the sync")))

    device.transport.before_request = write_during_the_pull
    report = device.sync()
    device.transport.before_request = None
    assert device.transport.statuses("/pull")[-2:] == [410, 200]   # a typed reset, not silent drift
    assert report.complete
    # the reset kept the outbox, sent or not, and the rows it has not settled yet
    assert [(e["op"], e["status"]) for e in device.outbox()] == [
        ("insert", "received"), ("update", "received"), ("insert", "pending")]
    assert mine in device.rows("visit") and during[0] in device.rows("visit")
    assert doomed["id"] not in device.rows("visit")

    settle(server, [device])
    assert_exactly_once(server, device)
    assert_converged(server, device)
    assert {mine, during[0]} <= set(device.rows("visit")) and doomed["id"] not in device.rows("visit")
    assert device.rows("retailer")[retailer["id"]]["phone"] == "+91 20 1111 2222"


def _seed_retailer(server, territory) -> str:
    return min(r["id"] for r in server.records("retailer").values() if r["territory_id"] == territory)


# -- invariant 5: one bad mutation among 500 -----------------------------------------------------

def test_one_invalid_mutation_in_a_batch_of_500_is_quarantined_alone(sync_server, settle, assert_exactly_once):
    server = sync_server
    device = asha(server)
    device.sync()
    retailer = first_retailer(device)
    ghost = str(uuid.uuid4())     # valid locally; the server knows no such retailer
    ids = []
    for n in range(500):
        fields = visit_at(retailer, duration_minutes=n % 1000)
        if n == 250:
            fields["retailer_id"] = ghost
        ids.append(device.client.insert("visit", fields))
    device.sync()
    pushes = [body for _, path, body, _, _, _ in device.transport.exchanges if path.endswith("/push")]
    assert [len(p["mutations"]) for p in pushes] == [500]
    assert server.drain() == 1    # one batch, one transaction
    device.sync()

    [bad] = device.client.quarantined()
    assert (bad.seq, bad.record_id, bad.op, bad.name) == (251, ids[250], "insert", "validation")
    assert bad.reason and [e["field"] for e in bad.errors] == ["retailer_id"] and ghost in bad.errors[0]["reason"]
    visits = server.records("visit")
    assert len(visits) == 499 and ids[250] not in visits and set(ids) - {ids[250]} == set(visits)
    assert set(device.rows("visit")) == set(visits)
    assert device.outbox() == []
    status = server.rest("GET", f"/sync/devices/{device.device_id}", device.token,
                         headers={"Fieldsync-Protocol": "1"})
    assert status.status_code == 200
    counts = (status.json["rejected_permanent"], status.json["unsettled"], status.json["last_received_seq"])
    assert counts == (1, 0, 500)
    settle(server, [device])
    assert_exactly_once(server, device)


# -- invariants 4 and 6: scope ---------------------------------------------------------------------

def test_a_territory_taken_away_is_purged_and_one_given_brings_its_old_rows(sync_server, settle, assert_converged):
    server = sync_server
    rural = _seed_retailer(server, PUNE_RURAL)
    east = _seed_retailer(server, BENGALURU_EAST)
    rural_visit = server.store.create("visit", {**visit_at(server.records("retailer")[rural]), "rep_id": "rep-asha"})
    device = asha(server)
    settle(server, [device])
    assert_converged(server, device)
    assert rural in device.rows("retailer") and rural_visit["id"] in device.rows("visit")

    device.retoken(territory_ids=[PUNE_CENTRAL])
    settle(server, [device])
    assert_converged(server, device)
    held = {e: device.rows(e) for e in ("territory", "retailer", "price_list", "visit")}
    assert PUNE_RURAL not in held["territory"] and rural not in held["retailer"]
    assert rural_visit["id"] not in held["visit"]
    assert all(r["territory_id"] == PUNE_CENTRAL for e in ("retailer", "price_list", "visit")
               for r in held[e].values())

    # a new territory: its rows are older than the device's cursor and must come all the same
    cursor = device.state("cursor")
    device.retoken(territory_ids=[PUNE_CENTRAL, BENGALURU_EAST, PUNE_RURAL])
    settle(server, [device])
    assert_converged(server, device)
    assert east in device.rows("retailer") and rural in device.rows("retailer")
    assert rural_visit["id"] in device.rows("visit")
    assert BENGALURU_EAST in device.rows("territory")
    assert device.state("cursor") >= cursor


def test_a_device_never_receives_rows_or_fields_outside_its_rules(sync_server, settle, assert_converged):
    server = sync_server
    analyst = server.device("analyst-joe", "analyst", territory_ids=[PUNE_CENTRAL])
    rep = asha(server)
    settle(server, [analyst, rep])
    retailer = first_retailer(rep, PUNE_CENTRAL)
    rep.client.insert("visit", visit_at(retailer, notes="private notes", location={"lat": 18.5, "lon": 73.8}))
    rep.client.update("retailer", retailer["id"], {"phone": "+91 20 3333 4444", "location": {"lat": 18.6, "lon": 73.9}})
    products = sorted(server.records("product"))
    server.store.update("product", products[0], {"active": False}, expected_version=None)
    other = server.store.create("visit", {**visit_at(server.records("retailer")[_seed_retailer(server, PUNE_RURAL)]),
                                          "rep_id": "rep-other"})
    settle(server, [analyst, rep])
    for device in (analyst, rep):
        assert_converged(server, device)

    # the analyst's role hides phone and location of retailers, notes and location of visits
    hidden = {"retailer": {"phone", "location"}, "visit": {"notes", "location"}}
    seen = analyst.transport.pulled_changes()
    assert any(c["entity"] == "retailer" and c.get("id") == retailer["id"] for c in seen)
    for change in seen:
        names = set(change.get("row") or ()) | set(change.get("fields") or ())
        assert not names & hidden.get(change["entity"], set()), change
        if change["kind"] in ("upsert", "patch") and change["entity"] in ("retailer", "visit", "price_list"):
            assert server.records(change["entity"])[change["id"]]["territory_id"] == PUNE_CENTRAL, change
        if change["kind"] in ("upsert", "patch") and change["entity"] == "territory":
            assert change["id"] == PUNE_CENTRAL, change
    assert all(r["phone"] is None and r["location"] is None for r in analyst.rows("retailer").values())
    assert all(r["notes"] is None for r in analyst.rows("visit").values())
    # the rep sees only its own visits, and only active products
    rep_seen = rep.transport.pulled_changes()
    assert other["id"] not in {c.get("id") for c in rep_seen}
    assert products[0] not in rep.rows("product")
    assert all(r["rep_id"] == "rep-asha" for r in rep.rows("visit").values())
    assert [c["kind"] for c in rep_seen if c.get("id") == products[0]] == ["upsert", "remove"]


# -- a device store materialises defaults (expense.approved); the insert must still apply ----------

def test_an_expense_recorded_on_a_field_reps_device_is_applied(sync_server, settle, assert_converged):
    server = sync_server
    device = asha(server)
    device.sync()
    expense = device.client.insert("expense", {"spent_on": when()[:10], "category": "travel", "amount": "120.50"})
    settle(server, [device])
    assert [(q["code"], q["errors"]) for q in device.quarantine()] == []
    assert server.records("expense")[expense]["approved"] is False
    assert_converged(server, device)


# -- an answer cut short is no answer (the SDK once read a cut zstd page as an empty one) ---------

def test_a_zstd_answer_cut_short_is_a_transport_error(make_server):
    device = asha(make_server())
    device.sync()
    device.retoken(territory_ids=[PUNE_CENTRAL, PUNE_RURAL, BENGALURU_EAST])   # a rescope page next
    cursor = device.state("cursor")
    device.transport.fail("cut_response", path="/pull")     # a rescope page: over 1 KiB, so zstd
    with pytest.raises(TransportError):
        device.sync()
    assert device.state("cursor") == cursor and BENGALURU_EAST not in device.rows("territory")
    assert [fault for fault, _ in device.transport.faults_injected] == ["cut_response"]
    pulls = [e for e in device.transport.exchanges if e[1].endswith("/pull")]
    assert pulls[-1][3] is None or pulls[-1][4] is None    # the device never saw a whole page
    assert device.sync().complete
    assert BENGALURU_EAST in device.rows("territory")
