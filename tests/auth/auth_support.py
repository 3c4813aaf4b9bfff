"""Helpers of the authentication tests (`from auth_support import ...`)."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa

from fieldsync.auth import issue_token
from fieldsync.audit.trail import AuditLog

SECRET = "auth-tests-" + "k" * 24
START = 1_800_000_000.0      # the auth clock's first reading (seconds since the epoch)


class SecondsClock:
    """The auth clock: seconds since the epoch, moved only by `advance`."""

    def __init__(self, start: float = START):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class AuthApp:
    """The fieldsync app over the example definitions with an injected auth clock, reference
    data for prescriptions, and helpers for REST and sync calls."""

    def __init__(self, app, clock: SecondsClock):
        self.app = app
        self.clock = clock
        self.state = app.extensions["fieldsync"]
        self.audit: AuditLog = self.state.audit
        self.client = app.test_client()
        admin = self.token("admin-1", "admin")
        self.territory = self.ok("POST", "/territory", admin, {"code": "N-1", "name": "North", "region": "north"})
        self.retailer = self.ok("POST", "/retailer", admin, {"name": "Clinic", "territory_id": self.territory["id"]})
        self.product = self.ok("POST", "/product", admin, {"sku": "PILL", "name": "Pill", "category": "pharma",
                                                           "unit_price": "2.50"})

    # -- tokens ----------------------------------------------------------------------------------
    def token(self, user: str, role: str, *, ttl: int = 12 * 3600, **attributes: Any) -> str:
        """A user token issued now by the auth clock."""
        return issue_token(SECRET, user, role, attributes, ttl=ttl, now=self.clock())

    def rep_token(self, user: str = "rep-asha") -> str:
        return self.token(user, "field_rep", territory_ids=[self.territory["id"]])

    # -- REST ------------------------------------------------------------------------------------
    def request(self, method: str, path: str, token: str | None, body: Any = None, *,
                headers: dict | None = None, address: str = "127.0.0.1"):
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        return self.client.open("/api/v1" + path, method=method, json=body, headers=all_headers,
                                environ_base={"REMOTE_ADDR": address})

    def ok(self, method: str, path: str, token: str, body: Any = None, **kw) -> Any:
        r = self.request(method, path, token, body, **kw)
        assert r.status_code in (200, 201), (r.status_code, r.get_json())
        return r.get_json()

    def prescription(self, **overrides: Any) -> dict[str, Any]:
        values = {"retailer_id": self.retailer["id"], "territory_id": self.territory["id"],
                  "patient_id": str(uuid.uuid4()), "patient_name": "Jane Q. Marple",
                  "patient_dob": "1951-04-17", "diagnosis": "Chronic zebrafish allergy",
                  "product_id": self.product["id"], "dosage": "2 per day",
                  "prescribed_at": "2024-03-01T09:00:00Z"}
        values.update(overrides)
        return values

    # -- sync ------------------------------------------------------------------------------------
    def sync(self, method: str, path: str, token: str | None, body: Any = None, *, address: str = "127.0.0.1"):
        headers = {"Fieldsync-Protocol": "1"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.open("/api/v1/sync" + path, method=method, json=body, headers=headers,
                                environ_base={"REMOTE_ADDR": address})

    def register(self, token: str, install: str = "install-1") -> dict[str, Any]:
        r = self.sync("POST", "/devices", token, {"install_id": install,
                                                  "schema_version": self.state.model.schema_version})
        assert r.status_code in (200, 201), r.get_json()
        return r.get_json()

    def push(self, token: str, device_id: str, seq: int = 1):
        mutation = {"seq": seq, "entity": "expense", "op": "insert", "id": str(uuid.uuid4()), "base_version": None,
                    "client_time": "2026-11-20T09:00:00Z",
                    "fields": {"spent_on": "2026-11-20", "category": "travel", "amount": "12.00"}}
        return self.sync("POST", "/push", token, {"device_id": device_id, "schema_version": 1,
                                                  "mutations": [mutation]})

    def pull(self, token: str, device_id: str):
        return self.sync("POST", "/pull", token, {"device_id": device_id, "schema_version": 1, "cursor": 0})

    # -- the audit log and the database ----------------------------------------------------------
    def entries(self, **filters: Any):
        return list(self.audit.entries(**filters))

    def auth_entries(self, event: str | None = None):
        return [e for e in self.entries() if e.action in ("auth", "admin") and
                (event is None or e.detail.get("event") == event)]

    def session_row(self, token_id: str):
        from fieldsync.auth.sessions import SESSIONS
        with self.state.engine.connect() as conn:
            return conn.execute(sa.select(SESSIONS).where(SESSIONS.c.token_id == token_id)).mappings().first()

    def close(self) -> None:
        self.state.sync.close()
        self.state.engine.dispose()


def token_id(token: str) -> str:
    from fieldsync.auth.tokens import unverified_claims
    return unverified_claims(token)["jti"]
