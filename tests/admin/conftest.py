"""Fixtures for the admin UI's view tests: the fieldsync app (admin mounted at /admin) on SQLite
and PostgreSQL, one directory user per role, an injected auth clock (idle timeouts without
sleeping), and a client that logs in through the login form and sends the CSRF token."""

from __future__ import annotations

import re

import pytest

from fieldsync.api import create_app

SECRET = "admin-ui-tests-" + "s" * 24
PASSWORD = "correct horse battery"
ROLE_USERS = {"admin": "ada-admin", "analyst": "ann-analyst", "compliance": "cole-compliance",
              "field_rep": "rep-asha"}


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


class AdminClient:
    """A browser-like client of the admin UI: a cookie jar, the session's CSRF token, HTTPS."""

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()
        self.client.environ_base["wsgi.url_scheme"] = "https"

    def login(self, user: str, password: str = PASSWORD, totp: str | None = None):
        self.get("/admin/login")
        data = {"user": user, "password": password, "csrf_token": self.csrf()}
        if totp:
            data["totp"] = totp
        return self.client.post("/admin/login", data=data)

    def session(self) -> dict:
        """The admin session cookie's contents, read with the admin app's own serializer."""
        cookie = self.client.get_cookie("fieldsync_admin", path="/admin")
        if cookie is None:
            return {}
        admin, _ = self.app.extensions["fieldsync_admin"].admin_app()
        return admin.session_interface.get_signing_serializer(admin).loads(cookie.value)

    def csrf(self) -> str:
        return self.session().get("csrf", "")

    def get(self, path, **kw):
        return self.client.get(path, **kw)

    def post(self, path, data=None, *, csrf: bool = True, **kw):
        data = dict(data or {})
        if csrf:
            data.setdefault("csrf_token", self.csrf())
        return self.client.post(path, data=data, **kw)

    @staticmethod
    def text(response) -> str:
        return response.get_data(as_text=True)


def csrf_from(html: str) -> str | None:
    found = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', html)
    return found.group(1) if found else None


@pytest.fixture(autouse=True)
def _light_scrypt(monkeypatch):
    """The view tests log in hundreds of times: scrypt at N=2**10 (same code path and format,
    a 32nd of the memory and time) keeps them fast. The production cost (werkzeug's default,
    N=2**15) is what tests/auth checks; the e2e tests' server uses it too."""
    from fieldsync.auth import users
    monkeypatch.setattr(users, "HASH_METHOD", "scrypt:1024:8:1")


@pytest.fixture
def admin_app(db_url, example_model, tmp_path):
    """The fieldsync app with the admin UI, a user per role (ROLE_USERS, password PASSWORD)."""
    from fieldsync.auth.users import add_user
    clock = Clock()
    app = create_app({"DATABASE_URL": db_url, "SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path), "SYNC_LISTENERS": 0,
                      "DEFS_DIR": str(tmp_path / "defs")},
                     model=example_model, auth_clock=clock)
    app.clock = clock
    state = app.extensions["fieldsync"]
    for role, user in ROLE_USERS.items():
        attributes = {"territory_ids": []} if role == "field_rep" else {}
        add_user(state.engine, state.audit, state.model, user, role=role, password=PASSWORD,
                 attributes=attributes, actor="test", now=clock())
    yield app
    state.sync.close()
    state.engine.dispose()


@pytest.fixture
def browser_as(admin_app):
    """`browser_as(role)`: an AdminClient logged in as that role's user."""
    def make(role: str) -> AdminClient:
        client = AdminClient(admin_app)
        response = client.login(ROLE_USERS[role])
        assert response.status_code == 302, client.text(response)
        return client
    return make
