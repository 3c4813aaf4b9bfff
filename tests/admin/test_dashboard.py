"""The dashboard: six figures read from the device table, the ledger, the queue and the audit trail."""

from __future__ import annotations

import datetime as dt
import re
import uuid

import pytest

from fieldsync.audit.chain import ENTRIES
from fieldsync.store.changelog import head_position
from fieldsync.store.sync_tables import DEVICES
from tests.admin.conftest import AdminClient

FIGURES = ("syncing", "lagging", "quarantined", "queue-depth", "push-spool", "dependencies", "failed-logins",
           "last-verification")


def _state(app):
    return app.extensions["fieldsync"]


def _figure(client, name: str) -> str:
    html = client.text(client.get("/admin/"))
    found = re.search(rf'id="fs-fig-{name}" data-value="([^"]*)"', html)
    assert found, name
    return found.group(1)


def _device(conn, *, contact: dt.datetime, acked: int, status: str = "active", rejected: int = 0) -> str:
    device_id = str(uuid.uuid4())
    conn.execute(DEVICES.insert().values(device_id=device_id, user_id="rep-asha", install_id=device_id[:8],
                                         schema_version=1, status=status, registered_at=contact,
                                         last_contact_at=contact, acked_cursor=acked, rejected=rejected))
    return device_id


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("role", ["admin", "analyst", "compliance"])
def test_every_admin_role_sees_the_eight_figures(browser_as, role):
    client = browser_as(role)
    html = client.text(client.get("/admin/"))
    assert 'id="fs-dashboard"' in html
    for name in FIGURES:
        assert f'id="fs-fig-{name}"' in html


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_anonymous_and_field_rep_do_not_see_it(admin_app):
    assert AdminClient(admin_app).get("/admin/").status_code == 302


def test_device_figures_from_the_sync_tables(browser_as, admin_app):
    """Runs on SQLite and PostgreSQL: the overview's SQL is the dashboard's own."""
    state = _state(admin_app)
    state.store.create("territory", {"name": "Nashik", "code": "NSK1", "region": "west"})   # moves the head
    now = state.audit.clock()
    head = head_position(state.engine)
    assert head > 0
    with state.engine.begin() as conn:
        _device(conn, contact=now - dt.timedelta(minutes=5), acked=head, rejected=2)
        _device(conn, contact=now - dt.timedelta(minutes=30), acked=0)               # behind, but syncing
        _device(conn, contact=now - dt.timedelta(hours=5), acked=0)                  # lagging
        _device(conn, contact=now - dt.timedelta(days=3), acked=head)                # silent, up to date
        _device(conn, contact=now - dt.timedelta(hours=5), acked=0, status="revoked", rejected=4)  # not counted
    client = browser_as("admin")
    assert _figure(client, "syncing") == "2"
    assert _figure(client, "lagging") == "1"
    assert _figure(client, "quarantined") == "2"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_queue_depth_counts_waiting_messages(browser_as, admin_app):
    client = browser_as("admin")
    before = int(_figure(client, "queue-depth"))
    queue = _state(admin_app).sync.queue
    queue.send(b"{}", group="test-device")
    queue.send(b"{}", group="test-device")
    assert int(_figure(client, "queue-depth")) == before + 2


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_failed_logins_of_the_last_day_from_the_audit_trail(browser_as, admin_app):
    client = browser_as("admin")
    assert _figure(client, "failed-logins") == "0"
    for _ in range(2):
        assert AdminClient(admin_app).login("ada-admin", password="not the password").status_code == 401
    assert _figure(client, "failed-logins") == "2"
    old = _state(admin_app).audit.clock() - dt.timedelta(days=2)
    with _state(admin_app).engine.begin() as conn:   # a failure from two days ago is not counted
        seq = conn.execute(ENTRIES.select().where(ENTRIES.c.outcome == "failure")).mappings().first()["seq"]
        conn.execute(ENTRIES.update().where(ENTRIES.c.seq == seq).values(recorded_at=old))
    assert _figure(client, "failed-logins") == "1"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_last_verification_shows_the_newest_run(browser_as, admin_app):
    client = browser_as("compliance")
    assert _figure(client, "last-verification") == "never"
    client.post("/admin/audit/verify")
    assert _figure(client, "last-verification") == "intact"
    with _state(admin_app).engine.begin() as conn:
        conn.execute(ENTRIES.update().where(ENTRIES.c.seq == 2).values(actor="someone-else"))
    client.post("/admin/audit/verify")
    assert _figure(client, "last-verification") == "1 problem(s)"
    assert "cole-compliance" in client.text(client.get("/admin/"))
