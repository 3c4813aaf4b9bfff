"""TLS fixtures: certificate authorities from trustme, real HTTPS servers on 127.0.0.1 (cheroot
through fieldsync.api.https_server, in a thread, port 0), and the SPKI pins of their keys."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Callable

import pytest
import trustme

from fieldsync.api import create_app
from fieldsync.api.https_server import make_https_server
from fieldsync.seed import load_seed

from tls_helpers import ROOT, ServerCert, leaf_files

SECRET = "transport-test-secret"
PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"     # a seed territory (examples/seed)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The CA the tests' devices trust."""
    return trustme.CA(key_type=trustme.KeyType.ECDSA)


@pytest.fixture
def ca_file(ca, tmp_path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def issue(ca, tmp_path) -> Callable[..., ServerCert]:
    """`issue(*hosts, name="server", by=ca)`: a fresh certificate (a new key each time)."""
    def make(*hosts: str, name: str = "server", by: trustme.CA | None = None) -> ServerCert:
        leaf = (by or ca).issue_cert(*(hosts or ("localhost", "127.0.0.1")))
        return leaf_files(leaf, tmp_path / "certs", name)
    return make


@pytest.fixture
def https_server():
    """`start(app, cert) -> port`: serve `app` over TLS on 127.0.0.1 with that certificate;
    every server is stopped after the test (or earlier by `start.stop_all()`)."""
    running: list[tuple[object, threading.Thread]] = []

    def start(app, cert: ServerCert) -> int:
        server = make_https_server(app, "127.0.0.1", 0, cert.cert_file, cert.key_file, threads=4)
        server.prepare()       # bound and listening when this returns
        thread = threading.Thread(target=server.serve, daemon=True)
        thread.start()
        running.append((server, thread))
        return server.bind_addr[1]

    def stop_all() -> None:
        while running:
            server, thread = running.pop()
            server.stop()
            thread.join(10)
            assert not thread.is_alive(), "the HTTPS server did not stop"

    start.stop_all = stop_all
    yield start
    stop_all()


@pytest.fixture(scope="session")
def schema_document() -> dict:
    return json.loads((ROOT / "generated" / "device" / "schema.json").read_text())


@pytest.fixture
def app(tmp_path, example_model):
    """The real server on SQLite with the seed data; its pushes applied by its listener pool."""
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(tmp_path / "var"), "SYNC_LISTENERS": 1}, model=example_model)
    state = app.extensions["fieldsync"]
    load_seed(state.config, ROOT / "examples" / "seed", store=state.store)
    yield app
    state.sync.stop()
    state.engine.dispose()


@pytest.fixture
def token():
    """`token(user)`: a field rep's bearer token for the Pune territory."""
    from fieldsync.auth import issue_token

    def make(user: str) -> str:
        return issue_token(SECRET, user, "field_rep", {"territory_ids": [PUNE]}, ttl=3600)
    return make
