"""Fixtures for the admin UI's end-to-end tests: a real server process, Chromium through
Playwright, a page per test (docs: /work/notes/admin-e2e.md, assembled into docs/admin.md).

* `server` (one per test module): `fieldsync serve` on a free loopback port with its own
  DATA_DIR and a copy of entity_defs as DEFS_DIR, the example seed data and a directory user per
  role (server.ROLE_USERS, password server.PASSWORD), set up with the `fieldsync` command itself
  (tests/admin/e2e/server.py) once per run and copied for each module. Per module, because the
  scenarios change what they run on (a definition applied, the listener pool resized): each
  module starts from the same state.
* `browser`: one headless Chromium for all the e2e tests of the run, Debian's (no browser
  download: Playwright gets `executable_path`), without the sandbox (the tests run as root). It
  is closed as soon as the run leaves this directory: Playwright's sync API keeps an asyncio
  loop running in the main thread, which would break the rest of the suite's asyncio.run().
* `page`: a fresh browser context (own cookies) and page per test, its base URL the server's,
  a 1280x800 viewport; a PageWatch (ui.py) records its console, script errors and CSP
  violations, and the test fails when the page broke the Content-Security-Policy or threw.

Chromium missing: the browser tests skip with the reason on a developer's machine, and fail in
CI (CI set): tests that need a real component never skip silently there. `make test` installs it
(ci/chromium.sh).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.admin.e2e import ui
from tests.admin.e2e.device import Device
from tests.admin.e2e.server import FieldsyncServer

E2E_DIR = Path(__file__).resolve().parent
TIMEOUT_MS = 15_000     # for every Playwright wait; a loaded 2-core machine renders a page in < 1 s


_BROWSERS = ui.Browsers()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Close the browser once the next test is not an e2e test (this conftest's hooks run for
    the tests of this directory only), after this test's fixtures were torn down."""
    try:
        return (yield)
    finally:
        if nextitem is None or E2E_DIR not in Path(str(nextitem.fspath)).resolve().parents:
            _BROWSERS.close()


@pytest.fixture(scope="session", autouse=True)
def _e2e_session(tmp_path_factory):
    """The run's screenshot directory; the browser is closed at the end whatever happened."""
    ui._ScreenshotDir.path = tmp_path_factory.mktemp("screenshots")
    yield
    _BROWSERS.close()


_TIMINGS: dict[str, float] = {}


@pytest.fixture(scope="session")
def timings() -> dict[str, float]:
    """Seconds worth reporting, by what was measured: printed at the end of the run."""
    return _TIMINGS


def pytest_terminal_summary(terminalreporter):
    if _TIMINGS:
        terminalreporter.write_sep("-", "admin UI end-to-end timings")
        for what, seconds in _TIMINGS.items():
            terminalreporter.write_line(f"{what}: {seconds:.2f} s")


def pytest_sessionfinish(session):
    """On a worker of a parallel run (`make test`), hand the timings to the main process, which
    prints them (tests/conftest.py); this conftest is not loaded there."""
    if hasattr(session.config, "workeroutput") and _TIMINGS:
        session.config.workeroutput["admin_e2e_timings"] = dict(_TIMINGS)


@pytest.fixture(scope="session")
def prepared_server_dir(tmp_path_factory) -> Path:
    """Definitions, seed data and users set up once per run (`fieldsync seed`, `fieldsync users
    add`); each module's server starts on a copy of it."""
    started = time.perf_counter()
    root = FieldsyncServer.prepare(tmp_path_factory.mktemp("e2e-prepared")).root
    _TIMINGS["seed data and users set up"] = time.perf_counter() - started
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, prepared_server_dir, request):
    """A `fieldsync serve` process for this module (tests/admin/e2e/server.py), stopped after it."""
    started = time.perf_counter()
    running = FieldsyncServer.start(tmp_path_factory.mktemp("e2e-server"), prepared=prepared_server_dir)
    _TIMINGS[f"server ready for {request.module.__name__.rsplit('.', 1)[-1]}"] = time.perf_counter() - started
    yield running
    died = running.process.poll()
    running.stop()
    if died is not None:
        pytest.fail(f"the server exited ({died}) during {request.module.__name__}:\n{running.log_tail()}",
                    pytrace=False)


@pytest.fixture
def device(server, tmp_path):
    """The field rep's device (rep-asha, territory PUNE_CENTRAL): the SDK over HTTP against the
    server, its store in tmp_path, not yet synced (tests/admin/e2e/device.py)."""
    with Device.log_in(server, tmp_path / "rep-asha.db") as opened:
        yield opened


@pytest.fixture
def browser():
    """The run's headless Chromium (one for all the e2e tests)."""
    browser = _BROWSERS.get()
    if _BROWSERS.launch_seconds is not None:
        _TIMINGS.setdefault("Chromium launched", _BROWSERS.launch_seconds)
    return browser


@pytest.fixture
def page(browser, server):
    """A new page in a context of its own (no cookies from other tests), at the server's URL;
    the test fails when the page broke the CSP or threw a script error."""
    context = browser.new_context(base_url=server.url, viewport=ui.VIEWPORT, locale="en-US", timezone_id="UTC")
    context.set_default_timeout(TIMEOUT_MS)
    watch = ui.PageWatch()
    watch.attach(context)
    page = context.new_page()
    watch.follow(page)
    ui._register(page, watch)
    try:
        yield page
    finally:
        problems = watch.problems()
        context.close()
    if problems:
        pytest.fail("the admin page broke its Content-Security-Policy or threw:\n  " + "\n  ".join(problems),
                    pytrace=False)
