"""Helpers of the audit tests (imported by conftest.py and the tests: `from audit_support import ...`)."""

from __future__ import annotations

import datetime as dt
import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fieldsync.audit.trail import AuditEvent, AuditLog
from fieldsync.store.engine import make_engine

SECRET = "audit-tests-" + "k" * 24


class Clock:
    """A settable UTC clock; every call returns a time one millisecond after the last."""

    def __init__(self, start: dt.datetime | None = None):
        self.now = start or dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(milliseconds=1)
        return self.now

    def advance(self, **delta) -> None:
        self.now += dt.timedelta(**delta)


_ACTORS = itertools.cycle(["rep-1", "rep-2", "nurse-7", None])


def sample_event(i: int) -> AuditEvent:
    """A varied, PHI-free event (the i-th of a test's log)."""
    action = ("read", "create", "update", "delete", "auth", "export")[i % 6]
    return AuditEvent(action=action, actor=next(_ACTORS), role="field_rep", device=f"dev-{i % 3}",
                      channel=("rest", "pull", "push")[i % 3], entity="prescription",
                      record_ids=(str(uuid.UUID(int=i + 1)),), fields=("diagnosis",),
                      subjects=(f"sr_{i:032x}",), purpose="treatment", detail={"n": i})


def fill(log: AuditLog, n: int) -> list[int]:
    return [log.record(sample_event(i)) for i in range(n)]


def raw(log: AuditLog, sql: str, **params: Any) -> int:
    with log.engine.begin() as conn:
        return conn.execute(sa.text(sql), params).rowcount


class PhiApp:
    """The fieldsync app over the example definitions, with a territory, retailer and product."""

    def __init__(self, app):
        from fieldsync.auth import issue_token
        self.app = app
        self.state = app.extensions["fieldsync"]
        self.audit: AuditLog = self.state.audit
        self.client = app.test_client()
        self._issue = issue_token
        admin = self.token("admin-1", "admin")
        self.territory = self.ok("POST", "/territory", admin, {"code": "N-1", "name": "North", "region": "north"})
        self.retailer = self.ok("POST", "/retailer", admin, {"name": "Clinic", "territory_id": self.territory["id"]})
        self.product = self.ok("POST", "/product", admin, {"sku": "PILL", "name": "Pill", "category": "pharma",
                                                           "unit_price": "2.50"})

    def token(self, user: str, role: str, **attributes: Any) -> str:
        return self._issue(SECRET, user, role, attributes, ttl=3600, now=time.time())

    def rep_token(self, user: str) -> str:
        """A field rep working in the app's territory (its records may name only what it reads)."""
        return self.token(user, "field_rep", territory_ids=[self.territory["id"]])

    def request(self, method: str, path: str, token: str, body: Any = None, headers: dict | None = None):
        all_headers = {"Authorization": f"Bearer {token}", **(headers or {})}
        return self.client.open("/api/v1" + path, method=method, json=body, headers=all_headers)

    def ok(self, method: str, path: str, token: str, body: Any = None) -> Any:
        r = self.request(method, path, token, body)
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

    def entries(self, **filters: Any):
        return list(self.audit.entries(**filters))

    def sync_headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Fieldsync-Protocol": "1"}

    def sync(self, path: str, token: str, body: Any):
        return self.client.post("/api/v1/sync" + path, json=body, headers=self.sync_headers(token))

    def register(self, token: str, install: str = "install-1") -> str:
        r = self.sync("/devices", token, {"install_id": install, "schema_version": self.state.model.schema_version})
        assert r.status_code in (200, 201), r.get_json()
        return r.get_json()["device_id"]

    def close(self) -> None:
        self.state.sync.close()
        self.state.engine.dispose()


class inserts_refused:
    """A context in which the database refuses new audit entries (a trigger raising on INSERT),
    while reading the trail still works: an audit store that is full or read-only."""

    def __init__(self, log: AuditLog):
        self.log = log

    def __enter__(self) -> "inserts_refused":
        if self.log.engine.dialect.name == "sqlite":
            raw(self.log, "CREATE TRIGGER fs_audit_refuse BEFORE INSERT ON fs_audit_entries "
                          "BEGIN SELECT RAISE(ABORT, 'the audit store refuses writes'); END")
        else:
            raw(self.log, "CREATE FUNCTION fs_audit_refuse() RETURNS trigger AS $$ BEGIN "
                          "RAISE EXCEPTION 'the audit store refuses writes'; END $$ LANGUAGE plpgsql")
            raw(self.log, "CREATE TRIGGER fs_audit_refuse BEFORE INSERT ON fs_audit_entries "
                          "FOR EACH ROW EXECUTE FUNCTION fs_audit_refuse()")
        return self

    def __exit__(self, *exc) -> None:
        if self.log.engine.dialect.name == "sqlite":
            raw(self.log, "DROP TRIGGER fs_audit_refuse")
        else:
            raw(self.log, "DROP TRIGGER fs_audit_refuse ON fs_audit_entries")
            raw(self.log, "DROP FUNCTION fs_audit_refuse()")


# -- servers started and stopped over one database (the wipe and anchor tests) -----------------

AUDIT_TABLES = ("fs_audit_entries", "fs_audit_checkpoints", "fs_audit_head")


class Server:
    """A started app (no reference data written: it may be a restart)."""

    def __init__(self, app):
        self.app = app
        self.state = app.extensions["fieldsync"]
        self.audit: AuditLog = self.state.audit

    def close(self) -> None:
        self.state.sync.close()
        self.state.engine.dispose()


def start(db_url: str, data_dir: Path, model, **config) -> Server:
    from fieldsync.api import create_app
    app = create_app({"DATABASE_URL": db_url, "SECRET_KEY": SECRET, "DATA_DIR": str(data_dir),
                      "SYNC_LISTENERS": 0, **config}, model=model)
    return Server(app)


def run_server_once(db_url: str, data_dir: Path, model, **config) -> str:
    """Start a server, let it write audit entries (PHI writes and reads), stop it; its log id."""
    server = start(db_url, data_dir, model, **config)
    phi = PhiApp(server.app) if not server.audit.verify().entries else server
    try:
        if isinstance(phi, PhiApp):
            rep = phi.rep_token("rep-1")
            created = phi.ok("POST", "/prescription", rep, phi.prescription())
            phi.ok("GET", f"/prescription/{created['id']}", rep)
            assert len(phi.entries()) >= 3
        with phi.state.engine.connect() as conn:
            return conn.execute(sa.text("SELECT log_id FROM fs_audit_head")).scalar_one()
    finally:
        phi.close()


def sql(db_url: str, *statements: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        engine.dispose()


def drop_trail(db_url: str, *, keys_too: bool) -> None:
    tables = AUDIT_TABLES + (("fs_audit_keys",) if keys_too else ())
    sql(db_url, *[f"DROP TABLE {t}" for t in tables])
