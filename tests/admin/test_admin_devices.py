"""The devices view (docs/admin.md "Devices"): who sees it, the figures it shows for devices that
registered and pushed through the real sync API, the rejected mutations of a device, revoke
(audited; the device's token is refused afterwards), CSRF refusal; and the overview functions
the dashboard reuses (fieldsync.sync.overview)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa

from fieldsync.auth.users import add_user
from fieldsync.ids import new_id, utc_now
from fieldsync.store.sync_tables import DEVICES
from fieldsync.sync.overview import (device_overview, devices_synced_since, lagging_devices,
                                     quarantined_mutations)
from tests.admin.conftest import PASSWORD, AdminClient


class Device:
    """A field device speaking the sync protocol through the fieldsync app's test client."""

    def __init__(self, app, user: str, install: str = "i-1", platform: str = "android 14", app_version="2.1.0"):
        self.client = app.test_client()
        login = self.client.post("/api/v1/auth/login", json={"user": user, "password": PASSWORD})
        assert login.status_code == 200, login.get_data(as_text=True)
        self.token = login.json["token"]
        self.seq = 0
        r = self.post("/devices", {"install_id": install, "schema_version": 1, "platform": platform,
                                   "app_version": app_version})
        assert r.status_code == 201, r.json
        self.device_id = r.json["device_id"]
        self.device_token = r.json["device_token"]

    def post(self, path, body, token=None):
        return self.client.post("/api/v1/sync" + path, json=body, headers={
            "Authorization": "Bearer " + (token or self.token), "Fieldsync-Protocol": "1"})

    def push(self, *mutations):
        batch = []
        for entity, fields in mutations:
            self.seq += 1
            batch.append({"seq": self.seq, "entity": entity, "op": "insert", "id": new_id(),
                          "client_time": "2026-11-27T10:00:00Z", "fields": fields})
        r = self.post("/push", {"device_id": self.device_id, "schema_version": 1, "mutations": batch})
        assert r.status_code == 202, r.json
        return r.json

    def pull(self, token=None):
        return self.post("/pull", {"device_id": self.device_id, "schema_version": 1, "cursor": 0}, token=token)


_sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)   # the SQL is exercised on PostgreSQL by the tests left on both

@pytest.fixture
def fleet(admin_app):
    """Reference data in one territory, two reps each with a device; rep-one pushed a good visit
    and an invalid one (quarantined), and the server applied them; rep-two only registered."""
    state = admin_app.extensions["fieldsync"]
    store = state.store
    territory = store.create("territory", {"code": "PUNE-1", "name": "Pune", "region": "west"})
    retailer = store.create("retailer", {"name": "Sai Medical", "territory_id": territory["id"],
                                         "category": "pharmacy"})
    for user in ("rep-one", "rep-two"):
        add_user(state.engine, state.audit, state.model, user, role="field_rep", password=PASSWORD,
                 attributes={"territory_ids": [territory["id"]]}, actor="test", now=admin_app.clock())
    one = Device(admin_app, "rep-one", platform="android 14", app_version="2.1.0")
    two = Device(admin_app, "rep-two", platform="ios 18", app_version="2.0.3")
    visit = {"retailer_id": retailer["id"], "territory_id": territory["id"], "visited_at": "2026-11-27T09:00:00Z",
             "purpose": "order"}
    one.push(("visit", visit), ("visit", {**visit, "purpose": "gossip"}))
    state.sync.drain()
    # a third mutation received and not processed yet: unsettled
    one.push(("visit", visit))
    return {"one": one, "two": two, "territory": territory, "state": state}


def _audit_entries(state, event: str) -> list:
    return [e for e in state.audit.entries() if (e.detail or {}).get("event") == event]


# -- who sees it ----------------------------------------------------------------------------------

@_sqlite_only
def test_anonymous_is_sent_to_login(admin_app):
    response = AdminClient(admin_app).get("/admin/devices/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


@pytest.mark.parametrize("role", ["analyst", "compliance"])
@_sqlite_only
def test_other_roles_are_refused(browser_as, role):
    client = browser_as(role)
    assert client.get("/admin/devices/").status_code == 403
    assert client.get("/admin/devices/x").status_code == 403
    assert client.post("/admin/devices/x/revoke", {"reason": "r"}).status_code == 403
    assert 'href="/admin/devices/"' not in client.text(client.get("/admin/"))   # not in the menu


@_sqlite_only
def test_admin_sees_it_in_the_menu(browser_as):
    client = browser_as("admin")
    assert 'href="/admin/devices/"' in client.text(client.get("/admin/"))
    page = client.get("/admin/devices/")
    assert page.status_code == 200 and 'id="fs-devices-empty"' in client.text(page)


# -- what it shows -------------------------------------------------------------------------------

def test_table_shows_each_device_with_its_figures(browser_as, fleet):
    client = browser_as("admin")
    page = client.get("/admin/devices/")
    html = client.text(page)
    assert page.status_code == 200 and 'id="fs-devices"' in html
    one, two = fleet["one"], fleet["two"]
    row_one = html.split(f'id="fs-device-{one.device_id}"')[1].split("</tr>")[0]
    row_two = html.split(f'id="fs-device-{two.device_id}"')[1].split("</tr>")[0]
    assert "rep-one" in row_one and "android 14" in row_one and "2.1.0" in row_one
    assert "rep-two" in row_two and "ios 18" in row_two and "2.0.3" in row_two
    assert '<td class="text-right fs-unsettled">1</td>' in row_one      # the third push, not processed
    assert '<td class="text-right fs-rejected">1</td>' in row_one        # the invalid visit
    assert '<td class="text-right fs-unsettled">0</td>' in row_two
    assert '<td class="text-right fs-rejected">0</td>' in row_two
    with fleet["state"].engine.connect() as conn:
        head = device_overview(conn)["head"]
    assert head > 0 and f'<td class="text-right fs-behind">{head}</td>' in row_two   # never pulled


@_sqlite_only
def test_pull_and_ack_move_the_cursor_and_report_counts(browser_as, fleet):
    one = fleet["one"]
    page = one.pull()
    assert page.status_code == 200, page.json
    while page.json["has_more"]:
        page = one.post("/pull", {"device_id": one.device_id, "schema_version": 1, "cursor": page.json["cursor"],
                                  "scope_hash": page.json["scope_hash"], "resume": page.json["resume"]})
    cursor = page.json["cursor"]
    # the device acknowledges page and reports its outbox and quarantine
    r = one.post("/ack", {"device_id": one.device_id, "cursor": cursor, "results_through": 2,
                          "outbox": {"pending": 2, "sent": 1, "received": 0}, "quarantined": 1})
    assert r.status_code == 200, r.json
    with fleet["state"].engine.connect() as conn:
        overview = device_overview(conn)
    item = next(i for i in overview["items"] if i["device_id"] == one.device_id)
    assert (item["pending"], item["quarantined"], item["behind"]) == (3, 1, overview["head"] - cursor)
    client = browser_as("admin")
    html = client.text(client.get("/admin/devices/"))
    row = html.split(f'id="fs-device-{one.device_id}"')[1].split("</tr>")[0]
    assert '<td class="text-right fs-pending">3</td>' in row
    assert '<td class="text-right fs-quarantined">1</td>' in row


@_sqlite_only
def test_device_page_lists_rejected_mutations_with_reasons(browser_as, fleet):
    client = browser_as("admin")
    one = fleet["one"]
    page = client.get(f"/admin/devices/{one.device_id}")
    html = client.text(page)
    assert page.status_code == 200 and 'id="fs-rejections"' in html
    rejection = html.split('id="fs-rejections"')[1]
    assert "visit" in rejection and "purpose" in rejection        # the field and its reason
    assert rejection.count("<tr>") == 2                           # header + the one rejection
    assert 'id="fs-device-preview" href="/admin/preview/?mode=user&amp;user=rep-one"' in html \
        or '/admin/preview/?mode=user&amp;user=rep-one" id="fs-device-preview"' in html
    two = client.text(client.get(f"/admin/devices/{fleet['two'].device_id}"))
    assert 'id="fs-rejections-empty"' in two


@_sqlite_only
def test_unknown_device_is_404(browser_as):
    client = browser_as("admin")
    assert client.get("/admin/devices/no-such-device").status_code == 404
    assert client.get("/admin/devices/" + "x" * 300).status_code == 404
    assert client.post("/admin/devices/no-such-device/revoke", {"reason": "lost"}).status_code == 404


# -- revoke ----------------------------------------------------------------------------------------

@_sqlite_only
def test_revoke_refuses_the_device_token_and_is_audited(browser_as, fleet):
    client = browser_as("admin")
    two = fleet["two"]
    assert two.pull(token=two.device_token).status_code == 200
    response = client.post(f"/admin/devices/{two.device_id}/revoke", {"reason": "phone lost in Pune"})
    assert response.status_code == 302
    page = client.text(client.get(response.headers["Location"]))
    assert "revoked" in page and 'id="fs-revoke-form"' not in page
    refused = two.pull(token=two.device_token)
    assert refused.status_code == 401, refused.json
    assert two.pull().status_code == 403          # the user's token naming the device
    entries = _audit_entries(fleet["state"], "device_revoked")
    assert len(entries) == 1
    entry = entries[0]
    assert (entry.actor, entry.role, entry.channel, entry.device) == ("ada-admin", "admin", "admin", two.device_id)
    # a second revoke changes nothing and audits nothing
    client.post(f"/admin/devices/{two.device_id}/revoke", {"reason": "again"})
    assert len(_audit_entries(fleet["state"], "device_revoked")) == 1
    with fleet["state"].engine.connect() as conn:
        assert conn.execute(sa.select(DEVICES.c.status).where(DEVICES.c.device_id == two.device_id)).scalar() \
            == "revoked"


@_sqlite_only
def test_revoke_needs_a_reason(browser_as, fleet):
    client = browser_as("admin")
    two = fleet["two"]
    for reason in ("", "   ", "x" * 501, "a\x00b"):
        response = client.post(f"/admin/devices/{two.device_id}/revoke", {"reason": reason})
        assert response.status_code == 302
    assert two.pull(token=two.device_token).status_code == 200
    assert _audit_entries(fleet["state"], "device_revoked") == []


@_sqlite_only
def test_revoke_without_csrf_is_refused(browser_as, fleet):
    client = browser_as("admin")
    two = fleet["two"]
    response = client.post(f"/admin/devices/{two.device_id}/revoke", {"reason": "lost"}, csrf=False)
    assert response.status_code == 400
    response = client.post(f"/admin/devices/{two.device_id}/revoke", {"reason": "lost", "csrf_token": "forged"},
                           csrf=False)
    assert response.status_code == 400
    assert two.pull(token=two.device_token).status_code == 200


# -- the dashboard's figures -------------------------------------------------------------------------

def test_dashboard_figures(fleet):
    state = fleet["state"]
    now = utc_now()
    with state.engine.connect() as conn:
        assert devices_synced_since(conn, now - dt.timedelta(hours=1)) == 2
        assert lagging_devices(conn, now) == 0             # both were in contact just now
        assert lagging_devices(conn, now + dt.timedelta(hours=2)) == 2   # quiet since, and behind
        assert quarantined_mutations(conn) == 1
    with state.engine.begin() as conn:
        conn.execute(DEVICES.update().where(DEVICES.c.device_id == fleet["one"].device_id)
                     .values(status="revoked"))
    with state.engine.connect() as conn:
        assert devices_synced_since(conn, now - dt.timedelta(hours=1)) == 1
        assert quarantined_mutations(conn) == 0
        assert quarantined_mutations(conn, active_only=False) == 1
        assert lagging_devices(conn, now + dt.timedelta(hours=2)) == 1
        # a device at the head is not lagging, however quiet
        head = device_overview(conn)["head"]
        conn.execute(DEVICES.update().values(acked_cursor=head))
        assert lagging_devices(conn, now + dt.timedelta(hours=2)) == 0


@_sqlite_only
def test_overview_survives_an_odd_device_report(fleet):
    state = fleet["state"]
    with state.engine.begin() as conn:
        conn.execute(DEVICES.update().values(reported=json.dumps({"outbox": "x", "quarantined": "many"})))
    with state.engine.connect() as conn:
        items = device_overview(conn)["items"]
    assert all(i["pending"] is None and i["quarantined"] is None for i in items)
