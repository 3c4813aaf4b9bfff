"""How an outage is told from a bug (fieldsync.store.engine.database_unavailable) and answered:
a database or key provider outage is a 503 `unavailable` problem with Retry-After, recorded in
the dependency registry; a wrong statement stays a 500 with nothing of the driver's text."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa

from fieldsync.api import create_app
from fieldsync.errors import KeyProviderUnreachable, KeyUnavailable
from fieldsync.store.engine import database_unavailable, make_engine
from fieldsync.workers.pool import is_outage

from restart_support import SECRET, UNAVAILABLE


def _sqlite_error(text: str) -> sa.exc.OperationalError:
    return sa.exc.OperationalError("SELECT secret FROM t WHERE name = ?", ("Asha Rao",), sqlite3.OperationalError(text))


def test_what_counts_as_a_database_outage():
    assert database_unavailable(_sqlite_error("database is locked"))
    assert not database_unavailable(_sqlite_error("no such table: visit"))   # a model change, not an outage
    assert database_unavailable(sa.exc.TimeoutError("QueuePool limit reached"))
    assert not database_unavailable(ValueError("x"))
    assert not database_unavailable(sa.exc.IntegrityError("INSERT", {}, sqlite3.IntegrityError("UNIQUE")))
    wrapped = RuntimeError("apply failed")
    wrapped.__cause__ = _sqlite_error("database is locked")
    assert is_outage(wrapped) and is_outage(KeyProviderUnreachable("KMS did not answer"))
    assert not is_outage(KeyUnavailable("the KMS key is disabled"))


def test_a_postgres_that_refuses_connections_fails_within_the_connect_timeout():
    import socket
    import time
    with socket.socket() as sock:        # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    engine = make_engine(f"postgresql://postgres@127.0.0.1:{port}/test", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(sa.exc.OperationalError) as caught:
        with engine.connect():
            pass
    assert time.monotonic() - started < 3 and database_unavailable(caught.value)
    engine.dispose()


@pytest.fixture
def app(tmp_path, example_model):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(tmp_path / "var"), "SYNC_LISTENERS": 0, "ADMIN_UI": False}, model=example_model)
    raised = {}

    @app.get("/outage-test/<kind>")
    def fail(kind):
        raise raised[kind]
    app.raised = raised
    yield app
    app.extensions["fieldsync"].engine.dispose()


@pytest.mark.parametrize("kind, error, status", [
    ("locked", _sqlite_error("database is locked"), 503),
    ("pool", sa.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"), 503),
    ("kms", KeyProviderUnreachable("KMS GenerateDataKey with key k failed before KMS answered"), 503),
    ("refused", KeyUnavailable("KMS Decrypt with key k: the KMS key is disabled"), 503),
    ("bug", _sqlite_error("no such column: visit.nope"), 500),
])
def test_an_outage_is_a_quick_503_problem_and_a_bug_a_500(app, kind, error, status):
    app.raised[kind] = error
    answer = app.test_client().get(f"/outage-test/{kind}")
    assert answer.status_code == status
    assert answer.mimetype == "application/problem+json"
    body = answer.get_json()
    text = answer.get_data(as_text=True)
    assert "Asha Rao" not in text and "SELECT" not in text       # no statement, no values
    if status == 503:
        assert body["type"] == UNAVAILABLE and int(answer.headers["Retry-After"]) > 0
    deps = app.extensions["fieldsync"].dependencies
    if kind in ("locked", "pool"):
        assert deps.state("database").state == "down"
    else:
        assert deps.state("database").state != "down"
