"""Row isolation for child entities and references on the REST API (issue 10, item 1).

A child (an order's lines, a price list's items) is reachable exactly when its live parent is,
for the caller's role; the parent's `editable` list applies to the child's fields; a reference
to a record the caller may not read is the same 422 as a reference to a missing record.
"""

from __future__ import annotations

import uuid

PROBLEM = "application/problem+json"


def _problem(r, status, slug):
    assert r.status_code == status, (r.status_code, r.get_data(as_text=True))
    assert r.mimetype == PROBLEM
    body = r.get_json()
    assert body["type"] == f"https://fieldsync.dev/problems/{slug}"
    return body


def _order(world, territory="north", retailer="r_north", **extra):
    body = {"retailer_id": world[retailer]["id"], "territory_id": world[territory]["id"],
            "ordered_at": "2026-03-01T10:00:00+05:30"}
    body.update(extra)
    return body


def _line(world, **extra):
    body = {"product_id": world["pill"]["id"], "quantity": 2, "unit_price": "2.50"}
    body.update(extra)
    return body


def test_a_rep_cannot_reach_the_lines_of_another_reps_order(api, world):
    asha = api.as_user("rep-asha", "field_rep", territory_ids=[world["north"]["id"]])
    ravi = api.as_user("rep-ravi", "field_rep", territory_ids=[world["south"]["id"]])
    order = asha.ok("POST", "/order", _order(world, lines=[_line(world)]))
    line = order["lines"][0]
    # the owner reaches the line every way
    assert asha.ok("GET", f"/order_line/{line['id']}")["quantity"] == 2
    assert [x["id"] for x in asha.ok("GET", f"/order_line?order_id={order['id']}")["items"]] == [line["id"]]

    _problem(ravi.get(f"/order_line/{line['id']}"), 404, "not-found")
    _problem(ravi.patch(f"/order_line/{line['id']}", {"quantity": 999}, headers={"If-Match": '"1"'}),
             404, "not-found")
    _problem(ravi.put(f"/order_line/{line['id']}", _line(world, order_id=order["id"]), headers={"If-Match": "*"}),
             404, "not-found")
    body = _problem(ravi.post("/order_line", _line(world, order_id=order["id"])), 422, "validation")
    assert [e["field"] for e in body["errors"]] == ["order_id"]
    assert ravi.ok("GET", f"/order_line?order_id={order['id']}")["items"] == []
    assert ravi.ok("GET", "/order_line")["items"] == []
    _problem(ravi.get(f"/order/{order['id']}/lines"), 404, "not-found")
    _problem(ravi.post(f"/order/{order['id']}/lines", _line(world)), 404, "not-found")
    # nothing was written
    assert asha.ok("GET", f"/order_line/{line['id']}")["version"] == 1
    assert len(asha.ok("GET", "/order_line")["items"]) == 1


def test_price_list_items_follow_their_price_list(api, world):
    north_list = api.ok("POST", "/price_list", {"name": "N", "territory_id": world["north"]["id"],
                                                "valid_from": "2026-01-01",
                                                "items": [{"product_id": world["pill"]["id"], "price": "2.00"}]})
    item = north_list["items"][0]
    ravi = api.as_user("rep-ravi", "field_rep", territory_ids=[world["south"]["id"]])
    asha = api.as_user("rep-asha", "field_rep", territory_ids=[world["north"]["id"]])
    assert asha.ok("GET", f"/price_list_item/{item['id']}")["price"] == "2.00"
    _problem(ravi.get(f"/price_list_item/{item['id']}"), 404, "not-found")
    assert ravi.ok("GET", "/price_list_item")["items"] == []
    assert ravi.ok("GET", f"/price_list_item?price_list_id={north_list['id']}")["items"] == []


def test_the_parents_editable_list_applies_to_the_childs_fields(api, world):
    order = api.ok("POST", "/order", _order(world, lines=[_line(world)]))
    line = order["lines"][0]
    sup = api.as_user("sup-1", "supervisor", region="north")
    assert sup.ok("GET", f"/order_line/{line['id']}")["unit_price"] == "2.50"
    body = _problem(sup.patch(f"/order_line/{line['id']}", {"unit_price": "0.01"}, headers={"If-Match": '"1"'}),
                    422, "validation")
    assert body["errors"] == [{"field": "unit_price", "reason": "may not be set by your role"}]
    # the order itself: status is editable
    assert sup.ok("PATCH", f"/order/{order['id']}", {"status": "confirmed"}, headers={"If-Match": '"1"'})
    assert api.ok("GET", f"/order_line/{line['id']}")["unit_price"] == "2.50"


def test_a_child_of_a_deleted_parent_is_not_reachable(api, world):
    order = api.ok("POST", "/order", _order(world, lines=[_line(world)]))
    line = order["lines"][0]
    assert api.request("DELETE", f"/order/{order['id']}").status_code == 204
    _problem(api.get(f"/order_line/{line['id']}"), 404, "not-found")
    assert api.ok("GET", "/order_line")["items"] == []
    _problem(api.patch(f"/order_line/{line['id']}", {"quantity": 3}, headers={"If-Match": "*"}), 404, "not-found")
    _problem(api.delete(f"/order_line/{line['id']}"), 404, "not-found")
    body = _problem(api.post("/order_line", _line(world, order_id=order["id"])), 422, "validation")
    assert [e["field"] for e in body["errors"]] == ["order_id"]


def test_a_reference_to_an_unreadable_record_is_the_same_422_as_a_missing_one(api, world):
    asha = api.as_user("rep-asha", "field_rep", territory_ids=[world["north"]["id"]])
    ravi = api.as_user("rep-ravi", "field_rep", territory_ids=[world["north"]["id"]])
    visit = {"territory_id": world["north"]["id"], "visited_at": "2026-03-01T10:00:00Z", "purpose": "order"}

    def refused(user, path, body, field):
        r = user.post(path, body)
        problem = _problem(r, 422, "validation")
        assert [e["field"] for e in problem["errors"]] == [field], problem
        return problem["errors"][0]["reason"]

    # a retailer of another territory: the same answer as a retailer that does not exist
    missing = str(uuid.uuid4())
    hidden = refused(asha, "/visit", {**visit, "retailer_id": world["r_south"]["id"]}, "retailer_id")
    absent = refused(asha, "/visit", {**visit, "retailer_id": missing}, "retailer_id")
    assert hidden.replace(world["r_south"]["id"], "ID") == absent.replace(missing, "ID")
    # an order naming another rep's visit
    theirs = ravi.ok("POST", "/visit", {**visit, "retailer_id": world["r_north"]["id"]})
    refused(asha, "/order", _order(world, visit_id=theirs["id"]), "visit_id")
    mine = asha.ok("POST", "/visit", {**visit, "retailer_id": world["r_north"]["id"]})
    assert asha.ok("POST", "/order", _order(world, visit_id=mine["id"]))["visit_id"] == mine["id"]
    # changing a reference is checked the same way
    r = asha.patch(f"/visit/{mine['id']}", {"retailer_id": world["r_south"]["id"]}, headers={"If-Match": "*"})
    assert [e["field"] for e in _problem(r, 422, "validation")["errors"]] == ["retailer_id"]
    # an inactive product is outside a rep's row filter: a line cannot name it
    order = asha.ok("POST", "/order", _order(world))
    refused(asha, f"/order/{order['id']}/lines", _line(world, product_id=world["old"]["id"]), "product_id")
    problem = _problem(asha.post("/order", _order(world, lines=[_line(world, product_id=world["old"]["id"])])),
                       422, "validation")
    assert [e["field"] for e in problem["errors"]] == ["lines[0].product_id"]
