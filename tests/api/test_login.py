"""`POST /api/v1/auth/login`: the user directory's passwords (and one-time codes) for the tokens
every endpoint verifies; refusals are 401 `login-failed`, audited and rate-limited. On SQLite
and PostgreSQL, with the auth clock injected (no sleeps)."""

from __future__ import annotations

import logging

import pytest

from fieldsync.api import create_app
from fieldsync.auth import totp
from fieldsync.auth.tokens import verify_token
from fieldsync.auth.users import add_user, disable_user, set_user

SECRET = "login-tests-" + "k" * 24
PASSWORD = "correct horse battery"


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def login_app(db_url, example_model, tmp_path):
    clock = Clock()
    app = create_app({"DATABASE_URL": db_url, "SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path), "SYNC_LISTENERS": 0,
                      "AUTH_FAILURE_LIMIT": 3, "AUTH_FAILURE_WINDOW_SECONDS": 60},
                     model=example_model, auth_clock=clock)
    app.clock = clock
    state = app.extensions["fieldsync"]
    admin = {"Authorization": "Bearer " + _token_for(app, "admin-1", "admin")}
    client = app.test_client()
    north = client.post("/api/v1/territory", json={"code": "N-1", "name": "North", "region": "north"},
                        headers=admin).get_json()
    south = client.post("/api/v1/territory", json={"code": "S-1", "name": "South", "region": "south"},
                        headers=admin).get_json()
    for territory in (north, south):
        client.post("/api/v1/retailer", json={"name": "Shop " + territory["code"], "territory_id": territory["id"]},
                    headers=admin)
    app.territories = (north["id"], south["id"])
    add_user(state.engine, state.audit, state.model, "rep-asha", role="field_rep", password=PASSWORD,
             attributes={"territory_ids": [north["id"]]}, actor="test", now=clock())
    yield app
    state.sync.close()
    state.engine.dispose()


def _token_for(app, user, role, **attributes):
    from fieldsync.auth import issue_token
    return issue_token(SECRET, user, role, attributes, now=app.clock())


def _login(app, user="rep-asha", password=PASSWORD, code=None, address="10.0.0.7"):
    body = {"user": user, "password": password}
    if code is not None:
        body["totp"] = code
    return app.test_client().post("/api/v1/auth/login", json=body, environ_base={"REMOTE_ADDR": address})


def _get(app, path, token):
    return app.test_client().get("/api/v1" + path, headers={"Authorization": f"Bearer {token}"})


def _events(app, event):
    return [e for e in app.extensions["fieldsync"].audit.entries() if e.detail.get("event") == event]


def test_a_login_issues_a_token_with_the_directorys_role_and_attributes(login_app):
    r = _login(login_app)
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    body = r.get_json()
    assert (body["user"], body["role"], body["token_type"]) == ("rep-asha", "field_rep", "Bearer")
    assert body["attributes"] == {"territory_ids": [login_app.territories[0]]}
    assert body["expires_in"] == 12 * 3600 and body["idle_timeout"] == 900
    principal = verify_token(SECRET, body["token"], now=login_app.clock())
    assert principal.token_id == body["token_id"] and principal.attributes == body["attributes"]
    retailers = _get(login_app, "/retailer", body["token"])
    assert retailers.status_code == 200
    assert [x["territory_id"] for x in retailers.get_json()["items"]] == [login_app.territories[0]]   # row filter
    [entry] = _events(login_app, "login")
    assert (entry.actor, entry.outcome, entry.detail["token_id"]) == ("rep-asha", "success", body["token_id"])


def test_a_wrong_password_is_a_401_audited_without_the_password(login_app, caplog):
    caplog.set_level(logging.DEBUG)
    r = _login(login_app, password="not the password")
    assert r.status_code == 401
    problem = r.get_json()
    assert problem["type"].endswith("/login-failed") and problem["reason"] == "invalid_credentials"
    unknown = _login(login_app, user="nobody")
    assert unknown.status_code == 401 and unknown.get_json()["reason"] == "invalid_credentials"
    wrong, nobody = _events(login_app, "login_failed")
    assert (wrong.actor, wrong.outcome, wrong.detail["known_user"]) == ("rep-asha", "failure", True)
    assert (nobody.actor, nobody.detail["known_user"]) == (None, False)
    assert wrong.detail["source_ip"] == "10.0.0.7"
    assert "not the password" not in str(wrong) and PASSWORD not in str(wrong)
    assert "not the password" not in caplog.text and PASSWORD not in caplog.text


def test_failed_logins_are_rate_limited(login_app):
    for _ in range(3):
        assert _login(login_app, password="not the password").status_code == 401
    r = _login(login_app)                         # the right password, too, while blocked
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert r.get_json()["type"].endswith("/too-many-requests")
    assert len(_events(login_app, "rate_limited")) == 1
    # the user id is a key of its own: another address is blocked for this user too
    assert _login(login_app, address="10.9.9.9").status_code == 429
    login_app.clock.now += 61
    assert _login(login_app).status_code == 200


def test_a_malformed_login_is_a_400(login_app):
    client = login_app.test_client()
    assert client.post("/api/v1/auth/login", json={"user": "rep-asha"}).status_code == 400
    assert client.post("/api/v1/auth/login", json=["rep-asha", PASSWORD]).status_code == 400
    assert client.post("/api/v1/auth/login", data="{", content_type="application/json").status_code == 400
    assert client.post("/api/v1/auth/login", data="user=x", content_type="text/plain").status_code == 415
    # text no database takes (a lone surrogate, NUL) is a 400 naming the member, never a 500
    for body, member in (('{"user": "\\ud800", "password": "x"}', "user"),
                         ('{"user": "rep-asha", "password": "a\\u0000b"}', "password"),
                         ('{"user": "rep-asha", "password": "x", "totp": "\\udc00"}', "totp")):
        r = client.post("/api/v1/auth/login", data=body, content_type="application/json")
        assert r.status_code == 400 and [e["field"] for e in r.get_json()["errors"]] == [member], r.get_json()


def test_a_disabled_user_is_refused_and_their_earlier_token_too(login_app):
    token = _login(login_app).get_json()["token"]
    assert _get(login_app, "/retailer", token).status_code == 200
    state = login_app.extensions["fieldsync"]
    disable_user(state.engine, state.audit, "rep-asha", actor="test", now=login_app.clock())
    r = _login(login_app)
    assert r.status_code == 401 and r.get_json()["reason"] == "disabled"
    refused = _get(login_app, "/retailer", token)
    assert refused.status_code == 401 and refused.get_json()["reason"] == "revoked"


def test_an_admin_with_a_second_factor_needs_a_valid_code(login_app):
    state = login_app.extensions["fieldsync"]
    secret = add_user(state.engine, state.audit, state.model, "admin-meera", role="admin", password=PASSWORD,
                      totp=True, actor="test", keyring=state.crypto.keyring)
    r = _login(login_app, user="admin-meera")
    assert r.status_code == 401 and r.get_json()["reason"] == "totp_required"
    code = totp.totp(secret, login_app.clock())
    bad = "000000" if code != "000000" else "111111"
    r = _login(login_app, user="admin-meera", code=bad)
    assert r.status_code == 401 and r.get_json()["reason"] == "totp_invalid"
    r = _login(login_app, user="admin-meera", code=code)
    assert r.status_code == 200 and r.get_json()["role"] == "admin"
    assert _get(login_app, "/territory", r.get_json()["token"]).status_code == 200


def test_changed_attributes_revoke_old_tokens_and_a_new_login_carries_the_new_scope(login_app):
    north, south = login_app.territories
    old = _login(login_app).get_json()["token"]
    assert _get(login_app, "/retailer", old).status_code == 200
    state = login_app.extensions["fieldsync"]
    set_user(state.engine, state.audit, state.model, "rep-asha", attributes={"territory_ids": [south]},
             actor="test", now=login_app.clock())
    r = _get(login_app, "/retailer", old)
    assert r.status_code == 401 and r.get_json()["reason"] == "revoked"
    new = _login(login_app).get_json()
    assert new["attributes"] == {"territory_ids": [south]}
    retailers = _get(login_app, "/retailer", new["token"]).get_json()["items"]
    assert [x["territory_id"] for x in retailers] == [south]


def _sync(app, path, token, body):
    return app.test_client().post("/api/v1/sync" + path, json=body, environ_base={"REMOTE_ADDR": "10.0.0.7"},
                                  headers={"Authorization": f"Bearer {token}", "Fieldsync-Protocol": "1"})


def _pull(app, device_token, device_id, cursor=0, scope_hash=None):
    r = _sync(app, "/pull", device_token, {"device_id": device_id, "schema_version": 1, "cursor": cursor,
                                           "scope_hash": scope_hash, "limit": 1000})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_a_device_rescopes_after_its_user_logs_in_again_with_new_attributes(login_app):
    north, south = login_app.territories
    user_token = _login(login_app).get_json()["token"]
    device = _sync(login_app, "/devices", user_token, {"install_id": "tablet-1", "schema_version": 1}).get_json()
    page = _pull(login_app, device["device_token"], device["device_id"])
    assert page["resume"] is None
    assert {c["row"]["territory_id"] for c in page["changes"]
            if c.get("entity") == "retailer" and c["kind"] == "upsert"} == {north}
    state = login_app.extensions["fieldsync"]
    login_app.clock.now += 1
    set_user(state.engine, state.audit, state.model, "rep-asha", attributes={"territory_ids": [south]},
             actor="test", now=login_app.clock())
    stale = _sync(login_app, "/pull", device["device_token"], {"device_id": device["device_id"], "schema_version": 1,
                                                               "cursor": page["cursor"]})
    assert stale.status_code == 401 and stale.get_json()["reason"] == "revoked"
    # the app signs in again and registers again (idempotent): the same device, a new device token
    again = _sync(login_app, "/devices", _login(login_app).get_json()["token"],
                  {"install_id": "tablet-1", "schema_version": 1}).get_json()
    assert again["device_id"] == device["device_id"]
    pages = _pull(login_app, again["device_token"], device["device_id"], page["cursor"], page["scope_hash"])
    assert pages["phase"] == "rescope" and pages["scope_hash"] != page["scope_hash"]
    retailers = [c for c in pages["changes"] if c.get("entity") == "retailer"]
    assert {c["row"]["territory_id"] for c in retailers if c["kind"] == "upsert"} == {south}
