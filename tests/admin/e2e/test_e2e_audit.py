"""Scenario (3) of issue 12 §4 in a real browser: a compliance officer opens Audit, searches
today's entries, verifies the trail, exports the period as a FHIR bundle that verifies on its
own — with `fieldsync audit verify-export` and the server's public key, and by uploading it on
the page — finds the export itself in the trail, and downloads the same period as CSV.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import urllib.parse

from tests.admin.e2e.server import ROLE_USERS
from tests.admin.e2e.ui import login, screenshot

COMPLIANCE = ROLE_USERS["compliance"]


def search(page, **fields: str) -> None:
    """Fill the search form's fields (id suffix -> value) and press Search."""
    for name, value in fields.items():
        page.fill(f"#fs-audit-{name}", value)
    with page.expect_navigation():
        page.click("#fs-audit-search")


def download(page, button: str, folder):
    """Press `button` (a form POST answered with an attachment); the saved file's path."""
    with page.expect_download() as info:
        page.click(button)
    done = info.value
    assert done.failure() is None, done.failure()
    target = folder / done.suggested_filename
    done.save_as(target)
    return target


def test_a_compliance_officer_searches_verifies_and_exports_a_verifiable_period(server, page, tmp_path):
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    login(page, "compliance")
    with page.expect_navigation():
        page.click("nav a:text-is('Audit')")
    assert urllib.parse.urlsplit(page.url).path == "/admin/audit/"

    # today's entries (the users were added and have logged in today)
    search(page, **{"from": today, "to": today})
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(page.url).query)
    assert (query["from"], query["to"]) == ([today], [today])
    rows = page.locator("#fs-audit-results tr.fs-audit-entry")
    assert rows.count() > 0
    count = page.inner_text("#fs-audit-count")
    total = int(count.split()[0])
    assert total >= rows.count() and "newest first" in count
    seqs = [int(s) for s in page.eval_on_selector_all("#fs-audit-results tr.fs-audit-entry",
                                                      "rows => rows.map(r => r.dataset.seq)")]
    assert seqs == sorted(seqs, reverse=True)
    assert all(day.startswith(today) for day in rows.locator("td:nth-child(2)").all_inner_texts())
    assert "login" in page.inner_text("#fs-audit-results")

    # verify the trail: intact, and the filters stay
    with page.expect_navigation():
        page.click("#fs-audit-verify")
    result = page.locator("#fs-verify-result")
    assert result.get_attribute("data-ok") == "true", result.inner_text()
    assert "the audit log is intact" in result.inner_text()
    assert page.input_value("#fs-audit-from") == today and page.input_value("#fs-audit-to") == today
    screenshot(page, "audit")

    # the period as a FHIR bundle
    bundle_path = download(page, "#fs-export-fhir", tmp_path)
    assert bundle_path.name == f"fieldsync-audit-{today}-to-{today}.json"
    bundle = json.loads(bundle_path.read_text("utf-8"))
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "collection")
    events = [e["resource"] for e in bundle["entry"]]
    assert events and {e["resourceType"] for e in events} == {"AuditEvent"}
    assert len(events) >= total

    # it verifies on its own: the CLI with the server's public key ...
    key = tmp_path / "audit.pem"
    key.write_text(server.cli("audit", "public-key").stdout)
    assert key.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    checked = server.cli("audit", "verify-export", str(bundle_path), "--public-key", str(key), check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "problem" not in checked.stdout
    # ... and uploaded on the page
    page.set_input_files("#fs-verify-file-input", str(bundle_path))
    with page.expect_navigation():
        page.click("#fs-verify-file")
    uploaded = page.locator("#fs-verify-file-result")
    assert uploaded.get_attribute("data-ok") == "true", uploaded.inner_text()
    # an edited copy does not (the check can fail)
    edited = json.loads(bundle_path.read_text("utf-8"))
    edited["entry"][0]["resource"]["action"] = "D" if edited["entry"][0]["resource"].get("action") != "D" else "R"
    edited_path = tmp_path / "edited.json"
    edited_path.write_text(json.dumps(edited))
    refused = server.cli("audit", "verify-export", str(edited_path), "--public-key", str(key), check=False)
    assert refused.returncode == 1 and "problem: " in refused.stdout

    # the CSV of the same period
    page.goto(f"/admin/audit/?from={today}&to={today}")
    csv_path = download(page, "#fs-export-csv", tmp_path)
    assert csv_path.name == f"fieldsync-audit-{today}-to-{today}.csv"
    table = list(csv.DictReader(io.StringIO(csv_path.read_text("utf-8"))))
    assert len(table) >= total and {"seq", "action"} <= set(table[0])

    # both exports are in the trail, by the compliance officer, on the admin channel
    search(page, **{"from": today, "to": today, "user": COMPLIANCE})
    exports = page.locator("#fs-audit-results tr.fs-audit-entry:has(td:nth-child(3):text-is('export'))")
    assert exports.count() == 2
    for row in exports.all():
        cells = row.locator("td").all_inner_texts()
        assert (cells[4], cells[5], cells[6]) == (COMPLIANCE, "compliance", "admin")
    details = " ".join(exports.locator("td:nth-child(14)").all_inner_texts())
    assert "csv" in details and ("fhir" in details or "bundle" in details), details
