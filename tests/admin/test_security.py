"""The admin UI's login, session and page protections (docs/admin.md, "Security")."""

from __future__ import annotations

import re

import pytest

from tests.admin.conftest import ROLE_USERS, AdminClient

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def test_login_page_and_redirect_for_anonymous(admin_app):
    client = AdminClient(admin_app)
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    page = client.get("/admin/login")
    assert page.status_code == 200 and 'name="password"' in client.text(page)


@pytest.mark.parametrize("role", ["admin", "analyst", "compliance"])
def test_admin_roles_log_in_and_see_the_dashboard(browser_as, role):
    client = browser_as(role)
    page = client.get("/admin/")
    assert page.status_code == 200, client.text(page)
    assert ROLE_USERS[role] in client.text(page)


def test_field_rep_is_refused(admin_app):
    client = AdminClient(admin_app)
    response = client.login(ROLE_USERS["field_rep"])
    assert response.status_code == 401
    assert "no admin views" in client.text(response)
    assert client.get("/admin/").status_code == 302


def test_wrong_password_is_refused(admin_app):
    client = AdminClient(admin_app)
    response = client.login(ROLE_USERS["admin"], password="wrong password!")
    assert response.status_code == 401
    assert client.get("/admin/").status_code == 302


def test_post_without_csrf_is_refused(browser_as):
    client = browser_as("admin")
    response = client.post("/admin/logout", csrf=False)
    assert response.status_code == 400
    assert "CSRF" in client.text(response)
    assert client.get("/admin/").status_code == 200   # still logged in: the forged logout did nothing


def test_post_with_another_sessions_csrf_is_refused(admin_app, browser_as):
    ada = browser_as("admin")
    ann = browser_as("analyst")
    response = ann.post("/admin/logout", {"csrf_token": ada.csrf()})
    assert response.status_code == 400


def test_login_form_needs_csrf(admin_app):
    client = AdminClient(admin_app)
    client.get("/admin/login")
    response = client.post("/admin/login", {"user": ROLE_USERS["admin"], "password": "correct horse battery"},
                           csrf=False)
    assert response.status_code == 400


def test_idle_timeout_logs_off(admin_app, browser_as):
    client = browser_as("admin")
    admin_app.clock.now += 14 * 60
    assert client.get("/admin/").status_code == 200      # activity within 15 minutes keeps the session
    admin_app.clock.now += 15 * 60 + 1
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    page = client.get(response.headers["Location"])
    assert "without activity" in client.text(page)
    assert client.session().get("user") is None


def test_disabling_a_user_ends_their_session(admin_app, browser_as):
    from fieldsync.auth.users import disable_user
    client = browser_as("analyst")
    state = admin_app.extensions["fieldsync"]
    admin_app.clock.now += 1
    disable_user(state.engine, state.audit, ROLE_USERS["analyst"], actor="test", now=admin_app.clock())
    assert client.get("/admin/").status_code == 302


def test_session_cookie_flags(admin_app):
    client = AdminClient(admin_app)
    client.get("/admin/login")
    response = client.post("/admin/login", {"user": ROLE_USERS["admin"], "password": "correct horse battery"})
    cookie = next(h for h in response.headers.getlist("Set-Cookie") if h.startswith("fieldsync_admin="))
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in cookie.split(";")[1:]}
    assert "secure" in flags and "httponly" in flags
    assert flags["samesite"].lower() == "samesite=strict"
    assert flags["path"] == "Path=/admin"


def test_security_headers(browser_as):
    client = browser_as("admin")
    response = client.get("/admin/")
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in \
        csp.split("script-src")[1].split(";")[0]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    html = client.text(response)
    scripts = [tag for tag in html.split("<script")[1:]]
    assert scripts and all(f'nonce="{nonce}"' in tag.split(">")[0] for tag in scripts)
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == "no-store"
    assert "https://" not in html and "http://" not in html.replace("http://localhost", "")


def test_login_never_redirects_off_site(admin_app):
    client = AdminClient(admin_app)
    client.get("/admin/login")
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        response = client.post("/admin/login", {"user": ROLE_USERS["admin"], "password": "correct horse battery",
                                                "next": target})
        assert response.status_code == 302
        assert response.headers["Location"].startswith("/admin"), target
        client.post("/admin/logout")
        client.get("/admin/login")


def test_failed_logins_are_audited_and_rate_limited(admin_app):
    state = admin_app.extensions["fieldsync"]
    client = AdminClient(admin_app)
    limit = int(state.config["AUTH_FAILURE_LIMIT"])
    for _ in range(limit):
        assert client.login(ROLE_USERS["admin"], password="wrong password!").status_code == 401
    blocked = client.login(ROLE_USERS["admin"])   # the right password, after the limit
    assert blocked.status_code == 429
    failures = [e for e in state.audit.entries() if e.action == "auth" and e.outcome == "failure"
                and e.channel == "admin"]
    assert len(failures) == limit
    assert all(e.detail["event"] == "login_failed" and e.actor == ROLE_USERS["admin"] for e in failures)
    assert "wrong password" not in repr(failures)


def test_login_and_logout_are_audited(admin_app, browser_as):
    client = browser_as("compliance")
    client.post("/admin/logout")
    state = admin_app.extensions["fieldsync"]
    events = [e.detail["event"] for e in state.audit.entries(actor=ROLE_USERS["compliance"])
              if e.channel == "admin" and e.action == "auth"]
    assert events == ["admin_login", "admin_logout"]


def test_odd_input_never_errors(admin_app):
    client = AdminClient(admin_app)
    client.get("/admin/login")
    for user, password in (("\x00", "x"), ("a" * 100_000, "b"), ("admin", "\U0001F600" * 500)):
        response = client.post("/admin/login", {"user": user, "password": password})
        assert response.status_code < 500, (user[:10], response.status_code)
    # bytes no browser should send: an encoded lone surrogate, invalid UTF-8, a NUL
    body = f"csrf_token={client.csrf()}&user=%ED%A0%80%FF%00&password=%C3%28".encode()
    response = client.client.post("/admin/login", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code in (400, 401)
    assert client.get("/admin/does-not-exist").status_code in (302, 404)
    assert client.client.head("/admin/login").status_code < 500


def test_head_on_the_login_page_is_not_a_login_attempt(admin_app):
    state = admin_app.extensions["fieldsync"]
    client = AdminClient(admin_app)
    for _ in range(int(state.config["AUTH_FAILURE_LIMIT"]) + 1):
        assert client.client.head("/admin/login").status_code == 200
    assert not [e for e in state.audit.entries() if e.action == "auth" and e.outcome != "success"]
    assert client.login(ROLE_USERS["admin"]).status_code == 302     # not rate-limited by the HEADs


def test_head_on_every_admin_route_writes_nothing(admin_app, browser_as):
    """Flask answers HEAD with a route's GET view, and a route that only takes POST answers
    405: either way a HEAD never changes the model, the directory, a key or the queue."""
    import sqlalchemy as sa
    client = browser_as("admin")
    admin, _ = admin_app.extensions["fieldsync_admin"].admin_app()
    state = admin_app.extensions["fieldsync"]

    def counts():
        with state.engine.connect() as conn:
            return {table: conn.execute(sa.text(f"select count(*) from {table}")).scalar()
                    for table in ("fs_schema", "fs_users", "fs_changes")}

    before = counts()
    entries_before = [e for e in state.audit.entries() if e.action not in ("read", "auth")]
    statuses = {}
    for rule in admin.url_map.iter_rules():
        if rule.endpoint in ("static", "admin.static", "logout"):
            continue
        path = "/admin" + re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: {"entity_name": "retailer"}.get(m.group(1), "x"),
                                 rule.rule)
        statuses[path] = client.client.head(path).status_code
    assert statuses and all(code < 500 for code in statuses.values()), statuses
    assert counts() == before
    assert [e for e in state.audit.entries() if e.action not in ("read", "auth")] == entries_before
    assert client.get("/admin/").status_code == 200     # still logged in
