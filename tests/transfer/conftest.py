"""Fixtures of the resumable-upload tests: a real server over HTTP (waitress through
`make_http_server`, as `fieldsync serve` runs it, on a free port in a thread) and a proxy that
cuts connections (tus_support.CuttingProxy)."""

from __future__ import annotations

import threading

import pytest

from fieldsync.api.body_limit import make_http_server

from tus_support import MAX_BODY, TRANSFER_MAX, CuttingProxy, make_app, stop_waitress


@pytest.fixture(scope="module")
def served(tmp_path_factory, example_model):
    """(app, base URL) of a server on 127.0.0.1, shared by the tests of a module."""
    data = tmp_path_factory.mktemp("transfer-server")
    app = make_app(data, example_model)
    server = make_http_server(app, "127.0.0.1", 0, MAX_BODY, transfer_limit=TRANSFER_MAX, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.effective_port}"
    stop_waitress(server, thread)
    app.extensions["fieldsync"].engine.dispose()


@pytest.fixture
def proxy(served):
    app, base = served
    cutting = CuttingProxy(int(base.rsplit(":", 1)[1]))
    yield cutting
    cutting.close()
