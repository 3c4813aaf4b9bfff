"""Fixtures for the listener pool, workers, dead letters and the processing log.

Servers are real `create_app` apps on a SQLite file (a copy of a seeded template made once per
session) with the embedded queue in their data directory. `make_server(listeners=0, **config)`
builds one; everything it built is stopped and closed after the test. `worker_env(server)` is
the environment a `fieldsync worker` subprocess needs to share the server's database, queue
and keys. Helpers (`Device`, `wait_for`, ...) live in workers_support.py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from fieldsync.api import create_app
from fieldsync.seed import load_seed

from workers_support import SECRET, SEED_DIR, DEFS_DIR, Server


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory, example_model) -> Path:
    """A server database with the seed loaded, made once; servers start from a copy."""
    data_dir = tmp_path_factory.mktemp("workers-template")
    app = create_app({"DATA_DIR": str(data_dir), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                      "DATABASE_URL": f"sqlite:///{data_dir / 'server.db'}"}, model=example_model)
    state = app.extensions["fieldsync"]
    load_seed(state.config, SEED_DIR, store=state.store)
    state.sync.close()
    state.engine.dispose()
    return data_dir / "server.db"


@pytest.fixture
def make_server(tmp_path_factory, seeded_template) -> Callable[..., Server]:
    """`make_server(listeners=0, **config)`: a seeded server in a new data directory."""
    servers: list[Server] = []

    def make(listeners: int = 0, **config: Any) -> Server:
        data_dir = tmp_path_factory.mktemp("server")
        shutil.copyfile(seeded_template, data_dir / "server.db")
        # the copy's data keys are wrapped by the template's master key: the keys go with it
        shutil.copytree(seeded_template.parent / "keys", data_dir / "keys")
        server = Server(data_dir, listeners, **config)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def worker_env() -> Callable[[Server], dict[str, str]]:
    """The environment of a `fieldsync worker` sharing `server`'s database, queue and keys."""
    def env(server: Server) -> dict[str, str]:
        out = {k: v for k, v in os.environ.items() if not k.startswith("FIELDSYNC_")}
        out.update(FIELDSYNC_DATA_DIR=str(server.data_dir), FIELDSYNC_DATABASE_URL=server.database_url,
                   FIELDSYNC_SECRET_KEY=SECRET, FIELDSYNC_DEFS_DIR=str(DEFS_DIR))
        return out
    return env
