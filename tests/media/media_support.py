"""Helpers of the media tests: files, references, callers, pushes (fixtures are in conftest)."""

from __future__ import annotations

import time
import uuid

from fieldsync.api import create_app
from fieldsync.auth import issue_token

SECRET = "media-test-secret"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 40
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def new_ref() -> str:
    return f"fsmedia:{uuid.uuid4()}"


class Caller:
    """A test client with one user's bearer token."""

    def __init__(self, app, user: str, role: str, **attributes):
        self.client = app.test_client()
        self.token = issue_token(SECRET, user, role, attributes, ttl=3600, now=time.time())
        self.headers = {"Authorization": f"Bearer {self.token}", "Fieldsync-Protocol": "1"}

    def call(self, method: str, path: str, body=None, **kw):
        return self.client.open("/api/v1" + path, method=method, json=body, headers=self.headers, **kw)


def make_app(tmp_path, model, **config):
    settings = {"DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "SECRET_KEY": SECRET,
                "DATA_DIR": str(tmp_path), "SYNC_LISTENERS": 0, "ADMIN_UI": False}
    settings.update(config)
    return create_app(settings, model=model)


def register(caller: Caller, install: str = "dev-1") -> str:
    r = caller.call("POST", "/sync/devices", {"install_id": install, "schema_version": 1})
    assert r.status_code == 201, r.get_json()
    return r.get_json()["device_id"]


def push(app, caller: Caller, device_id: str, mutations: list[dict], seq0: int = 1) -> list[dict]:
    """Push `mutations` (seqs from seq0), apply them and return their results."""
    for i, m in enumerate(mutations):
        m.setdefault("seq", seq0 + i)
        m.setdefault("base_version", None)
        m.setdefault("client_time", "2026-11-20T09:00:00Z")
    r = caller.call("POST", "/sync/push", {"device_id": device_id, "schema_version": 1, "mutations": mutations})
    assert r.status_code == 202, r.get_json()
    app.extensions["fieldsync"].sync.drain()
    r = caller.call("GET", f"/sync/results?device_id={device_id}&after_seq={seq0 - 1}")
    return r.get_json()["results"]


def expense(receipt=None, **fields) -> dict:
    body = {"spent_on": "2026-11-20", "category": "travel", "amount": "12.00"}
    if receipt is not None:
        body["receipt"] = receipt
    body.update(fields)
    return body
