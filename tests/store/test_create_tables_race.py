"""Several processes setting up one new database at once (two `fieldsync users add`, a server and
a worker starting together) all succeed: a table another process created between the check and
the create is not an error (store.engine.create_tables)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = """
import sys, time
from fieldsync.store.engine import make_engine
from fieldsync.store.changelog import create_changelog_tables
from fieldsync.store.sync_tables import create_sync_tables
from fieldsync.store.directory import create_user_tables
from fieldsync.auth.sessions import create_session_tables
from fieldsync.workers.fleet import create_worker_tables
engine = make_engine(sys.argv[1])
start = float(sys.argv[2])
while time.time() < start:   # every process reaches the check at the same moment
    pass
for create in (create_changelog_tables, create_sync_tables, create_user_tables, create_session_tables,
               create_worker_tables):
    create(engine)
"""


@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_processes_creating_the_tables_at_once_all_succeed(db_url):
    _set_up_at_once(db_url, 5)


def _set_up_at_once(db_url: str, processes: int) -> None:
    """`processes` processes run SETUP on `db_url` at the same moment; each must succeed."""
    import time
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), os.environ.get("PYTHONPATH", "")]))
    start = time.time() + 2.0
    procs = [subprocess.Popen([sys.executable, "-c", SETUP, db_url, str(start)], env=env, cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for _ in range(processes)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, "\n".join(e for e in errors if e)[-3000:]


@pytest.mark.parametrize("db_url", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True)
def test_an_index_a_later_version_added_is_created_on_an_existing_database_by_processes_at_once(db_url):
    """fs_ledger's (device_id, position) index came after its table: servers starting on a
    database made before it create it, together, without an error."""
    import sqlalchemy as sa
    from fieldsync.store.engine import make_engine
    from fieldsync.store.sync_tables import create_sync_tables
    engine = make_engine(db_url)
    create_sync_tables(engine)
    with engine.begin() as conn:
        conn.execute(sa.text('DROP INDEX "ix_fs_ledger_device_position"'))
    assert "ix_fs_ledger_device_position" not in {ix["name"] for ix in sa.inspect(engine).get_indexes("fs_ledger")}
    _set_up_at_once(db_url, 4)
    assert "ix_fs_ledger_device_position" in {ix["name"] for ix in sa.inspect(engine).get_indexes("fs_ledger")}
    engine.dispose()
