"""Fixtures for media: the example definitions plus a PHI prescription image, an app on
SQLite with the local media store, and a moto S3 bucket for the S3 store."""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pytest

from fieldsync.api import create_app
from fieldsync.auth import issue_token
from fieldsync.defs import load_model

from moto_server import aws_credentials, moto_endpoint  # noqa: F401  (fixtures)

SECRET = "media-test-secret"
ROOT = Path(__file__).resolve().parents[2]
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 40
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def new_ref() -> str:
    return f"fsmedia:{uuid.uuid4()}"


@pytest.fixture(scope="session")
def media_model(tmp_path_factory):
    """The example definitions with a PHI image on prescriptions (`rx_image`)."""
    defs = tmp_path_factory.mktemp("defs") / "entity_defs"
    shutil.copytree(ROOT / "entity_defs", defs)
    rx = defs / "transactions" / "prescription.yaml"
    text = rx.read_text()
    text = text.replace("encryption:\n", "  rx_image:\n    type: media\n    max_bytes: 200000\n"
                                         "    content_types: [image/*]\nencryption:\n", 1)
    text = text.replace("    diagnosis:\n      mode: encrypt\n      phi: true\n",
                        "    diagnosis:\n      mode: encrypt\n      phi: true\n"
                        "    rx_image:\n      mode: encrypt\n      phi: true\n", 1)
    rx.write_text(text)
    return load_model(defs)


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


@pytest.fixture
def app(tmp_path, media_model):
    app = make_app(tmp_path, media_model)
    yield app
    app.extensions["fieldsync"].engine.dispose()


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
