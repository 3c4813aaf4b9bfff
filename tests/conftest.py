"""Shared fixtures. Databases: every test that takes `db_url` runs on SQLite and on the real
PostgreSQL (127.0.0.1:5432, database `test`, trust auth), each test in a schema of its own.
PostgreSQL never skips silently: when it is unreachable the postgres runs fail, unless
FIELDSYNC_TEST_SKIP_POSTGRES=1 is set by hand (CI never sets it)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
DEFS_DIR = ROOT / "entity_defs"
PG_ADMIN_URL = os.environ.get("FIELDSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_available() -> bool:
    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def example_model():
    from fieldsync.defs import load_model
    return load_model(DEFS_DIR)


@pytest.fixture
def defs_copy(tmp_path) -> Path:
    """A writable copy of the example definitions, for tests that change them."""
    target = tmp_path / "entity_defs"
    shutil.copytree(DEFS_DIR, target)
    return target


@pytest.fixture
def pg_url():
    """A URL for PostgreSQL whose search_path is a fresh schema, dropped afterwards."""
    if os.environ.get("FIELDSYNC_TEST_SKIP_POSTGRES") == "1" and not os.environ.get("CI"):
        pytest.skip("FIELDSYNC_TEST_SKIP_POSTGRES=1")
    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}; start it "
                    "(pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start)")
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(PG_ADMIN_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """The same test on SQLite (a file in tmp_path) and on PostgreSQL (a schema of its own)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    return request.getfixturevalue("pg_url")
