"""The admin UI's login, session and page protections (docs/admin.md, "Security")."""

from __future__ import annotations

import pytest

from tests.admin.conftest import ROLE_USERS, AdminClient

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def test_login_page_and_redirect_for_anonymous(admin_app):
    client = AdminClient(admin_app)
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    page = client.get("/admin/login")
    assert page.status_code == 200 and 'name="password"' in client.text(page)


@pytest.mark.parametrize("role", ["admin", "analyst", "compliance"])
def test_admin_roles_log_in_and_see_the_dashboard(browser_as, role):
    client = browser_as(role)
    page = client.get("/admin/")
    assert page.status_code == 200, client.text(page)
    assert ROLE_USERS[role] in client.text(page)


def test_field_rep_is_refused(admin_app):
    client = AdminClient(admin_app)
    response = client.login(ROLE_USERS["field_rep"])
    assert response.status_code == 401
    assert "no admin views" in client.text(response)
    assert client.get("/admin/").status_code == 302


def test_wrong_password_is_refused(admin_app):
    client = AdminClient(admin_app)
    response = client.login(ROLE_USERS["admin"], password="wrong password!")
    assert response.status_code == 401
    assert client.get("/admin/").status_code == 302
