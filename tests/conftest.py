"""Shared fixtures. Databases: every test that takes `db_url` runs on SQLite and on the real
PostgreSQL (127.0.0.1:5432, database `test`, trust auth), each test in a schema of its own.
PostgreSQL never skips silently: when it is unreachable the postgres runs fail, unless
FIELDSYNC_TEST_SKIP_POSTGRES=1 is set by hand (CI never sets it)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
DEFS_DIR = ROOT / "entity_defs"
E2E_DIR = ROOT / "tests" / "admin" / "e2e"
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


# -- running on several workers (`make test`: pytest -n auto --dist loadgroup) -------------------
# A test runs on either worker, in its own process, unless it belongs to a group: a group's
# tests all run on one worker, in collection order. Groups, decided here for every test:
# * "activemq": every test that talks to the broker (takes the `activemq` fixture, directly or
#   through stomp_queue_url & co., or is marked `broker`): one of them stops and starts the
#   broker, which must not happen under another worker's test.
# * "admin-e2e": the browser tests (one Chromium for them all; each module its own server).
# * a module whose tests share a module- or class-scoped fixture (a server, a built app):
#   that module (one group per value of such a fixture when it is parametrized), so the
#   fixture is built once, not once per worker.
# * an explicit `@pytest.mark.xdist_group("name")`.
# Everything else (fixed ports, fixed paths, process-wide state) must not be shared by tests:
# ports from the kernel (port 0), files under tmp_path, PostgreSQL in the test's own schema.
#
# xdist's own loadgroup cannot see the marks under pytest 9 (it renames `item._nodeid`, which
# pytest no longer reads), so the workers write each grouped test's group to a file and the
# main process schedules by it (GroupScheduling below).

_SHARED_SCOPES = frozenset({"module", "class", "package"})
_GROUPS_DIR = "fieldsync_groups_dir"


def xdist_group(item: pytest.Item) -> str | None:
    """The group `item` must run in (on one worker with the rest of it), or None."""
    marked = item.get_closest_marker("xdist_group")
    if marked is not None:
        return str(marked.args[0] if marked.args else marked.kwargs.get("name", "default"))
    if item.get_closest_marker("broker") or "activemq" in item.fixturenames:
        return "activemq"
    if E2E_DIR in item.path.parents:
        return "admin-e2e"
    fixtures = getattr(item, "_fixtureinfo", None)
    shared = sorted(name for name, defs in (fixtures.name2fixturedefs.items() if fixtures else ())
                    if defs and defs[-1].scope in _SHARED_SCOPES)
    if not shared:
        return None
    # one group per value of a parametrized shared fixture: each value is built apart anyway
    indices = getattr(getattr(item, "callspec", None), "indices", {})
    return "::".join([item.nodeid.split("::")[0], *(f"{name}={indices[name]}" for name in shared
                                                     if name in indices)])


@pytest.hookimpl(trylast=True)    # after deselection (-k, -m): the list the worker will run
def pytest_collection_modifyitems(config, items):
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None or _GROUPS_DIR not in workerinput:   # not a worker of a grouped run
        return
    groups = {item.nodeid: group for item in items if (group := xdist_group(item))}
    target = Path(workerinput[_GROUPS_DIR]) / f"{workerinput['workerid']}.json"
    partial = target.with_suffix(".partial")
    partial.write_text(json.dumps(groups))
    partial.replace(target)


@pytest.hookimpl(optionalhook=True)   # xdist, main process: before a worker starts
def pytest_configure_node(node):
    if node.config.getvalue("dist") == "loadgroup":
        if not hasattr(node.config, "_fieldsync_groups_dir"):
            node.config._fieldsync_groups_dir = tempfile.mkdtemp(prefix="fieldsync-groups-")
        node.workerinput[_GROUPS_DIR] = node.config._fieldsync_groups_dir


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class GroupScheduling(LoadGroupScheduling):
        """Loadgroup, with the groups the workers wrote: a group is one unit of work (the
        biggest handed out first), every other test a unit of its own."""

        _groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self._groups is None:    # first called once every worker has collected
                self._groups = {}
                for path in sorted(Path(config._fieldsync_groups_dir).glob("*.json")):
                    self._groups.update(json.loads(path.read_text()))
            return self._groups.get(nodeid) or super()._split_scope(nodeid)

    return GroupScheduling(config, log)


def pytest_unconfigure(config):
    if hasattr(config, "_fieldsync_groups_dir"):
        shutil.rmtree(config._fieldsync_groups_dir, ignore_errors=True)


_WORKER_E2E_TIMINGS: dict[str, float] = {}


@pytest.hookimpl(optionalhook=True)   # an xdist hook: runs in the main process of a parallel run
def pytest_testnodedown(node, error):
    _WORKER_E2E_TIMINGS.update(getattr(node, "workeroutput", {}).get("admin_e2e_timings", {}))


def pytest_terminal_summary(terminalreporter):
    """The browser tests' timings measured on a worker (tests/admin/e2e/conftest.py prints them
    itself in a run without workers)."""
    if _WORKER_E2E_TIMINGS:
        terminalreporter.write_sep("-", "admin UI end-to-end timings")
        for what, seconds in _WORKER_E2E_TIMINGS.items():
            terminalreporter.write_line(f"{what}: {seconds:.2f} s")
