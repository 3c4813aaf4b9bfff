"""Row isolation for child entities and references on sync push (issue 10, item 1).

A pushed write to a child is allowed exactly when the same write to it through the REST API
would be: the parent's `editable` list applies to the child's fields, and a reference to a
record the device's user may not read is a permanent `validation` rejection naming the field,
worded as for a missing record.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from fieldsync.api import create_app
from fieldsync.auth.tokens import issue_token
from fieldsync.seed import load_seed
from fieldsync.ids import new_id

SECRET = "k" * 32
PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"
PUNE_RURAL = "58f87001-cb0b-5eac-8382-fd18ac1f335e"
CENTRAL_SHOP = "2fd6ae15-929b-509f-9c04-01a819382ca2"
RURAL_SHOP = "b7ac1c00-d94b-58b6-ad7f-725fa7ab28d9"


class Device:
    """A minimal protocol speaker: register, push, drain, read the results."""

    def __init__(self, app, user, role="field_rep", **attributes):
        self.app, self.client = app, app.test_client()
        self.token = issue_token(SECRET, user, role, attributes)
        self.seq = 0
        r = self.post("/devices", {"install_id": f"i-{user}-{role}", "schema_version": 1})
        assert r.status_code in (200, 201), r.json
        self.device_id = r.json["device_id"]

    def post(self, path, body):
        return self.client.post("/api/v1/sync" + path, json=body,
                                headers={"Authorization": "Bearer " + self.token, "Fieldsync-Protocol": "1"})

    def push(self, entity, op, record_id, fields=None, base_version=None):
        """Push one mutation, apply it, and return its result."""
        self.seq += 1
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        r = self.post("/push", {"device_id": self.device_id, "schema_version": 1, "sent_at": now, "mutations": [
            {"seq": self.seq, "entity": entity, "op": op, "id": record_id, "base_version": base_version,
             "client_time": now, "fields": fields or {}}]})
        assert r.status_code == 202, r.json
        self.app.extensions["fieldsync"].sync.drain()
        r = self.post("/pull", {"device_id": self.device_id, "schema_version": 1, "cursor": 0,
                                "results_after": self.seq - 1, "limit": 1})
        assert r.status_code == 200, r.json
        return next(x for x in r.json["results"] if x["seq"] == self.seq)


@pytest.fixture
def app(db_url, tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                      "DATABASE_URL": db_url})
    load_seed(app.extensions["fieldsync"].config, "examples/seed")
    yield app
    app.extensions["fieldsync"].engine.dispose()


def _order(**extra):
    fields = {"retailer_id": CENTRAL_SHOP, "territory_id": PUNE_CENTRAL,
              "ordered_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    fields.update(extra)
    return fields


def _product(app):
    store = app.extensions["fieldsync"].store
    return next(p for p in store.list("product", limit=100).items if p["active"])["id"]


def _fields(result):
    return [e["field"] for e in result["errors"]]


def test_a_supervisor_may_not_push_a_line_field_the_order_does_not_let_them_edit(app):
    asha = Device(app, "rep-asha", territory_ids=[PUNE_CENTRAL])
    order_id, line_id = new_id(), new_id()
    assert asha.push("order", "insert", order_id, _order())["status"] == "applied"
    assert asha.push("order_line", "insert", line_id, {"order_id": order_id, "product_id": _product(app),
                                                       "quantity": 1, "unit_price": "5.00"})["status"] == "applied"
    sup = Device(app, "sup-1", "supervisor", region="west", territory_ids=[PUNE_CENTRAL])
    result = sup.push("order_line", "update", line_id, {"unit_price": "0.01"}, base_version=1)
    assert result["status"] == "rejected" and result["type"].endswith("/validation"), result
    assert result["errors"] == [{"field": "unit_price", "reason": "may not be set by your role"}]
    assert sup.push("order", "update", order_id, {"status": "confirmed"}, base_version=1)["status"] == "applied"
    assert app.extensions["fieldsync"].store.get("order_line", line_id)["unit_price"] == "5.00"


def test_pushed_references_to_records_the_user_may_not_read_are_rejected_like_missing_ones(app):
    asha = Device(app, "rep-asha", territory_ids=[PUNE_CENTRAL])
    ravi = Device(app, "rep-ravi", territory_ids=[PUNE_CENTRAL, PUNE_RURAL])
    visit = {"territory_id": PUNE_CENTRAL, "visited_at": dt.datetime.now(dt.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ"), "purpose": "order"}
    # a retailer of a territory asha does not work in, and one that does not exist
    hidden = asha.push("visit", "insert", new_id(), {**visit, "retailer_id": RURAL_SHOP})
    missing_id = str(uuid.uuid4())
    missing = asha.push("visit", "insert", new_id(), {**visit, "retailer_id": missing_id})
    for result in (hidden, missing):
        assert result["status"] == "rejected" and result["permanent"] and result["type"].endswith("/validation")
        assert _fields(result) == ["retailer_id"]
    assert hidden["errors"][0]["reason"].replace(RURAL_SHOP, "X") == missing["errors"][0]["reason"].replace(
        missing_id, "X")
    assert hidden["detail"] == missing["detail"]
    # an order naming another rep's visit
    theirs = new_id()
    assert ravi.push("visit", "insert", theirs, {**visit, "retailer_id": CENTRAL_SHOP})["status"] == "applied"
    result = asha.push("order", "insert", new_id(), _order(visit_id=theirs))
    assert result["status"] == "rejected" and _fields(result) == ["visit_id"]
    # a line under another rep's order names an order the rep may not read
    their_order = new_id()
    assert ravi.push("order", "insert", their_order, _order())["status"] == "applied"
    result = asha.push("order_line", "insert", new_id(), {"order_id": their_order, "product_id": _product(app),
                                                          "quantity": 1, "unit_price": "1.00"})
    assert result["status"] == "rejected" and _fields(result) == ["order_id"], result
    # the rep's own visit is fine
    mine = new_id()
    assert asha.push("visit", "insert", mine, {**visit, "retailer_id": CENTRAL_SHOP})["status"] == "applied"
    assert asha.push("order", "insert", new_id(), _order(visit_id=mine))["status"] == "applied"
