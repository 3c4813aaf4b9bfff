"""Convergence under random offline work and a failing network (invariants 2, 4, 5, 6).

Hypothesis plays a day in the field: two to four devices of different users, roles and
territories (one user on two phones) write offline (visits, orders with lines, expenses, their
own records and shared retailers, deletes their role may not make); the server writes meanwhile
through the store and REST (moves retailers between territories, retires products, deletes
visits and orders, books orders); devices sync while their transports drop requests, lose
answers, send requests twice and cut answers short; workers die between apply and ack; apps
restart; users get tokens with other territories. Then the network heals and every device
syncs until quiet. Afterwards:

* every device's store equals the server's records its scope matches, field by field, with
  the fields its role may not see empty (invariants 4 and 6);
* every write a device made is accounted for exactly once: one ledger row per seq, in the
  order and on the record the device wrote; each effect once in the change log; the outbox
  empty; every rejection quarantined on its device with a reason (invariants 1, 2 and 5);
* every insert the server applied exists once, created once.

Each example builds its own server (SQLite, and PostgreSQL in a schema of its own).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from fieldsync.client import ClientError
from fieldsync.seed import BENGALURU_EAST, PUNE_CENTRAL, PUNE_RURAL
from fieldsync.ids import utc_now

TERRITORIES = (PUNE_CENTRAL, PUNE_RURAL, BENGALURU_EAST)
USERS = (
    ("rep-asha", "field_rep", {"territory_ids": [PUNE_CENTRAL, PUNE_RURAL]}),
    ("sup-ravi", "supervisor", {"region": "west", "territory_ids": [PUNE_CENTRAL, PUNE_RURAL]}),
    ("rep-bala", "field_rep", {"territory_ids": [PUNE_RURAL, BENGALURU_EAST]}),
    ("rep-asha", "field_rep", {"territory_ids": [PUNE_CENTRAL, PUNE_RURAL]}),    # her second phone
)
REPS = ("rep-asha", "rep-bala")
FAULT_OR_NONE = st.sampled_from([None, None, "drop_request", "drop_response", "duplicate", "cut_response"])


# days before now: inside every window (90 days), or well outside (the device keeps such a row
# until the pull's window floor purges it); never near the floor, where the test's clock and the
# server's could disagree
AGES = st.sampled_from([0, 0, 1, 3, 12, 30, 150])


def when(days_ago: float) -> str:
    return (utc_now() - dt.timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Day:
    """One example's world: the server, the devices, and what each device wrote."""

    def __init__(self, server, devices, data):
        self.server = server
        self.devices = devices
        self.data = data
        self.admin = server.token("admin-meera", "admin")
        self.written = {id(d): [] for d in devices}   # (seq, entity, op, record id) per device

    def draw(self, strategy, label=None):
        return self.data.draw(strategy, label=label)

    def pick(self, items, label=None):
        items = sorted(items)
        return self.draw(st.sampled_from(items), label) if items else None

    # -- device writes -------------------------------------------------------------------------
    def device_write(self, device) -> None:
        role = device.principal.role
        kinds = (["insert_visit", "insert_order", "insert_expense", "update_visit", "update_order",
                  "update_expense", "update_retailer", "delete_visit"] if role == "field_rep"
                 else ["update_visit", "update_order", "update_retailer", "move_retailer"])
        kind = self.draw(st.sampled_from(kinds), "write")
        client = device.client
        before = device.last_seq()
        record = None
        try:
            if kind == "insert_visit":
                retailer = self.pick(device.rows("retailer"), "retailer")
                if retailer is None:
                    return
                row = device.rows("retailer")[retailer]
                record = ("visit", "insert", client.insert("visit", {
                    "retailer_id": retailer, "territory_id": row["territory_id"],
                    "visited_at": when(self.draw(AGES, "age")), "purpose": "order",
                    "notes": self.draw(st.sampled_from([None, "met owner", "shop closed"]))}))
            elif kind == "insert_order":
                retailer = self.pick(device.rows("retailer"), "retailer")
                product = self.pick(device.rows("product"), "product")
                if retailer is None or product is None:
                    return
                row = device.rows("retailer")[retailer]
                order = client.insert("order", {"retailer_id": retailer, "territory_id": row["territory_id"],
                                                "ordered_at": when(self.draw(AGES, "age")), "total": "99.00"})
                self._note(device, before, ("order", "insert", order))
                before = device.last_seq()
                record = ("order_line", "insert", client.insert("order_line", {
                    "order_id": order, "product_id": product, "quantity": self.draw(st.integers(1, 5)),
                    "unit_price": "33.00"}))
            elif kind == "insert_expense":
                record = ("expense", "insert", client.insert("expense", {
                    "spent_on": when(self.draw(AGES, "age"))[:10], "category": "travel",
                    "amount": f"{self.draw(st.integers(1, 900))}.00"}))
            elif kind in ("update_visit", "update_order", "update_expense", "delete_visit"):
                entity = kind.split("_")[1]
                target = self.pick(device.rows(entity), entity)
                if target is None:
                    return
                if kind == "delete_visit":
                    client.delete("visit", target)     # field reps may not: quarantined, reason given
                    record = ("visit", "delete", target)
                else:
                    fields = {"visit": {"notes": f"note {uuid.uuid4().hex[:6]}"},
                              "order": {"remarks": f"remark {uuid.uuid4().hex[:6]}"},
                              "expense": {"amount": f"{self.draw(st.integers(1, 900))}.50"}}[entity]
                    client.update(entity, target, fields)
                    record = (entity, "update", target)
            elif kind in ("update_retailer", "move_retailer"):
                target = self.pick(device.rows("retailer"), "retailer")
                if target is None:
                    return
                if kind == "move_retailer":     # between the supervisor's own territories
                    fields = {"territory_id": self.draw(st.sampled_from([PUNE_CENTRAL, PUNE_RURAL]))}
                else:
                    fields = self.draw(st.sampled_from([
                        {"phone": f"+91 20 {uuid.uuid4().int % 10 ** 8:08d}"},
                        {"location": {"lat": 18.5, "lon": 73.8 + self.draw(st.integers(0, 9)) / 100}}]))
                client.update("retailer", target, fields)
                record = ("retailer", "update", target)
        except ClientError as exc:
            event(f"refused locally: {kind}: {type(exc).__name__}")  # nothing changed, or already deleting
        if record is not None:
            self._note(device, before, record)

    def _note(self, device, before: int, record) -> None:
        after = device.last_seq()
        assert after - before in (0, 1)
        if after == before + 1:
            self.written[id(device)].append((after, *record))

    # -- server writes -------------------------------------------------------------------------
    def server_write(self) -> None:
        store = self.server.store
        kind = self.draw(st.sampled_from(["retailer", "move_retailer", "product", "visit", "delete_visit",
                                          "order", "delete_order", "visit_rest"]), "server write")
        if kind in ("retailer", "move_retailer"):
            target = self.pick(self.server.records("retailer"), "retailer")
            change = ({"territory_id": self.draw(st.sampled_from(TERRITORIES))} if kind == "move_retailer"
                      else {"name": f"Shop {uuid.uuid4().hex[:6]}", "phone": "+91 20 7777 0000"})
            response = self.server.rest("PATCH", f"/retailer/{target}", self.admin, change, {"If-Match": "*"})
            assert response.status_code == 200, response.json
        elif kind == "product":
            target = self.pick(self.server.records("product"), "product")
            current = self.server.records("product")[target]
            store.update("product", target, {"active": not current["active"]}, expected_version=None)
        elif kind in ("visit", "visit_rest"):
            retailer = self.server.records("retailer")[self.pick(self.server.records("retailer"), "retailer")]
            body = {"rep_id": self.draw(st.sampled_from(REPS)), "retailer_id": retailer["id"],
                    "territory_id": retailer["territory_id"], "visited_at": when(self.draw(AGES, "age")), "purpose": "survey"}
            if kind == "visit":
                store.create("visit", body)
            else:
                response = self.server.rest("PATCH", f"/visit/{self.pick(self.server.records('visit'))}",
                                            self.admin, {"notes": "from the office"}, {"If-Match": "*"}) \
                    if self.server.records("visit") else None
                assert response is None or response.status_code == 200, response.json
        elif kind in ("delete_visit", "delete_order"):      # an order's lines go with it
            entity = kind.split("_")[1]
            target = self.pick(self.server.records(entity), entity)
            if target is not None:
                assert self.server.rest("DELETE", f"/{entity}/{target}", self.admin).status_code == 204
        elif kind == "order":
            retailer = self.server.records("retailer")[self.pick(self.server.records("retailer"), "retailer")]
            product = self.pick(self.server.records("product"), "product")
            store.create("order", {"rep_id": self.draw(st.sampled_from(REPS)), "retailer_id": retailer["id"],
                                   "territory_id": retailer["territory_id"], "ordered_at": when(self.draw(AGES, "age"))},
                         children={"lines": [{"product_id": product, "quantity": 2, "unit_price": "10.00"}]})

    # -- the network and the processes --------------------------------------------------------
    def sync(self, device) -> None:
        device.transport.plan(self.draw(st.lists(FAULT_OR_NONE, max_size=4), "faults"))
        device.try_sync()

    def step(self) -> None:
        action = self.draw(st.sampled_from(["write", "write", "write", "server", "sync", "sync", "drain",
                                            "restart", "sign-in"]), "action")
        if action == "write":       # a burst of offline work on one device
            device = self.draw(st.sampled_from(self.devices), "device")
            for _ in range(self.draw(st.integers(1, 4), "writes")):
                self.device_write(device)
        elif action == "server":
            self.server_write()
        elif action == "sync":
            self.sync(self.draw(st.sampled_from(self.devices), "device"))
        elif action == "drain":
            self.server.drain(fail_after_apply=self.draw(st.booleans(), "worker dies before ack"))
        elif action == "restart":
            self.draw(st.sampled_from(self.devices), "device").restart()
        else:   # an admin changed the user's territories; the next sign-in carries them
            device = self.draw(st.sampled_from(self.devices), "device")
            territories = self.draw(st.lists(st.sampled_from(TERRITORIES), min_size=1, max_size=3, unique=True),
                                    "territories")
            device.retoken(**{**device.principal.attributes, "territory_ids": territories})


def play_a_day(make_server, database_url, data, settle, assert_converged, assert_exactly_once) -> None:
    server = make_server(database_url)
    count = data.draw(st.integers(2, 4), "devices")
    devices = [server.device(user, role, **attributes) for user, role, attributes in USERS[:count]]
    day = Day(server, devices, data)
    for device in devices:
        device.sync()           # registered and holding its snapshot, the day starts
    for _ in range(data.draw(st.integers(6, 24), "steps")):
        day.step()

    settle(server, devices)
    for device in devices:
        assert_converged(server, device)
        assert_exactly_once(server, device)
        ledger = server.ledger(device.device_id)
        # each seq is the write the device made, on the record it made it on
        assert [(r["seq"], r["entity"], r["op"], r["record_id"]) for r in ledger] == day.written[id(device)]
        for row in ledger:
            if row["op"] == "insert" and row["status"] == "applied":
                assert row["record_id"] in server.records(row["entity"], deleted=True)
                creates = server.changes(entity=row["entity"], record_id=row["record_id"], op="create")
                assert len(creates) == 1
    # what the example went through (pytest --hypothesis-show-statistics)
    event(f"device writes: {min(sum(len(w) for w in day.written.values()) // 5 * 5, 20)}+")
    for device in devices:
        for fault, _ in device.transport.faults_injected:
            event(f"fault: {fault}")
        for q in device.quarantine():
            event(f"quarantined: {q['code'].rsplit('/', 1)[-1]}")
        for row in server.ledger(device.device_id):
            if row["effect"] in ("partial", "discarded"):
                event(f"conflict lost: {row['effect']}")
        if 410 in device.transport.statuses("/pull"):
            event("sync-reset")
        if any(e[4] and e[4].get("phase") == "rescope" for e in device.transport.exchanges if e[1].endswith("/pull")):
            event("rescope")
    for device in devices:
        device.close()


# a deeper search: FIELDSYNC_TEST_CONVERGENCE_EXAMPLES=300 pytest tests/sync/test_convergence.py
EXAMPLES = int(os.environ.get("FIELDSYNC_TEST_CONVERGENCE_EXAMPLES", "0"))
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                print_blob=True)


@settings(max_examples=EXAMPLES or 12, **SETTINGS)
@given(data=st.data())
def test_devices_converge_after_a_day_offline_on_a_failing_network(make_server, data, settle, assert_converged,
                                                                  assert_exactly_once):
    play_a_day(make_server, None, data, settle, assert_converged, assert_exactly_once)


@pytest.mark.postgres
@settings(max_examples=EXAMPLES or 3, **SETTINGS)
@given(data=st.data())
def test_devices_converge_on_postgresql(make_server, pg_database, data, settle, assert_converged,
                                        assert_exactly_once):
    play_a_day(make_server, pg_database(), data, settle, assert_converged, assert_exactly_once)
