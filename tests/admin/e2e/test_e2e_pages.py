"""Each main admin page in a real browser with data present, as the role that uses it: the page
renders its key elements without a script error or CSP violation (the `page` fixture), and its
screenshot is taken for docs/admin.md (`make screenshots`): devices (after a field rep's device
synced), keys, users, the sync rules preview of that rep (counts shown), a data list (retailers)
and a record's page. Queues and audit are pictured by their scenarios (test_e2e_workers.py,
test_e2e_audit.py), the dashboard by test_e2e_login.py.
"""

from __future__ import annotations

import urllib.parse

from tests.admin.e2e.server import PUNE_CENTRAL, ROLE_USERS
from tests.admin.e2e.ui import login, screenshot, watch_of

REP = ROLE_USERS["field_rep"]


def path_of(page) -> str:
    return urllib.parse.urlsplit(page.url).path


def visit(page, path: str) -> None:
    """Open `path` and check it is that page, not the login page or an error."""
    answer = page.goto(path)
    assert answer is not None and answer.status == 200, (path, answer and answer.status)
    assert path_of(page) == urllib.parse.urlsplit(path).path


def test_the_admins_pages_with_a_synced_device(server, device, page):
    device.sync()
    [shop, *_] = device.client.query("retailer")
    device.write("visit", {"retailer_id": shop["id"], "territory_id": PUNE_CENTRAL,
                           "visited_at": "2026-12-03T08:00:00Z", "purpose": "order", "notes": "for the pictures"})
    device.settle()
    device_id = device.status().device_id
    login(page, "admin")

    visit(page, "/admin/devices/")
    rows = page.locator("#fs-devices tbody tr")
    assert rows.count() >= 1 and REP in page.inner_text("#fs-devices")
    assert page.get_attribute(f"#fs-device-{device_id}", "data-status") == "active"
    screenshot(page, "devices")

    visit(page, "/admin/keys/")
    assert page.locator("#fs-key-overview tbody tr").count() >= 1
    assert page.locator("#fs-keys tbody tr").count() >= 1
    assert page.get_attribute("#fs-rotations", "data-running") == "false"
    screenshot(page, "keys")

    visit(page, "/admin/users/")
    users = page.eval_on_selector_all("#fs-users tr.fs-user", "rows => rows.map(r => r.dataset.user)")
    assert set(ROLE_USERS.values()) <= set(users)
    screenshot(page, "users")

    visit(page, "/admin/preview/")
    page.check("#fs-mode-user")
    page.select_option("#fs-preview-user", REP)
    with page.expect_navigation():
        page.click("#fs-preview")
    assert page.inner_text("#fs-preview-target") == REP
    counts = {row.get_attribute("id")[len("fs-count-"):]: int(row.locator(".fs-count").inner_text())
              for row in page.locator("#fs-preview-counts tr[id^='fs-count-']").all()}
    assert counts["retailer"] >= 1 and counts["retailer"] == len(device.client.query("retailer"))
    screenshot(page, "preview")
    assert watch_of(page).console_errors() == []


def test_the_analysts_data_pages(server, page):
    login(page, "analyst")
    page.click("a.dropdown-toggle:has-text('Data')")
    with page.expect_navigation():
        page.click("a.dropdown-item:text-is('Retailer')")
    assert path_of(page) == "/admin/data/retailer/"
    listed = page.locator("#fs-data-list table tbody tr")
    assert listed.count() >= 1
    assert page.locator("#fs-data-list .fs-masked").count() >= 1          # analysts see no phone numbers
    screenshot(page, "data-list")

    # the filters work without their inline handlers (templates/admin/model/layout.html): Add Filter -> Name
    name = listed.first.locator("td").nth(2).inner_text()
    page.click("a.dropdown-toggle:text-is('Add Filter')")
    page.click(".field-filters a.filter:text-is('Name')")
    page.fill(".filters .filter-val", name)
    with page.expect_navigation():
        page.click("form.filters-form button[type=submit], #filter_form button[type=submit]")
    assert "_name_equals=" in page.url
    assert name in page.inner_text("#fs-data-list") and listed.count() >= 1

    with page.expect_navigation():
        listed.first.locator("a[href*='/details/']").first.click()
    assert path_of(page) == "/admin/data/retailer/details/"
    assert page.locator("#fs-data-details").get_attribute("data-entity") == "retailer"
    assert "Phone" in page.inner_text("#fs-masked-note")
    screenshot(page, "data-detail")
    assert watch_of(page).console_errors() == []
