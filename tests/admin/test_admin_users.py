"""The users page of the admin UI: the directory listed, its operations, audited, bad input as messages."""

from __future__ import annotations

import html

import pytest

from fieldsync.auth.users import get_user, verify_password
from tests.admin.conftest import PASSWORD, ROLE_USERS, AdminClient

# on SQLite; the odd-input test on PostgreSQL too (it refuses a NUL that SQLite stores)
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

PAGE = "/admin/users/"
PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"
NEW_PASSWORD = "a brand new passphrase"


def _state(app):
    return app.extensions["fieldsync"]


def _admin_events(app, event: str) -> list:
    return [e for e in _state(app).audit.entries() if e.action == "admin" and e.detail.get("event") == event]


def _user(app, user_id):
    return get_user(_state(app).engine, user_id)


@sqlite_only
def test_admin_sees_the_directory(browser_as):
    client = browser_as("admin")
    page = client.get(PAGE)
    html = client.text(page)
    assert page.status_code == 200 and 'id="fs-users"' in html and 'id="fs-user-add"' in html
    for user in ROLE_USERS.values():
        assert f'data-user="{user}"' in html
    assert "password_hash" not in html and "scrypt" not in html


@sqlite_only
@pytest.mark.parametrize("role", ["analyst", "compliance"])
def test_other_roles_are_refused(browser_as, role):
    client = browser_as(role)
    assert client.get(PAGE).status_code == 403
    assert client.post(PAGE + "add", data={"user": "x", "role": "admin", "password": NEW_PASSWORD}).status_code == 403


@sqlite_only
def test_anonymous_is_sent_to_login(admin_app):
    response = AdminClient(admin_app).get(PAGE)
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


@sqlite_only
def test_add_a_user_with_attributes_audited(browser_as, admin_app):
    client = browser_as("admin")
    response = client.post(PAGE + "add", data={"user": "rep-new", "role": "field_rep", "password": NEW_PASSWORD,
                                               "attr_territory_ids": PUNE, "attr_region": "west"})
    assert response.status_code == 302
    user = _user(admin_app, "rep-new")
    assert user.role == "field_rep" and user.attributes == {"territory_ids": [PUNE], "region": "west"}
    assert verify_password(_state(admin_app).engine, "rep-new", NEW_PASSWORD) is not None
    [added] = [e for e in _admin_events(admin_app, "user_added") if e.detail["user"] == "rep-new"]
    assert added.actor == ROLE_USERS["admin"] and added.channel == "admin"
    assert NEW_PASSWORD not in repr(added)
    page = client.text(client.get(PAGE))
    assert "user rep-new added" in page and NEW_PASSWORD not in page


@sqlite_only
@pytest.mark.parametrize("form, message", [
    ({"user": "u1", "role": "field_rep", "password": "short"}, "a password has 10"),
    ({"user": "u2", "role": "wizard", "password": NEW_PASSWORD}, "unknown role 'wizard'"),
    ({"user": "u3", "role": "field_rep", "password": NEW_PASSWORD, "attr_territory_ids": "not-a-uuid"},
     "attribute 'territory_ids' must be a list of uuid"),
    ({"user": "ada-admin", "role": "admin", "password": NEW_PASSWORD}, "user ada-admin exists"),
    ({"user": " ", "role": "admin", "password": NEW_PASSWORD}, "a user id is 1 to"),
])
def test_bad_input_is_a_message_naming_the_problem(browser_as, admin_app, form, message):
    client = browser_as("admin")
    response = client.post(PAGE + "add", data=form)
    assert response.status_code == 302
    page = html.unescape(client.text(client.get(PAGE)))
    assert message in page
    assert not _admin_events(admin_app, "user_added")[4:]   # only the fixture's four users


@sqlite_only
def test_change_role_and_attributes_revokes_and_is_audited(browser_as, admin_app):
    client = browser_as("admin")
    edit = client.get(PAGE + "edit", query_string={"user": "rep-asha"})
    assert edit.status_code == 200 and 'id="fs-user-change"' in client.text(edit)
    admin_app.clock.now += 5
    response = client.post(PAGE + "change", data={"user": "rep-asha", "role": "supervisor", "attr_region": "north"})
    assert response.status_code == 302
    user = _user(admin_app, "rep-asha")
    assert user.role == "supervisor" and user.attributes == {"region": "north"}
    assert user.tokens_after == int(admin_app.clock.now)
    [changed] = _admin_events(admin_app, "user_changed")
    assert changed.actor == ROLE_USERS["admin"] and changed.channel == "admin"
    assert changed.detail["changed"] == ["attributes", "role"] and changed.detail["tokens_revoked"] is True


@sqlite_only
def test_reset_password_never_shows_it(browser_as, admin_app):
    client = browser_as("admin")
    response = client.post(PAGE + "password", data={"user": "ann-analyst", "password": NEW_PASSWORD})
    assert response.status_code == 302
    engine = _state(admin_app).engine
    assert verify_password(engine, "ann-analyst", NEW_PASSWORD) is not None
    assert verify_password(engine, "ann-analyst", PASSWORD) is None
    page = client.text(client.get(response.headers["Location"]))
    assert "password of ann-analyst was reset" in page and NEW_PASSWORD not in page
    [changed] = _admin_events(admin_app, "user_changed")
    assert changed.detail["changed"] == ["password"] and NEW_PASSWORD not in repr(changed)
    short = client.post(PAGE + "password", data={"user": "ann-analyst", "password": "short"})
    assert "a password has 10" in client.text(client.get(short.headers["Location"]))


@sqlite_only
def test_disable_logs_the_user_off_and_enable_restores(browser_as, admin_app):
    analyst = browser_as("analyst")
    admin_app.clock.now += 2
    client = browser_as("admin")
    client.post(PAGE + "enabled", data={"user": "ann-analyst", "enabled": "0"})
    assert _user(admin_app, "ann-analyst").enabled is False
    assert analyst.get("/admin/").status_code == 302          # their session ended
    assert AdminClient(admin_app).login("ann-analyst").status_code == 401
    client.post(PAGE + "enabled", data={"user": "ann-analyst", "enabled": "1"})
    assert _user(admin_app, "ann-analyst").enabled is True
    assert [e.actor for e in _admin_events(admin_app, "user_disabled")] == [ROLE_USERS["admin"]]
    assert [e.channel for e in _admin_events(admin_app, "user_enabled")] == ["admin"]


@sqlite_only
def test_an_admin_cannot_disable_or_demote_themselves(browser_as, admin_app):
    client = browser_as("admin")
    client.post(PAGE + "enabled", data={"user": "ada-admin", "enabled": "0"})
    assert "cannot disable your own account" in client.text(client.get(PAGE))
    client.post(PAGE + "change", data={"user": "ada-admin", "role": "analyst"})
    assert _user(admin_app, "ada-admin").enabled and _user(admin_app, "ada-admin").role == "admin"


@sqlite_only
def test_revoke_tokens_ends_sessions_and_is_audited(browser_as, admin_app):
    compliance = browser_as("compliance")
    assert compliance.get("/admin/audit/").status_code == 200
    admin_app.clock.now += 2
    client = browser_as("admin")
    response = client.post(PAGE + "revoke", data={"user": "cole-compliance"})
    assert response.status_code == 302
    assert compliance.get("/admin/audit/").status_code == 302   # logged off
    [revoked] = _admin_events(admin_app, "tokens_revoked")
    assert revoked.actor == ROLE_USERS["admin"] and revoked.detail["user"] == "cole-compliance"
    assert _user(admin_app, "cole-compliance").enabled     # nothing else changed


def test_unknown_user_is_a_message(browser_as):
    client = browser_as("admin")
    for path in ("revoke", "password", "enabled", "change"):
        odd = client.post(PAGE + path, data={"user": "no\x00body", "password": NEW_PASSWORD, "role": "admin"})
        assert odd.status_code == 302
    assert client.get(PAGE + "edit", query_string={"user": "x\x00"}).status_code == 302
    response = client.post(PAGE + "revoke", data={"user": "nobody"})
    assert response.status_code == 302 and "no user nobody" in client.text(client.get(PAGE))
    edit = client.get(PAGE + "edit", query_string={"user": "nobody"})
    assert edit.status_code == 302


@sqlite_only
def test_posts_without_csrf_are_refused(browser_as, admin_app):
    client = browser_as("admin")
    for path, data in (("add", {"user": "x1", "role": "admin", "password": NEW_PASSWORD}),
                       ("enabled", {"user": "ann-analyst", "enabled": "0"}), ("revoke", {"user": "ann-analyst"}),
                       ("password", {"user": "ann-analyst", "password": NEW_PASSWORD})):
        assert client.post(PAGE + path, data=data, csrf=False).status_code == 400
    assert _user(admin_app, "ann-analyst").enabled
    assert _admin_events(admin_app, "tokens_revoked") == []
