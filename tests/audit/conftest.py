"""Fixtures for the audit trail: logs on SQLite and PostgreSQL with a real local key provider and
a real Ed25519 key file, an injected clock, and an app over the example definitions with
reference data and tokens. Helpers (`Clock`, `sample_event`, `fill`, `raw`, `PhiApp`) live in
audit_support.py.

* `clock` — a `Clock` (call it for the time; `advance(days=...)` moves it).
* `make_log(url=None, **kw)` — an `AuditLog` on `url` (default: the test's `db_url`), prepared,
  with keys in the test's own directory; engines are disposed after the test.
* `audit_log` — `make_log()`.
* `phi_app` — a `PhiApp`: the fieldsync app on `db_url` (SYNC_LISTENERS=0) with reference data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit_support import SECRET, Clock, PhiApp
from fieldsync.audit.trail import AuditLog
from fieldsync.crypto.keys import LocalKeyProvider
from fieldsync.store.engine import make_engine


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_log(db_url, tmp_path, clock):
    engines: list[sa.Engine] = []

    def make(url: str | None = None, *, keys_dir: Path | None = None, **kwargs: Any) -> AuditLog:
        engine = make_engine(url or db_url)
        engines.append(engine)
        keys = keys_dir or tmp_path / "keys"
        kwargs.setdefault("clock", clock)
        log = AuditLog(engine, LocalKeyProvider(keys), keys / "audit-signing.key", **kwargs)
        log.prepare()
        return log

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def audit_log(make_log) -> AuditLog:
    return make_log()


@pytest.fixture
def phi_app(db_url, tmp_path, example_model):
    from fieldsync.api import create_app
    app = create_app({"DATABASE_URL": db_url, "SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path / "data"),
                      "SYNC_LISTENERS": 0}, model=example_model)
    phi = PhiApp(app)
    yield phi
    phi.close()
