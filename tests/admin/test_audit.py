"""The audit page of the admin UI: who sees it, search, verification, verifiable exports."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from pathlib import Path

import jsonschema
import pytest

from fieldsync.audit.bundle import verify_bundle
from fieldsync.audit.chain import ENTRIES
from fieldsync.audit.trail import AuditEvent
from tests.admin.conftest import ROLE_USERS, AdminClient

# most tests on SQLite; those running the page's own SQL (search, export) on PostgreSQL too
sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

PAGE = "/admin/audit/"
SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "audit" / "fhir_r5_auditevent.schema.json").read_text())


def _state(app):
    return app.extensions["fieldsync"]


def _record(app, n: int = 1, **fields) -> list[int]:
    audit = _state(app).audit
    fields.setdefault("action", "read")
    return [audit.record(AuditEvent(**fields)) for _ in range(n)]


def _entries(app, **where) -> list:
    return [e for e in _state(app).audit.entries() if all(getattr(e, k) == v for k, v in where.items())]


def _seqs(client, response) -> list[int]:
    import re
    return [int(s) for s in re.findall(r'class="fs-audit-entry" data-seq="(\d+)"', client.text(response))]


@sqlite_only
@pytest.mark.parametrize("role", ["compliance", "admin"])
def test_compliance_and_admin_see_the_audit_page(browser_as, role):
    client = browser_as(role)
    page = client.get(PAGE)
    assert page.status_code == 200, client.text(page)
    html = client.text(page)
    for element in ("fs-audit-from", "fs-audit-to", "fs-audit-search", "fs-audit-results", "fs-audit-verify",
                    "fs-export-fhir", "fs-export-csv"):
        assert f'id="{element}"' in html, element


@sqlite_only
def test_others_are_refused(browser_as, admin_app):
    assert browser_as("analyst").get(PAGE).status_code == 403
    anonymous = AdminClient(admin_app).get(PAGE)
    assert anonymous.status_code == 302 and "/admin/login" in anonymous.headers["Location"]


def test_entries_are_listed_newest_first_and_paged(browser_as, admin_app):
    from fieldsync_admin.audit import PAGE_SIZE
    seqs = _record(admin_app, PAGE_SIZE + 5, actor="nurse-1", entity="visit")
    client = browser_as("compliance")
    first = client.get(PAGE, query_string={"user": "nurse-1"})
    shown = _seqs(client, first)
    assert shown == sorted(seqs, reverse=True)[:PAGE_SIZE]
    assert f"{PAGE_SIZE + 5} entries" in client.text(first) and 'id="fs-audit-next"' in client.text(first)
    second = client.get(PAGE, query_string={"user": "nurse-1", "page": 2})
    assert _seqs(client, second) == sorted(seqs, reverse=True)[PAGE_SIZE:]


def test_search_by_user_entity_patient_and_period(browser_as, admin_app):
    codec = _state(admin_app).store.codec
    ref = codec.subject_ref("patient-77")
    [by_user] = _record(admin_app, actor="nurse-2")
    [by_entity] = _record(admin_app, actor="other", entity="prescription")
    [by_patient] = _record(admin_app, actor="other", subjects=(ref,))
    client = browser_as("compliance")
    assert _seqs(client, client.get(PAGE, query_string={"user": "nurse-2"})) == [by_user]
    assert _seqs(client, client.get(PAGE, query_string={"entity": "prescription"})) == [by_entity]
    assert _seqs(client, client.get(PAGE, query_string={"patient": "patient-77"})) == [by_patient]
    assert _seqs(client, client.get(PAGE, query_string={"patient": ref})) == [by_patient]
    today = _state(admin_app).audit.clock().date()
    inside = client.get(PAGE, query_string={"user": "nurse-2", "from": today.isoformat(), "to": today.isoformat()})
    assert _seqs(client, inside) == [by_user]
    before = (today - dt.timedelta(days=3)).isoformat()
    outside = client.get(PAGE, query_string={"user": "nurse-2", "from": before, "to": before})
    assert _seqs(client, outside) == []


def test_a_bad_date_is_a_message_not_an_error(browser_as):
    client = browser_as("compliance")
    page = client.get(PAGE, query_string={"from": "yesterday"})
    assert page.status_code == 400 and "is not a date" in client.text(page)
    reversed_ = client.get(PAGE, query_string={"from": "2026-02-02", "to": "2026-01-01"})
    assert reversed_.status_code == 400 and "before" in client.text(reversed_)
    for name in ("user", "entity", "patient"):
        assert client.get(PAGE, query_string={name: "a\x00b"}).status_code == 400
    assert client.get(PAGE, query_string={"page": "-3"}).status_code == 200
    assert client.get(PAGE, query_string={"page": "9" * 40}).status_code == 200
    assert client.get(PAGE, query_string={"to": "9999-12-31"}).status_code == 400
    assert client.post(PAGE + "export/fhir", data={"to": "9999-12-31"}).status_code == 302


@sqlite_only
def test_verify_shows_intact_and_is_recorded(browser_as, admin_app):
    _record(admin_app, 3)
    client = browser_as("compliance")
    page = client.post(PAGE + "verify")
    html = client.text(page)
    assert page.status_code == 200 and 'id="fs-verify-result"' in html and 'data-ok="true"' in html
    assert "the audit log is intact" in html
    [run] = [e for e in _entries(admin_app, action="admin") if e.detail.get("event") == "audit_verified"]
    assert run.actor == ROLE_USERS["compliance"] and run.channel == "admin" and run.detail["ok"] is True


@sqlite_only
def test_verify_names_a_tampered_entry(browser_as, admin_app):
    seqs = _record(admin_app, 4, actor="nurse-3")
    with _state(admin_app).engine.begin() as conn:   # someone edits an entry in the database
        conn.execute(ENTRIES.update().where(ENTRIES.c.seq == seqs[1]).values(actor="someone-else"))
    client = browser_as("admin")
    html = client.text(client.post(PAGE + "verify"))
    assert 'data-ok="false"' in html
    assert f"problem: entry {seqs[1]} was edited" in html
    [run] = [e for e in _entries(admin_app, action="admin") if e.detail.get("event") == "audit_verified"]
    assert run.detail["ok"] is False and run.detail["problems"] >= 1


def _download_bundle(client, **filters):
    response = client.post(PAGE + "export/fhir", data=filters)
    assert response.status_code == 200, client.text(response)
    assert "attachment" in response.headers["Content-Disposition"]
    return json.loads(client.text(response))


def test_fhir_bundle_download_is_audited_and_verifies(browser_as, admin_app):
    seqs = _record(admin_app, 3, actor="nurse-4", entity="visit")
    _record(admin_app, 2, actor="someone")   # left out by the filter, inside the chain
    client = browser_as("compliance")
    bundle = _download_bundle(client, user="nurse-4")
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    events = [item["resource"] for item in bundle["entry"]]
    assert [e["id"] for e in events] == [f"fieldsync-audit-{s}" for s in seqs]
    for event in events:
        jsonschema.validate(event, SCHEMA, cls=jsonschema.Draft202012Validator)
    key = _state(admin_app).audit.local_public_key()
    report = verify_bundle(bundle, [key])
    assert report.ok, report.problems
    assert report.entries == 3
    [export] = _entries(admin_app, action="export")
    assert (export.actor, export.role, export.channel) == (ROLE_USERS["compliance"], "compliance", "admin")
    assert export.detail["entries"] == 3 and export.detail["user_filter"] == "nurse-4"


@sqlite_only
def test_an_edited_bundle_does_not_verify(browser_as, admin_app):
    seqs = _record(admin_app, 3, actor="nurse-5")
    bundle = _download_bundle(browser_as("compliance"), user="nurse-5")
    key = _state(admin_app).audit.local_public_key()
    edited = json.loads(json.dumps(bundle))
    edited["entry"][1]["resource"]["agent"][0]["who"]["display"] = "someone-else"
    assert f"entry {seqs[1]} was edited (its AuditEvent does not match the stored entry)" in \
        verify_bundle(edited, [key]).problems
    dropped = json.loads(json.dumps(bundle))
    chain_ext = dropped["signature"]["extension"][0]["extension"]
    chain = json.loads(chain_ext[2]["valueString"])
    chain_ext[2]["valueString"] = json.dumps([link for link in chain if link[0] != seqs[1]])
    assert any("the chain skips" in p for p in verify_bundle(dropped, [key]).problems)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    assert not verify_bundle(bundle, [Ed25519PrivateKey.generate().public_key()]).ok


@sqlite_only
def test_a_downloaded_bundle_verifies_when_uploaded(browser_as, admin_app):
    _record(admin_app, 2, actor="nurse-6")
    client = browser_as("compliance")
    bundle = _download_bundle(client, user="nurse-6")
    ok = client.post(PAGE + "verify-file", data={"file": (io.BytesIO(json.dumps(bundle).encode()), "export.json")},
                     content_type="multipart/form-data")
    assert 'id="fs-verify-file-result"' in client.text(ok) and "the export verifies" in client.text(ok)
    bundle["entry"][0]["resource"]["recorded"] = "2020-01-01T00:00:00.000000Z"
    bad = client.post(PAGE + "verify-file", data={"file": (io.BytesIO(json.dumps(bundle).encode()), "export.json")},
                      content_type="multipart/form-data")
    assert "does NOT verify" in client.text(bad)
    junk = client.post(PAGE + "verify-file", data={"file": (io.BytesIO(b"\xff not json"), "x.json")},
                       content_type="multipart/form-data")
    assert junk.status_code == 400


@sqlite_only
def test_csv_download_is_audited(browser_as, admin_app):
    seqs = _record(admin_app, 2, actor="nurse-7", entity="visit")
    client = browser_as("admin")
    response = client.post(PAGE + "export/csv", data={"entity": "visit"})
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(client.text(response))))
    assert [int(r["seq"]) for r in rows] == seqs
    [export] = _entries(admin_app, action="export")
    assert (export.actor, export.role, export.channel) == (ROLE_USERS["admin"], "admin", "admin")
    assert export.detail["format"] == "csv"


@sqlite_only
def test_posts_without_csrf_are_refused(browser_as, admin_app):
    client = browser_as("compliance")
    for path in ("verify", "export/fhir", "export/csv"):
        assert client.post(PAGE + path, csrf=False).status_code == 400
    assert _entries(admin_app, action="export") == []


@sqlite_only
def test_analyst_cannot_export(browser_as, admin_app):
    client = browser_as("analyst")
    assert client.post(PAGE + "export/fhir").status_code == 403
    assert _entries(admin_app, action="export") == []


@sqlite_only
def test_public_key_download(browser_as):
    client = browser_as("compliance")
    response = client.get(PAGE + "public-key")
    assert response.status_code == 200 and "BEGIN PUBLIC KEY" in client.text(response)

