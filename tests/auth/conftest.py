"""Fixtures for authentication and access: the app over the example definitions with an
injected auth clock (seconds; no sleeps), on SQLite and PostgreSQL (`auth_app`) or on SQLite
only (`lite_app`), and `make_app(**config)` for other settings. Helpers live in auth_support.py.
"""

from __future__ import annotations

import pytest

from auth_support import SECRET, AuthApp, SecondsClock


@pytest.fixture
def clock() -> SecondsClock:
    return SecondsClock()


@pytest.fixture
def make_app(tmp_path, example_model, clock):
    apps: list[AuthApp] = []

    def make(url: str | None = None, *, model=None, **config) -> AuthApp:
        from fieldsync.api import create_app
        settings = {"SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path / f"data{len(apps)}"), "SYNC_LISTENERS": 0}
        if url:
            settings["DATABASE_URL"] = url
        settings.update(config)
        app = AuthApp(create_app(settings, model=model or example_model, auth_clock=clock), clock)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


@pytest.fixture
def auth_app(db_url, make_app) -> AuthApp:
    """On SQLite and on PostgreSQL."""
    return make_app(db_url)


@pytest.fixture
def lite_app(make_app) -> AuthApp:
    """On SQLite (the embedded default) only."""
    return make_app()
