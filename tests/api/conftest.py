"""Fixtures for the REST API: an app over the example definitions on SQLite and PostgreSQL,
and a client that signs requests as a given role."""

from __future__ import annotations

import time

import pytest

from fieldsync.api import create_app
from fieldsync.auth import issue_token

SECRET = "test-secret-key"


class Api:
    """A Flask test client that sends a bearer token for one user."""

    def __init__(self, app, user="admin-1", role="admin", **attributes):
        self.app = app
        self.client = app.test_client()
        self.token = issue_token(SECRET, user, role, attributes, ttl=3600, now=time.time())

    def as_user(self, user, role, **attributes) -> "Api":
        return Api(self.app, user, role, **attributes)

    def request(self, method, path, *, json=None, headers=None, **kwargs):
        all_headers = {"Authorization": f"Bearer {self.token}"}
        all_headers.update(headers or {})
        return self.client.open("/api/v1" + path, method=method, json=json, headers=all_headers, **kwargs)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, json=None, **kw):
        return self.request("POST", path, json=json, **kw)

    def patch(self, path, json=None, **kw):
        return self.request("PATCH", path, json=json, **kw)

    def put(self, path, json=None, **kw):
        return self.request("PUT", path, json=json, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def ok(self, method, path, json=None, status=None, **kw):
        """Like request, asserting a 2xx (or `status`) and returning the JSON body."""
        r = self.request(method, path, json=json, **kw)
        expected = status or (201 if method == "POST" else 200)
        assert r.status_code == expected, (r.status_code, r.get_json())
        return r.get_json()


@pytest.fixture
def app(db_url, example_model, tmp_path):
    app = create_app({"DATABASE_URL": db_url, "SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path),
                      "MAX_BODY_BYTES": 64 * 1024, "PAGE_SIZE_MAX": 100}, model=example_model)
    yield app
    app.extensions["fieldsync"].engine.dispose()


@pytest.fixture
def api(app) -> Api:
    return Api(app)


@pytest.fixture
def api_for():
    """`api_for(app, user="admin-1", role="admin", **attributes)`: an Api on another app (a test
    that builds its own app with other settings)."""
    return Api


@pytest.fixture
def world(api):
    """Reference data: two territories, a retailer in each, two products."""
    north = api.ok("POST", "/territory", {"code": "N-1", "name": "North", "region": "north"})
    south = api.ok("POST", "/territory", {"code": "S-1", "name": "South", "region": "south"})
    r_north = api.ok("POST", "/retailer", {"name": "Shop N", "territory_id": north["id"]})
    r_south = api.ok("POST", "/retailer", {"name": "Shop S", "territory_id": south["id"]})
    pill = api.ok("POST", "/product", {"sku": "PILL", "name": "Pill", "category": "pharma", "unit_price": "2.50"})
    old = api.ok("POST", "/product", {"sku": "OLD", "name": "Old", "category": "otc", "unit_price": "1.00",
                                      "active": False})
    return {"north": north, "south": south, "r_north": r_north, "r_south": r_south, "pill": pill, "old": old}
