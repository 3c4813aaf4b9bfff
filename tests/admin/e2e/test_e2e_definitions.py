"""Scenario (1) of issue 12 §4, in the browser: an analyst logs in to the admin UI, adds an
optional field to `retailer` and a new transaction entity with the Definitions forms, reads each
plan (migration steps, YAML, OpenAPI and device schema diffs) and applies it; a field rep's
device with writes waiting in its outbox then syncs, holds the new column and table, and every
write of the outbox is delivered exactly once.

Prints the time from the click on Apply to the device holding the new column (the closing note
of issue 12 reports it). The device syncs in a loop here; on a phone its sync interval adds to it.
"""

from __future__ import annotations

import time

from tests.admin.e2e.server import PUNE_CENTRAL, ROLE_USERS
from tests.admin.e2e.ui import login, screenshot

OFFLINE_VISITS = 3


def _plan_and_apply(page, name: str) -> float:
    """On the plan page: check it is additive and shows every diff, apply, land on the new
    version's page. The perf_counter() at the click on Apply."""
    page.wait_for_selector("#fs-plan")
    assert page.locator("#fs-destructive").count() == 0
    assert page.locator("#fs-validation").count() == 0 or \
        page.locator("#fs-validation").get_attribute("data-state") != "invalid"
    for diff in ("#fs-diff-yaml", "#fs-diff-openapi", "#fs-diff-device"):
        assert page.locator(diff).inner_text().strip(), f"{diff} is empty"
    screenshot(page, name)
    clicked = time.perf_counter()
    page.click("#fs-apply")
    page.wait_for_selector("#fs-version-summary")
    assert "is live" in page.content()
    return clicked


def test_analyst_changes_the_model_in_the_ui_and_a_device_follows(server, device, page, timings):
    device.sync()
    [shop, *_] = device.client.query("retailer")
    assert not device.has_column("retailer", "email") and not device.has_table("visit_note")

    # offline: the rep records visits; they wait in the outbox through both changes
    visits = [device.write("visit", {"retailer_id": shop["id"], "territory_id": PUNE_CENTRAL,
                                     "visited_at": "2026-12-03T09:00:00Z", "purpose": "order",
                                     "notes": f"offline visit {i}"}) for i in range(OFFLINE_VISITS)]
    assert device.status().pending == OFFLINE_VISITS

    login(page, "analyst")
    page.goto("/admin/definitions/")
    page.wait_for_selector("#fs-entity-retailer")
    screenshot(page, "definitions")
    page.goto("/admin/definitions/entity/retailer")
    page.wait_for_selector("#fs-fields")
    screenshot(page, "definitions-entity")

    # (a) an optional field on retailer, through the form
    page.click("#fs-add-field")
    page.fill("#fs-field-name", "email")
    page.select_option("#fs-field-type", "string")
    page.select_option("#fs-field-required", "no")
    page.fill("#fs-field-max-length", "120")
    page.click("#fs-field-submit")
    assert "retailer.email" in page.locator("#fs-plan").inner_text()
    clicked = _plan_and_apply(page, "definitions-plan")

    seconds = device.wait_for_column("retailer", "email", since=clicked)
    print(f"\nUI apply -> device holds retailer.email: {seconds:.2f} s ({len(device.reports) - 1} sync(s))")
    timings["apply (UI) -> device holds the new column"] = seconds

    # (b) a new transaction entity, through the form
    page.goto("/admin/definitions/new-entity")
    page.fill("#fs-entity-name", "visit_note")
    page.select_option("#fs-entity-kind", "transaction")
    page.fill("#fs-entity-label", "Visit note")
    page.fill("#fs-new-field-0-name", "text")
    page.select_option("#fs-new-field-0-type", "string")
    page.select_option("#fs-new-field-0-required", "yes")
    page.fill("#fs-new-field-0-max-length", "500")
    page.fill("#fs-new-field-1-name", "rating")
    page.select_option("#fs-new-field-1-type", "integer")
    page.click("#fs-entity-submit")
    assert "visit_note" in page.locator("#fs-plan").inner_text()
    clicked = _plan_and_apply(page, "definitions-plan-entity")
    device.sync_until(lambda: device.has_table("visit_note"))
    timings["apply (UI) -> device holds the new table"] = time.perf_counter() - clicked
    assert {"text", "rating", "rep_id"} <= set(device.columns("visit_note"))

    # the next admin page is served for the new model: the Data menu has the new entity
    page.goto("/admin/data/visit_note/")
    assert page.title().lower().startswith("visit")
    page.click("text=Add Filter")     # Flask-Admin's filter menu works under the CSP (no inline handler)
    page.locator("a.filter").first.click()

    # the outbox is intact: every offline visit delivered once, none refused
    device.settle()
    assert device.status().quarantined == 0
    admin = server.login_token(ROLE_USERS["admin"])
    on_server = device.delivered("visit", visits, admin)
    assert {r["notes"] for r in on_server.values()} == {f"offline visit {i}" for i in range(OFFLINE_VISITS)}
    assert all(r["version"] == 1 for r in on_server.values())

    # both changes work both ways
    note = device.write("visit_note", {"text": "asked for a catalogue", "rating": 4})
    device.settle()
    assert device.delivered("visit_note", [note], admin)[note]["text"] == "asked for a catalogue"
    status, retailer = server.request("GET", f"/retailer/{shop['id']}", token=admin)
    assert status == 200 and "email" in retailer

    # the history names the analyst as the one who applied both versions
    page.goto("/admin/definitions/history")
    history = page.locator("#fs-history").inner_text()
    assert history.count(ROLE_USERS["analyst"]) >= 2
    screenshot(page, "definitions-history")
