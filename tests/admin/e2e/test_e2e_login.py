"""Logging in to the admin UI in a real browser (issue 12, section 4): each admin role logs in and
sees the dashboard with its scripts running under the Content-Security-Policy, the session cookie
is Secure, HttpOnly and SameSite=Strict, logging out ends the session, and a wrong password shows
the error. Runs against `fieldsync serve` in its own process (conftest.py)."""

from __future__ import annotations

import urllib.parse

import pytest

from tests.admin.e2e.server import PASSWORD, ROLE_USERS
from tests.admin.e2e.ui import login, logout, screenshot, submit_login, watch_of


def path_of(page) -> str:
    return urllib.parse.urlsplit(page.url).path


@pytest.mark.parametrize("role", ["admin", "analyst", "compliance"])
def test_each_admin_role_logs_in_sees_the_dashboard_and_logs_out(page, role):
    page.goto("/admin/")
    assert path_of(page) == "/admin/login"           # anonymous: sent to the login page
    if role == "admin":
        screenshot(page, "login")
    login(page, role)

    assert page.title() == "Dashboard - fieldsync admin"
    assert page.locator("#fs-who").inner_text() == f"{ROLE_USERS[role]} ({role})"
    assert page.locator("#fs-dashboard").count() == 1     # its figures are the dashboard view's tests
    # the page's scripts ran: they come from /admin/static and /admin/assets, which the CSP allows
    assert page.evaluate("() => typeof window.jQuery") == "function"
    assert page.evaluate("() => typeof window.jQuery.fn.collapse") == "function"   # bootstrap's plugins
    watch = watch_of(page)
    assert watch.problems() == []
    assert watch.console_errors() == []
    if role == "admin":
        screenshot(page, "dashboard")

    [cookie] = [c for c in page.context.cookies() if c["name"] == "fieldsync_admin"]
    flags = (cookie["secure"], cookie["httpOnly"], cookie["sameSite"], cookie["path"])
    assert flags == (True, True, "Strict", "/admin")
    assert page.evaluate("() => document.cookie") == ""    # HttpOnly: no script reads the session

    logout(page)
    assert path_of(page) == "/admin/login"
    assert "you are logged out" in page.locator(".alert").inner_text()
    page.goto("/admin/")
    assert path_of(page) == "/admin/login"           # the session is over, not only the page left


def test_the_csp_refuses_a_script_without_the_pages_nonce(page):
    """The check above can fail: a script injected without the nonce does not run and the
    browser reports the violation (what an XSS payload would meet)."""
    login(page, "admin")
    page.evaluate("""() => {
        const script = document.createElement('script');
        script.textContent = 'window.__injected = true';
        document.body.appendChild(script);
    }""")
    page.wait_for_function("() => window.__fsCsp.length > 0")
    assert page.evaluate("() => window.__injected === undefined")
    watch = watch_of(page)
    assert [v["directive"] for v in watch.csp_violations] == ["script-src-elem"]
    assert watch.csp_messages(), watch.console
    watch.clear()     # expected here; any other violation fails the test (the page fixture)


def test_a_wrong_password_shows_the_error_and_no_session(page):
    submit_login(page, ROLE_USERS["analyst"], PASSWORD + " but wrong")
    assert path_of(page) == "/admin/login"
    alert = page.locator(".alert-danger")
    assert "the user id or the password is wrong" in alert.inner_text()
    screenshot(page, "login-refused")
    page.goto("/admin/")
    assert path_of(page) == "/admin/login"
    # the failed POST answered 401: the browser reports that one resource; nothing else failed
    errors = watch_of(page).console_errors()
    assert all("401" in e["text"] for e in errors), errors


def test_a_field_rep_has_no_admin_views(page):
    submit_login(page, ROLE_USERS["field_rep"], PASSWORD)
    assert path_of(page) == "/admin/login"
    assert "no admin views" in page.locator(".alert-danger").inner_text()
