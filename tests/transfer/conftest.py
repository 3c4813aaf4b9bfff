"""Fixtures of the resumable-upload tests: a real server over HTTP (waitress through
`make_http_server`, as `fieldsync serve` runs it, on a free port in a thread) and a proxy that
cuts connections (tus_support.CuttingProxy)."""

from __future__ import annotations


import pytest


from tus_support import MAX_BODY, CuttingProxy, make_app, serving


@pytest.fixture(scope="module")
def served(tmp_path_factory, example_model):
    """(app, base URL) of a server on 127.0.0.1, shared by the tests of a module."""
    data = tmp_path_factory.mktemp("transfer-server")
    app = make_app(data, example_model)
    with serving(app, MAX_BODY) as base:
        yield app, base


@pytest.fixture
def proxy(served):
    app, base = served
    cutting = CuttingProxy(int(base.rsplit(":", 1)[1]))
    yield cutting
    cutting.close()
