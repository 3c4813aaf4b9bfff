"""The Data views of the admin UI (docs/admin.md, "Data"): one view per entity over RecordStore,
with the role's permissions, row filters, editable fields, PHI masking and audit, break-glass,
and writes through the store (change log, REST, devices)."""

from __future__ import annotations

import html
import re

import pytest

from fieldsync.store.changelog import changes_after
from tests.admin.conftest import PASSWORD, ROLE_USERS, AdminClient

# the tests of SQL this module builds (lists, filters, sort, pages, row filters, writes, audit) run on
# SQLite and PostgreSQL; the ones about forms, roles and CSRF on SQLite only
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

PATIENT = "0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d"


@pytest.fixture
def example_model(defs_copy):
    """The example definitions with three changes the tests need: admin holds the break-glass
    grant on prescription (it sees no patient fields but the diagnosis otherwise) and may edit
    the dosage and the diagnosis, the analyst reaches only the
    orders whose rep_id is their own id (so the lines of other orders are out of reach), and the
    analyst may do nothing with expense."""
    from fieldsync.defs import load_model
    rx = defs_copy / "transactions" / "prescription.yaml"
    text = rx.read_text()
    old = ("  admin:\n    actions: [read, delete]\n"
           "    visible: [rep_id, retailer_id, territory_id, product_id, prescribed_at]\n")
    assert old in text
    rx.write_text(text.replace(old, "  admin:\n    actions: [read, update, delete]\n"
                                    "    visible: [rep_id, retailer_id, territory_id, product_id, prescribed_at,"
                                    " dosage, diagnosis]\n"
                                    "    editable: [dosage, diagnosis]\n    break_glass: true\n"))
    order = defs_copy / "transactions" / "order.yaml"
    text = order.read_text()
    old = "  analyst:\n    actions: [read]\n"
    assert old in text
    order.write_text(text.replace(old, old + '    row_filter: "rep_id == $user.id"\n', 1))
    expense = defs_copy / "transactions" / "expense.yaml"
    text = expense.read_text()
    old = "  analyst:\n    actions: [read]\n"
    assert old in text
    expense.write_text(text.replace(old, ""))
    return load_model(defs_copy)


@pytest.fixture
def world(admin_app):
    """Reference data and a few transactions, written through the store as the system."""
    store = admin_app.extensions["fieldsync"].store
    out = {}
    out["north"] = store.create("territory", {"code": "N1", "name": "North",
                                              "region": _first_enum(store, "territory", "region")})
    north = out["north"]["id"]
    out["shop"] = store.create("retailer", {"name": "Shop One", "territory_id": north, "phone": "+91 555 0101"})
    out["shop2"] = store.create("retailer", {"name": "Zed Stores", "territory_id": north, "phone": "+91 555 0202"})
    out["pill"] = store.create("product", {"sku": "P-1", "name": "Pill", "unit_price": "2.50",
                                           "category": _first_enum(store, "product", "category")})
    out["order"] = store.create("order", {"rep_id": "rep-asha", "retailer_id": out["shop"]["id"],
                                          "territory_id": out["north"]["id"], "ordered_at": "2026-03-01T10:00:00Z"},
                                children={"lines": [{"product_id": out["pill"]["id"], "quantity": 3,
                                                     "unit_price": "2.50"}]})
    out["line"] = out["order"]["lines"][0]
    out["rx"] = store.create("prescription", {
        "rep_id": "rep-asha", "retailer_id": out["shop"]["id"], "territory_id": out["north"]["id"],
        "patient_id": PATIENT, "patient_name": "Jane Roe", "patient_dob": "1980-02-03",
        "diagnosis": "seasonal asthma", "product_id": out["pill"]["id"], "prescribed_at": "2026-03-02T09:00:00Z"})
    return out


def _first_enum(store, entity, field):
    return store.model.entity(entity).field(field).values[0]


def _audit(admin_app, **where):
    return list(admin_app.extensions["fieldsync"].audit.entries(**where))


def _rest_token(admin_app, role="admin"):
    r = admin_app.test_client().post("/api/v1/auth/login", json={"user": ROLE_USERS[role], "password": PASSWORD})
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()["token"]


def _changes(admin_app, entity):
    engine = admin_app.extensions["fieldsync"].engine
    return [c for c in changes_after(engine, 0, 10_000)[0] if c.entity == entity]


def _text(client, response):
    return html.unescape(client.text(response))


# -- who sees which views ------------------------------------------------------------------------

@SQLITE_ONLY
@pytest.mark.parametrize("role", ["admin", "analyst", "compliance"])
def test_each_role_sees_the_entity_views_it_may_read(browser_as, role):
    client = browser_as(role)
    page = client.get("/admin/data/retailer/")
    assert page.status_code == 200, client.text(page)
    assert 'id="fs-data-list"' in client.text(page)
    menu = client.text(client.get("/admin/"))
    assert "/admin/data/prescription/" in menu
    expense = client.get("/admin/data/expense/")
    if role == "analyst":
        assert expense.status_code == 403
        assert "/admin/data/expense/" not in menu
    else:
        assert expense.status_code == 200


@SQLITE_ONLY
def test_anonymous_is_sent_to_login(admin_app):
    response = AdminClient(admin_app).get("/admin/data/retailer/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


@SQLITE_ONLY
def test_buttons_follow_the_roles_actions(browser_as, world):
    admin, analyst = browser_as("admin"), browser_as("analyst")
    assert admin.get("/admin/data/retailer/new/").status_code == 200
    # the analyst may only read retailers: no create form, no edit form, no delete
    assert analyst.get("/admin/data/retailer/new/").status_code in (302, 403)
    assert analyst.get(f"/admin/data/retailer/edit/?id={world['shop']['id']}").status_code in (302, 403)
    r = analyst.post("/admin/data/retailer/delete/", {"id": world["shop"]["id"], "confirm": "yes"})
    assert r.status_code in (302, 403)
    assert admin.get(f"/admin/data/retailer/details/?id={world['shop']['id']}").status_code == 200
    # nothing was deleted
    store = admin.app.extensions["fieldsync"].store
    assert store.get("retailer", world["shop"]["id"])["version"] == 1


# -- list, filter, sort --------------------------------------------------------------------------

def test_list_filters_and_sorts(browser_as, world):
    client = browser_as("admin")
    page = _text(client, client.get("/admin/data/retailer/"))
    assert "Shop One" in page and "Zed Stores" in page
    filtered = _text(client, client.get("/admin/data/retailer/?flt0_name_equals=Zed%20Stores"))
    assert "Zed Stores" in filtered and "Shop One" not in filtered
    # sort by name, both ways (the column index of "name" in the list)
    columns = ["id", "name"]
    idx = columns.index("name")
    up = _text(client, client.get(f"/admin/data/retailer/?sort={idx}"))
    down = _text(client, client.get(f"/admin/data/retailer/?sort={idx}&desc=1"))
    assert up.index("Shop One") < up.index("Zed Stores")
    assert down.index("Zed Stores") < down.index("Shop One")


@SQLITE_ONLY
def test_bad_filter_values_are_messages_not_errors(browser_as, world):
    client = browser_as("admin")
    for url in ("/admin/data/product/?flt0_pack_size_equals=" + "9" * 5000,
                "/admin/data/product/?flt0_pack_size_greater_than=abc",
                "/admin/data/retailer/?flt0_name_equals=%00",
                "/admin/data/retailer/?flt0_territory_id_equals=not-a-uuid",
                "/admin/data/retailer/?page=99999999999999999999&sort=77",
                "/admin/data/retailer/details/?id=%00",
                "/admin/data/retailer/details/?id=" + "x" * 3000):
        response = client.get(url)
        assert response.status_code < 500, (url, client.text(response)[:2000])


# -- create, edit, delete through the store --------------------------------------------------------

def test_create_goes_through_the_store(admin_app, browser_as, world):
    client = browser_as("admin")
    before = len(_changes(admin_app, "retailer"))
    r = client.post("/admin/data/retailer/new/", {"name": "Café Ünïcode ✓", "territory_id": world["north"]["id"],
                                                  "phone": "+91 555 0303", "credit_limit": "100.5",
                                                  "location": "18.52, 73.85", "category": ""})
    assert r.status_code == 302, _text(client, r)
    changes = _changes(admin_app, "retailer")
    assert len(changes) == before + 1 and changes[-1].op == "create"
    record_id = changes[-1].record_id
    assert changes[-1].row["name"] == "Café Ünïcode ✓"
    # REST sees it
    token = _rest_token(admin_app)
    got = admin_app.test_client().get(f"/api/v1/retailer/{record_id}", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 200 and got.get_json()["credit_limit"] == "100.50"
    assert got.get_json()["location"] == {"lat": 18.52, "lon": 73.85}
    # audited as the admin's write
    entries = [e for e in _audit(admin_app, entity="retailer") if e.action == "create" and e.channel == "admin"]
    assert entries and entries[-1].actor == ROLE_USERS["admin"] and entries[-1].record_ids == (record_id,)


@SQLITE_ONLY
def test_validation_errors_name_the_field_and_the_reason(admin_app, browser_as, world):
    client = browser_as("admin")
    before = len(_changes(admin_app, "product"))
    r = client.post("/admin/data/product/new/", {"sku": "P-2", "name": "x" * 5, "category": "no-such-category",
                                                 "unit_price": "abc", "pack_size": "9" * 5000,
                                                 "active": "true"})
    assert r.status_code == 200
    page = _text(client, r)
    assert "must be a whole number" in page or "must fit in 64 bits" in page
    assert "must be one of" in page
    assert "not saved" in page
    assert len(_changes(admin_app, "product")) == before
    # odd unicode and bad dates: a message, never a 500
    for data in ({"name": "bad\x00nul", "territory_id": world["north"]["id"]},
                 {"name": "ok", "territory_id": "not-a-uuid"},
                 {"name": "ok", "territory_id": world["pill"]["id"]},
                 {"name": "ok", "territory_id": world["north"]["id"], "location": "999, 1"},
                 {"name": "ok", "territory_id": world["north"]["id"], "credit_limit": "1e400"}):
        r = client.post("/admin/data/retailer/new/", data)
        assert r.status_code == 200, (data, r.status_code)
        assert "not saved" in _text(client, r) or "invalid" in _text(client, r), data
    # bytes that are no UTF-8 (an encoded lone surrogate) and odd but valid text: never a 500
    raw = f"csrf_token={client.csrf()}&name=%ED%A0%80%FF&territory_id={world['north']['id']}"
    r = client.client.post("/admin/data/retailer/new/", data=raw, content_type="application/x-www-form-urlencoded")
    assert r.status_code in (200, 302, 400)
    r = client.post("/admin/data/retailer/new/", {"name": "\u202e\u200b\U0001F600 ﷽",
                                                  "territory_id": world["north"]["id"]})
    assert r.status_code == 302
    r = client.post("/admin/data/territory/new/", {"code": "X", "name": "Y", "region": "nope"})
    assert "must be one of" in _text(client, r)
    r = client.post("/admin/data/price_list/new/", {"name": "L", "territory_id": world["north"]["id"],
                                                    "valid_from": "2026-02-30"})
    page = _text(client, r)
    assert r.status_code == 200 and "must be a date (YYYY-MM-DD)" in page
    # the reference problem is shown on its field
    r = client.post("/admin/data/retailer/new/", {"name": "ok", "territory_id": world["pill"]["id"]})
    assert "refers to a territory that does not exist" in _text(client, r)


def test_edit_goes_through_the_store_with_the_version_seen(admin_app, browser_as, world):
    client = browser_as("admin")
    shop = world["shop"]
    form = client.get(f"/admin/data/retailer/edit/?id={shop['id']}")
    assert form.status_code == 200 and "Shop One" in _text(client, form)
    data = {"name": "Shop One Renamed", "territory_id": world["north"]["id"], "phone": "+91 555 0101",
            "credit_limit": shop["credit_limit"] or "", "location": "", "category": "", "version": "1"}
    r = client.post(f"/admin/data/retailer/edit/?id={shop['id']}", data)
    assert r.status_code == 302, _text(client, r)
    last = _changes(admin_app, "retailer")[-1]
    assert last.op == "update" and last.record_id == shop["id"] and last.row["name"] == "Shop One Renamed"
    assert set(last.prev or {}) >= {"name"} or last.version == 2
    # a second submit of the stale form is refused: the record moved on to version 2
    r = client.post(f"/admin/data/retailer/edit/?id={shop['id']}", dict(data, name="Stale"))
    assert r.status_code == 200 and "version 2, not 1" in _text(client, r)
    assert admin_app.extensions["fieldsync"].store.get("retailer", shop["id"])["name"] == "Shop One Renamed"


def test_delete_is_a_tombstone_devices_pull(admin_app, browser_as, world):
    client = browser_as("admin")
    shop2 = world["shop2"]
    details = client.get(f"/admin/data/retailer/details/?id={shop2['id']}")
    assert 'id="fs-delete"' in client.text(details)
    # without the confirmation nothing happens
    client.post("/admin/data/retailer/delete/", {"id": shop2["id"]})
    assert admin_app.extensions["fieldsync"].store.get("retailer", shop2["id"])
    r = client.post("/admin/data/retailer/delete/", {"id": shop2["id"], "version": "1", "confirm": "yes"})
    assert r.status_code == 302
    last = _changes(admin_app, "retailer")[-1]
    assert last.op == "delete" and last.record_id == shop2["id"] and last.row["deleted"] is True
    token = _rest_token(admin_app)
    got = admin_app.test_client().get(f"/api/v1/retailer/{shop2['id']}", headers={"Authorization": f"Bearer {token}"})
    assert got.status_code == 404
    assert "Zed Stores" not in _text(client, client.get("/admin/data/retailer/"))


@SQLITE_ONLY
def test_a_post_without_csrf_is_refused(admin_app, browser_as, world):
    client = browser_as("admin")
    before = len(_changes(admin_app, "retailer"))
    r = client.post("/admin/data/retailer/new/", {"name": "x", "territory_id": world["north"]["id"]}, csrf=False)
    assert r.status_code == 400
    r = client.post("/admin/data/retailer/delete/", {"id": world["shop"]["id"], "confirm": "yes"}, csrf=False)
    assert r.status_code == 400
    assert len(_changes(admin_app, "retailer")) == before
    # the forms carry the token
    assert 'name="csrf_token"' in client.text(client.get("/admin/data/retailer/new/"))


# -- PHI and break-glass ---------------------------------------------------------------------------

@SQLITE_ONLY
def test_phi_is_masked_for_a_role_that_may_not_see_it(admin_app, browser_as, world):
    client = browser_as("analyst")
    rx = world["rx"]
    for url in ("/admin/data/prescription/", f"/admin/data/prescription/details/?id={rx['id']}"):
        page = _text(client, client.get(url))
        assert "fs-masked" in page
        assert "Jane Roe" not in page and "seasonal asthma" not in page and "1980-02-03" not in page
        assert PATIENT not in page
    assert not [e for e in _audit(admin_app, entity="prescription") if e.action == "read" and e.channel == "admin"]
    # the analyst holds no break-glass grant: no form, and a forged post is refused and audited
    page = _text(client, client.get(f"/admin/data/prescription/details/?id={rx['id']}"))
    assert 'id="fs-break-glass"' not in page
    r = client.post("/admin/data/prescription/break-glass/", {"id": rx["id"], "reason": "curious"})
    assert r.status_code == 403 and "Jane Roe" not in _text(client, r)
    denied = [e for e in _audit(admin_app, entity="prescription") if e.outcome == "denied"]
    assert denied and denied[-1].purpose == "break-glass" and denied[-1].detail["why"] == "no_grant"


def test_phi_is_shown_and_audited_for_a_role_that_may_see_it(admin_app, browser_as, world):
    client = browser_as("compliance")
    rx = world["rx"]
    page = _text(client, client.get(f"/admin/data/prescription/details/?id={rx['id']}"))
    assert "Jane Roe" in page and "seasonal asthma" in page
    reads = [e for e in _audit(admin_app, entity="prescription") if e.action == "read" and e.channel == "admin"]
    assert len(reads) == 1
    entry = reads[0]
    assert entry.actor == ROLE_USERS["compliance"] and entry.record_ids == (rx["id"],)
    assert set(entry.fields) == {"patient_id", "patient_name", "patient_dob", "diagnosis"}
    assert len(entry.subjects) == 1 and PATIENT not in entry.subjects[0]
    listing = _text(client, client.get("/admin/data/prescription/"))
    assert "Jane Roe" in listing
    reads = [e for e in _audit(admin_app, entity="prescription") if e.action == "read" and e.channel == "admin"]
    assert len(reads) == 2 and rx["id"] in reads[-1].record_ids
    # the audit holds references only
    assert all("Jane Roe" not in str(e) for e in reads)


@SQLITE_ONLY
def test_break_glass_shows_one_record_and_is_audited_with_its_reason(admin_app, browser_as, world):
    client = browser_as("admin")
    rx = world["rx"]
    url = f"/admin/data/prescription/details/?id={rx['id']}"
    page = _text(client, client.get(url))
    assert "fs-masked" in page and "Jane Roe" not in page and 'id="fs-break-glass"' in page
    # a blank reason is refused (audited), nothing shown
    r = client.post("/admin/data/prescription/break-glass/", {"id": rx["id"], "reason": "   "})
    assert r.status_code == 302
    assert [e for e in _audit(admin_app, entity="prescription") if e.detail.get("why") == "bad_request"]
    reason = "pharmacist reports an adverse reaction"
    r = client.post("/admin/data/prescription/break-glass/", {"id": rx["id"], "reason": reason})
    page = _text(client, r)
    assert r.status_code == 200 and "Jane Roe" in page and "seasonal asthma" in page
    assert 'id="fs-break-glass-active"' in page
    entries = [e for e in admin_app.extensions["fieldsync"].audit.entries(entity="prescription", decrypt_reasons=True)
               if e.purpose == "break-glass" and e.outcome == "success"]
    assert len(entries) == 1
    assert entries[0].reason == reason and entries[0].channel == "admin" and entries[0].action == "read"
    assert entries[0].actor == ROLE_USERS["admin"] and entries[0].record_ids == (rx["id"],)
    assert "diagnosis" in entries[0].fields
    # the next view is masked again
    assert "Jane Roe" not in _text(client, client.get(url))


# -- child entities ------------------------------------------------------------------------------

def test_a_child_is_reachable_only_through_a_live_reachable_parent(admin_app, browser_as, world):
    line, order = world["line"], world["order"]
    admin, analyst = browser_as("admin"), browser_as("analyst")
    assert line["id"] in admin.text(admin.get("/admin/data/order_line/"))
    details = admin.text(admin.get(f"/admin/data/order/details/?id={order['id']}"))
    link = html.unescape(re.search(r'id="fs-children"><a [^>]*href="([^"]+)"', details).group(1))
    assert f"flt0_order_id_equals={order['id']}" in link and line["id"] in admin.text(admin.get(link))
    assert admin.get(f"/admin/data/order_line/details/?id={line['id']}").status_code == 200
    # the analyst reaches only their own orders: neither the order nor its line
    assert line["id"] not in analyst.text(analyst.get("/admin/data/order_line/"))
    assert order["id"] not in analyst.text(analyst.get("/admin/data/order/"))
    r = analyst.get(f"/admin/data/order_line/details/?id={line['id']}", follow_redirects=True)
    assert "that your role may see" in analyst.text(r) and "fs-data-details" not in analyst.text(r)
    r = analyst.get(f"/admin/data/order_line/?flt0_order_id_equals={order['id']}")
    assert line["id"] not in analyst.text(r)
    # a deleted parent takes its children out of reach for everyone
    admin_app.extensions["fieldsync"].store.delete("order", order["id"])
    assert line["id"] not in admin.text(admin.get("/admin/data/order_line/"))
    r = admin.get(f"/admin/data/order_line/details/?id={line['id']}", follow_redirects=True)
    assert "that your role may see" in admin.text(r)
    r = admin.post(f"/admin/data/order_line/edit/?id={line['id']}", {"quantity": "5", "version": "1"})
    assert r.status_code == 302
    assert admin.post("/admin/data/order_line/new/", {"order_id": order["id"], "product_id": world["pill"]["id"],
                                                      "quantity": "1", "unit_price": "1.00"}).status_code == 200
    assert [c.op for c in _changes(admin_app, "order_line")] == ["create"]


@SQLITE_ONLY
def test_hidden_fields_are_masked_and_not_filterable(browser_as, world):
    client = browser_as("analyst")
    page = _text(client, client.get("/admin/data/retailer/"))
    assert "+91 555 0101" not in page and "fs-masked" in page
    r = client.get("/admin/data/retailer/?flt0_phone_equals=%2B91%20555%200101")
    assert r.status_code == 200
    assert "Shop One" not in _text(client, r)


def test_pages_walk_the_stores_cursor(admin_app, browser_as, world):
    store = admin_app.extensions["fieldsync"].store
    for i in range(23):
        store.create("territory", {"code": f"T{i:02d}", "name": f"Territory {i:02d}",
                                   "region": _first_enum(store, "territory", "region")})
    client = browser_as("admin")
    idx = ["id", "code"].index("code")
    first = _text(client, client.get(f"/admin/data/territory/?sort={idx}"))
    second = _text(client, client.get(f"/admin/data/territory/?sort={idx}&page=1"))
    shown_first = set(re.findall(r"Territory \d\d", first))
    shown_second = set(re.findall(r"Territory \d\d", second))
    assert len(shown_first) == 19 and len(shown_second) == 4      # 24 territories, "North" sorts first (N1)
    assert not shown_first & shown_second
    assert "Territory 22" in shown_second
    past = _text(client, client.get(f"/admin/data/territory/?sort={idx}&page=5"))
    assert "Territory" not in past.split("model-list")[-1]


def test_an_owner_field_is_the_logged_in_user_and_phi_deletes_are_audited(admin_app, browser_as, world):
    client = browser_as("admin")
    form = client.text(client.get("/admin/data/order/new/"))
    assert 'name="rep_id"' not in form and 'name="retailer_id"' in form
    r = client.post("/admin/data/order/new/", {"retailer_id": world["shop"]["id"], "territory_id": world["north"]["id"],
                                               "ordered_at": "2026-03-05T08:00:00+05:30", "status": "draft"})
    assert r.status_code == 302, _text(client, r)
    last = _changes(admin_app, "order")[-1]
    assert last.op == "create" and last.row["rep_id"] == ROLE_USERS["admin"] and last.row["status"] == "draft"
    # admin may delete a prescription (a PHI write: the store's audit hook records it on the admin channel)
    rx = world["rx"]
    r = client.post("/admin/data/prescription/delete/", {"id": rx["id"], "version": "1", "confirm": "yes"})
    assert r.status_code == 302
    assert _changes(admin_app, "prescription")[-1].op == "delete"
    deletes = [e for e in _audit(admin_app, entity="prescription") if e.action == "delete" and e.fields]
    assert deletes and deletes[-1].channel == "admin" and deletes[-1].actor == ROLE_USERS["admin"]
    assert "diagnosis" in deletes[-1].fields


@SQLITE_ONLY
def test_every_entity_view_renders_for_every_role(admin_app, browser_as, world):
    model = admin_app.extensions["fieldsync"].model
    for role in ("admin", "analyst", "compliance"):
        client = browser_as(role)
        for entity in model.entities:
            page = client.get(f"/admin/data/{entity.name}/")
            assert page.status_code in (200, 403), (role, entity.name, page.status_code)
            if page.status_code == 200:
                new = client.get(f"/admin/data/{entity.name}/new/")
                assert new.status_code in (200, 302), (role, entity.name)
    client = browser_as("admin")
    for key in ("shop", "pill", "order", "line", "rx", "north"):
        record = world[key]
        entity = next(e.name for e in model.entities
                      if any(c.record_id == record["id"] for c in _changes(admin_app, e.name)))
        assert client.get(f"/admin/data/{entity}/details/?id={record['id']}").status_code == 200
        edit = client.get(f"/admin/data/{entity}/edit/?id={record['id']}")
        assert edit.status_code in (200, 302)


@SQLITE_ONLY
def test_the_views_follow_the_live_model(admin_app, browser_as, world, defs_copy):
    """A field added to the definitions and applied appears in the entity's list and form without
    a restart (the admin app is rebuilt for the new model version)."""
    from fieldsync.defs import load_model
    client = browser_as("admin")
    assert 'name="email"' not in client.text(client.get("/admin/data/retailer/new/"))
    retailer = defs_copy / "masters" / "retailer.yaml"
    text = retailer.read_text()
    retailer.write_text(text.replace("fields:\n", "fields:\n  email:\n    type: string\n    max_length: 120\n", 1))
    admin_app.extensions["fieldsync"].swap_model(load_model(defs_copy))
    assert 'name="email"' in client.text(client.get("/admin/data/retailer/new/"))
    r = client.post("/admin/data/retailer/new/", {"name": "New One", "territory_id": world["north"]["id"],
                                                  "email": "shop@example.org"})
    assert r.status_code == 302, _text(client, r)
    assert _changes(admin_app, "retailer")[-1].row["email"] == "shop@example.org"


def test_editing_phi_audits_the_form_shown_and_the_write(admin_app, browser_as, world):
    client = browser_as("admin")
    rx = world["rx"]
    form = _text(client, client.get(f"/admin/data/prescription/edit/?id={rx['id']}"))
    assert 'name="diagnosis"' in form and "seasonal asthma" in form and 'name="patient_name"' not in form
    reads = [e for e in _audit(admin_app, entity="prescription") if e.action == "read" and e.channel == "admin"]
    assert len(reads) == 1 and reads[0].fields == ("diagnosis",) and reads[0].record_ids == (rx["id"],)
    r = client.post(f"/admin/data/prescription/edit/?id={rx['id']}", {"diagnosis": "asthma, resolved", "dosage": "",
                                                                      "version": "1"})
    assert r.status_code == 302, _text(client, r)
    store = admin_app.extensions["fieldsync"].store
    assert store.get("prescription", rx["id"])["diagnosis"] == "asthma, resolved"
    assert _changes(admin_app, "prescription")[-1].op == "update"
    writes = [e for e in _audit(admin_app, entity="prescription") if e.action == "update" and e.fields]
    assert writes and writes[-1].channel == "admin" and writes[-1].fields == ("diagnosis",)
    assert writes[-1].actor == ROLE_USERS["admin"] and len(writes[-1].subjects) == 1
    # a required PHI field emptied: refused on its field, nothing written
    r = client.post(f"/admin/data/prescription/edit/?id={rx['id']}", {"diagnosis": "", "version": "2"})
    assert r.status_code == 200 and "is required and may not be null" in _text(client, r)
    assert store.get("prescription", rx["id"])["version"] == 2


@SQLITE_ONLY
def test_no_phi_is_shown_when_the_audit_trail_refuses(admin_app, browser_as, world, monkeypatch):
    from fieldsync.errors import AuditUnavailable
    client, admin = browser_as("compliance"), browser_as("admin")
    audit = admin_app.extensions["fieldsync"].audit

    def refuse(*args, **kwargs):
        raise AuditUnavailable("the audit database is down")
    monkeypatch.setattr(audit, "record_all", refuse)
    for url in ("/admin/data/prescription/", f"/admin/data/prescription/details/?id={world['rx']['id']}"):
        r = client.get(url)
        assert r.status_code == 503 and "Jane Roe" not in _text(client, r)
    # a PHI write whose audit entry cannot be written is not written
    monkeypatch.setattr(audit, "append_all", refuse)
    before = len(_changes(admin_app, "prescription"))
    r = admin.post(f"/admin/data/prescription/edit/?id={world['rx']['id']}", {"diagnosis": "changed", "version": "1"})
    assert r.status_code == 200 and "audit trail could not record" in _text(admin, r)
    assert len(_changes(admin_app, "prescription")) == before
