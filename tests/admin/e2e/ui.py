"""Helpers for driving the admin UI in Chromium with Playwright (tests/admin/e2e).

* `login(page, role)` logs in through /admin/login as that role's directory user and waits for
  the dashboard; `submit_login(page, user, password)` only submits the form; `logout(page)`.
* `screenshot(page, name)` saves the page as `<name>.png`: always into the test run's temporary
  directory, and into docs/admin/ as well when FIELDSYNC_TEST_SCREENSHOTS=1 (a normal
  `make test` leaves the git tree clean; `make screenshots` regenerates the pictures).
* `PageWatch` records what the page reports: console errors, uncaught script errors and
  `securitypolicyviolation` events (the Content-Security-Policy refusing something). The
  `page` fixture attaches one to every page (`watch_of(page)`) and fails the test when a
  page broke the CSP or threw.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import urllib.parse
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.admin.e2e.server import PASSWORD, ROLE_USERS

ROOT = Path(__file__).resolve().parents[3]
DOCS_SCREENSHOTS = ROOT / "docs" / "admin"
CHROMIUM = "/usr/bin/chromium"      # Debian's package; ci/chromium.sh installs it
VIEWPORT = {"width": 1280, "height": 800}
LAUNCH_ARGS = ["--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--no-default-browser-check"]
SCREENSHOT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")

__all__ = ["Browsers", "PageWatch", "browser_missing", "find_chromium", "login", "logout", "screenshot",
           "screenshots_to_docs", "submit_login", "watch_of"]


def find_chromium() -> str | None:
    """The Chromium to launch: FIELDSYNC_CHROMIUM when set, else `chromium` on the PATH, else
    Debian's /usr/bin/chromium; None when there is none (Playwright downloads no browser)."""
    for candidate in (os.environ.get("FIELDSYNC_CHROMIUM"), shutil.which("chromium"), CHROMIUM):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def browser_missing(reason: str) -> None:
    """A browser test cannot run: it fails in CI (CI set: tests that need a real component
    never skip silently there) and skips elsewhere, with the reason and the fix."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI: browser tests never skip)", pytrace=False)
    pytest.skip(reason)


class Browsers:
    """Playwright and one headless Chromium, started on first use (`get`) and stopped by
    `close` (the e2e conftest closes it when the run leaves the e2e tests). Debian's Chromium,
    without its sandbox (the tests run as root), no browser download."""

    def __init__(self) -> None:
        self.playwright = None
        self.browser = None
        self.launch_seconds: float | None = None

    def get(self):
        if self.browser is not None and self.browser.is_connected():
            return self.browser
        executable = find_chromium()
        if executable is None:
            browser_missing("Chromium is not installed: run `bash ci/chromium.sh` (Debian's chromium; "
                            "Playwright downloads no browser here)")
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            browser_missing("the Python package playwright is missing: `pip install -e '.[test]'`")
        self.close()
        started = time.perf_counter()
        self.playwright = sync_playwright().start()
        try:
            self.browser = self.playwright.chromium.launch(executable_path=executable, headless=True,
                                                           chromium_sandbox=False, args=LAUNCH_ARGS)
        except Exception:
            self.close()
            raise
        self.launch_seconds = time.perf_counter() - started
        return self.browser

    def close(self) -> None:
        if self.browser is not None:
            try:
                self.browser.close()
            finally:
                self.browser = None
        if self.playwright is not None:
            try:
                self.playwright.stop()
            finally:
                self.playwright = None


# -- what the page reports ------------------------------------------------------------------------

# runs in every document before its own scripts; the binding is Playwright's, so the CSP of the
# page does not apply to it
_REPORT_CSP = """
window.__fsCsp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  const v = {directive: e.violatedDirective, blocked: e.blockedURI, source: e.sourceFile,
             line: e.lineNumber, sample: e.sample, page: document.location.href};
  window.__fsCsp.push(v);
  window.__fsReportCsp(v);
});
"""


@dataclass
class PageWatch:
    """Console messages, script errors and CSP violations of one browser context."""

    console: list[dict[str, Any]] = field(default_factory=list)        # every console message
    page_errors: list[str] = field(default_factory=list)                # uncaught exceptions
    csp_violations: list[dict[str, Any]] = field(default_factory=list)  # securitypolicyviolation events

    def attach(self, context) -> None:
        context.expose_binding("__fsReportCsp", lambda _source, violation: self.csp_violations.append(violation))
        context.add_init_script(_REPORT_CSP)

    def follow(self, page) -> None:
        page.on("console", lambda message: self.console.append(
            {"type": message.type, "text": message.text, "url": message.location.get("url", "")}))
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def console_errors(self, *, include_favicon: bool = False) -> list[dict[str, Any]]:
        """Console messages of type error. The browser's own request for /favicon.ico (the
        admin has no icon: a 404 from the API app) is left out unless asked for."""
        return [m for m in self.console if m["type"] == "error"
                and (include_favicon or urllib.parse.urlsplit(m["url"]).path != "/favicon.ico")]

    def csp_messages(self) -> list[dict[str, Any]]:
        """Console messages in which Chromium reports a Content-Security-Policy refusal."""
        return [m for m in self.console if "Content Security Policy" in m["text"]]

    def problems(self) -> list[str]:
        """What no page of the admin may do: break the CSP or throw."""
        found = [f"CSP violation: {v}" for v in self.csp_violations]
        found += [f"CSP console message: {m['text']}" for m in self.csp_messages()]
        found += [f"uncaught script error: {e}" for e in self.page_errors]
        return found

    def clear(self) -> None:
        self.console.clear()
        self.page_errors.clear()
        self.csp_violations.clear()


_watches: "weakref.WeakKeyDictionary[Any, PageWatch]" = weakref.WeakKeyDictionary()


def watch_of(page) -> PageWatch:
    """The PageWatch the `page` fixture attached to this page."""
    return _watches[page]


def _register(page, watch: PageWatch) -> None:
    _watches[page] = watch


# -- logging in and out ---------------------------------------------------------------------------

def submit_login(page, user: str, password: str) -> None:
    """Open /admin/login, fill in the form and submit it; returns once the answer has loaded."""
    page.goto("/admin/login")
    page.fill("#user", user)
    page.fill("#password", password)
    with page.expect_navigation():
        page.click("#fs-login button[type=submit]")


def login(page, role: str, *, password: str = PASSWORD) -> None:
    """Log in as `role`'s directory user (ROLE_USERS) and land on the dashboard; fails the test
    with the page's message when the login is refused."""
    submit_login(page, ROLE_USERS[role], password)
    path = urllib.parse.urlsplit(page.url).path
    if path != "/admin/":
        alerts = page.locator(".alert").all_inner_texts()
        raise AssertionError(f"logging in as {ROLE_USERS[role]} ({role}) ended on {page.url}: {alerts}")


def logout(page) -> None:
    """Press the navigation bar's Log out button; returns on the login page."""
    with page.expect_navigation():
        page.click("#fs-logout")


# -- screenshots ----------------------------------------------------------------------------------

def screenshots_to_docs() -> bool:
    """FIELDSYNC_TEST_SCREENSHOTS=1: the run writes its screenshots into docs/admin/ too."""
    return os.environ.get("FIELDSYNC_TEST_SCREENSHOTS") == "1"


class _ScreenshotDir:
    """Where this run keeps its screenshots (the e2e conftest points it at the run's temporary
    directory; outside pytest a directory of its own)."""

    path: Path | None = None
    written: list[Path] = []

    @classmethod
    def get(cls) -> Path:
        if cls.path is None:
            cls.path = Path(tempfile.mkdtemp(prefix="fieldsync-screenshots-"))
        return cls.path


def screenshot(page, name: str, *, full_page: bool = True) -> Path:
    """Save the page as `<name>.png` (lower case, digits and dashes): into this run's screenshot
    directory, and into docs/admin/ when FIELDSYNC_TEST_SCREENSHOTS=1. Returns the run's copy.
    Animations are stopped and the caret hidden, so a page gives the same picture each time."""
    if not SCREENSHOT_NAME.match(name):
        raise ValueError(f"screenshot name {name!r}: use lower case letters, digits and dashes")
    target = _ScreenshotDir.get() / f"{name}.png"
    page.screenshot(path=str(target), full_page=full_page, animations="disabled", caret="hide")
    _ScreenshotDir.written.append(target)
    if screenshots_to_docs():
        DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, DOCS_SCREENSHOTS / target.name)
    return target
