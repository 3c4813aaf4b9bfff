"""Liveness and readiness (docs/operations.md "Outages"): /health touches no dependency at all,
/ready probes the database within READY_TIMEOUT_SECONDS and reports every dependency."""

from __future__ import annotations

import time

import sqlalchemy as sa

from fieldsync.api import create_app
from fieldsync.store.engine import make_engine


def _app(tmp_path, example_model, **config):
    return create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "SECRET_KEY": "ready-secret-0123456789",
                       "DATA_DIR": str(tmp_path / "var"), "SYNC_LISTENERS": 0, **config}, model=example_model)


def test_health_touches_no_database(tmp_path, example_model):
    app = _app(tmp_path, example_model)
    state = app.extensions["fieldsync"]
    checkouts = []
    sa.event.listen(state.engine, "checkout", lambda *_: checkouts.append(1))
    client = app.test_client()
    assert client.get("/api/v1/health").json == {"status": "ok"}
    assert client.head("/api/v1/health", data=b"a body").status_code == 200
    assert checkouts == []
    client.get("/api/v1/openapi.json")
    assert checkouts, "the listener counts checkouts (openapi follows the model version)"
    state.engine.dispose()


def test_ready_reports_each_dependency_and_the_spool(tmp_path, example_model):
    app = _app(tmp_path, example_model)
    state = app.extensions["fieldsync"]
    client = app.test_client()
    answer = client.get("/api/v1/ready")
    assert answer.status_code == 200 and answer.headers["Cache-Control"] == "no-store"
    body = answer.json
    assert body["status"] == "ready"
    assert body["dependencies"]["database"]["state"] == "up"
    assert set(body["dependencies"]) >= {"database", "queue", "keys", "object_store"}
    assert body["spool"] == {"batches": 0, "devices": 0, "oldest_age_seconds": None}
    state.dependencies.failed("queue", OSError("broker 10.0.0.7:61613 refused"), state="degraded")
    body = client.get("/api/v1/ready").json
    assert body["status"] == "degraded" and body["dependencies"]["queue"]["state"] == "degraded"
    assert "10.0.0.7" not in client.get("/api/v1/ready").text     # no host, no error text without a token
    state.engine.dispose()


def test_ready_answers_503_quickly_when_the_database_does_not_answer(tmp_path, example_model):
    app = _app(tmp_path, example_model, READY_TIMEOUT_SECONDS=1.0)
    state = app.extensions["fieldsync"]
    state.engine.dispose()
    # a PostgreSQL that does not answer: nothing listens on port 9 (discard) of this machine
    state.engine = make_engine("postgresql://postgres@127.0.0.1:9/none?connect_timeout=5")
    client = app.test_client()
    started = time.monotonic()
    answer = client.get("/api/v1/ready")
    assert answer.status_code == 503 and answer.json["status"] == "unready"
    assert answer.json["dependencies"]["database"]["state"] == "down"
    assert time.monotonic() - started < 3.0
    assert client.get("/api/v1/health").status_code == 200     # liveness: the process answers
    state.engine.dispose()
