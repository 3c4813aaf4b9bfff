"""Verifiable FHIR Bundle exports (fieldsync.audit.bundle): what they hold, that they verify away
from the database, that each kind of tampering with the file is named, and the CLI's
`audit export --format bundle` and `audit verify-export`."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fieldsync.audit.bundle import export_bundle, verify_bundle
from fieldsync.audit.search import count_entries, last_verification, search_entries
from fieldsync.audit.trail import AuditEvent
from fieldsync.cli import main

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((Path(__file__).parent / "fhir_r5_auditevent.schema.json").read_text())
START = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
END = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)


def _fill(audit, ref: str) -> list[int]:
    return [audit.record(AuditEvent(action="read", actor="dr-1", role="compliance", channel="rest",
                                    entity="prescription", record_ids=(str(uuid.uuid4()),), fields=("diagnosis",),
                                    subjects=(ref,), purpose="break-glass", reason="ER, patient unconscious")),
            audit.record(AuditEvent(action="auth", outcome="failure", channel="rest", detail={"reason": "expired"})),
            audit.record(AuditEvent(action="create", actor="dr-1", channel="sync", device="dev-1",
                                    entity="prescription", record_ids=("r-2",), subjects=(ref,)))]


def _chain(bundle) -> list:
    return json.loads(bundle["signature"]["extension"][0]["extension"][2]["valueString"])


def _set_chain(bundle, chain) -> None:
    bundle["signature"]["extension"][0]["extension"][2]["valueString"] = json.dumps(chain)


def test_a_bundle_holds_valid_audit_events_and_verifies(audit_log):
    ref = "sr_" + "a" * 32
    seqs = _fill(audit_log, ref)
    bundle, done = export_bundle(audit_log, start=START, end=END, subject=ref, exported_by="cole")
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "collection"
    resources = [e["resource"] for e in bundle["entry"]]
    assert [r["id"] for r in resources] == [f"fieldsync-audit-{seqs[0]}", f"fieldsync-audit-{seqs[2]}"]
    for resource in resources:
        jsonschema.validate(resource, SCHEMA, cls=jsonschema.Draft202012Validator)
    assert "patient unconscious" not in json.dumps(bundle)       # the reason stays encrypted
    assert [link[0] for link in _chain(bundle)] == list(range(seqs[0], done["checkpoint"] + 1))
    report = verify_bundle(bundle, [audit_log.local_public_key()])
    assert report.ok, report.problems
    assert report.entries == 2 and report.signed_seq == done["checkpoint"]
    [export] = [e for e in audit_log.entries() if e.action == "export"]
    assert export.actor == "cole" and export.channel == "admin" and export.detail["entries"] == 2
    assert export.seq == done["export_entry"] and export.seq <= done["checkpoint"]


def test_an_empty_period_still_verifies(audit_log):
    _fill(audit_log, "sr_b")
    bundle, done = export_bundle(audit_log, start=START, end=START + dt.timedelta(days=1), exported_by="cole")
    assert done["entries"] == 0 and "entry" not in bundle
    assert verify_bundle(bundle, [audit_log.local_public_key()]).ok


@pytest.mark.parametrize("tamper, expected", [
    (lambda b, s: b["entry"][0]["resource"].update(action="D"), "entry {0} was edited (its AuditEvent"),
    (lambda b, s: b["entry"][0]["resource"]["extension"][0]["extension"][3].update(
        valueString=b["entry"][0]["resource"]["extension"][0]["extension"][3]["valueString"].replace(
            '"dr-1"', '"dr-2"')), "entry {0} was edited (its stored row"),
    (lambda b, s: b["entry"].append(json.loads(json.dumps(b["entry"][0]))), "entry {0} appears twice"),
    (lambda b, s: _set_chain(b, [link for link in _chain(b) if link[0] != s[1]]), "the chain skips from entry"),
    (lambda b, s: _set_chain(b, _chain(b)[:-1]), "the chain does not end at the signed entry"),
    (lambda b, s: b["signature"].update(data=b["signature"]["data"][::-1]), "does not verify with the audit public"),
    (lambda b, s: b.update(type="searchset"), "not a FHIR Bundle of type collection"),
    (lambda b, s: b["signature"].pop("extension"), "has no signed audit checkpoint"),
    (lambda b, s: _set_chain(b, "[[1,2]]"), "the bundle is malformed"),
])
def test_each_tampering_with_the_file_is_named(audit_log, tamper, expected):
    seqs = _fill(audit_log, "sr_c")
    bundle, _ = export_bundle(audit_log, start=START, end=END, actor="dr-1", exported_by="cole")
    tamper(bundle, seqs)
    problems = verify_bundle(bundle, [audit_log.local_public_key()]).problems
    assert any(expected.format(seqs[0]) in p for p in problems), problems


def test_another_key_does_not_verify(audit_log):
    _fill(audit_log, "sr_d")
    bundle, _ = export_bundle(audit_log, start=START, end=END, exported_by="cole")
    assert not verify_bundle(bundle, [Ed25519PrivateKey.generate().public_key()]).ok
    assert not verify_bundle(bundle, []).ok


def test_search_newest_first_counts_and_last_verification(audit_log):
    seqs = _fill(audit_log, "sr_e")
    page, total = search_entries(audit_log, actor="dr-1", limit=1)
    assert total == 2 and [e.seq for e in page] == [seqs[2]]
    page, total = search_entries(audit_log, subject="sr_e", limit=10, offset=1)
    assert total == 2 and [e.seq for e in page] == [seqs[0]]
    assert count_entries(audit_log, action="auth", outcome="failure") == 1
    assert last_verification(audit_log) is None
    audit_log.record(AuditEvent(action="admin", actor="cole", channel="admin",
                                detail={"event": "audit_verified", "ok": True, "problems": 0}))
    assert last_verification(audit_log).actor == "cole"


def cli(phi, db_url, *args: str) -> int:
    return main(["audit", *args, "--database-url", db_url, "--data-dir", phi.state.config["DATA_DIR"]])


def test_cli_exports_a_bundle_and_verifies_it(phi_app, db_url, tmp_path, capsys):
    phi_app.audit.record(AuditEvent(action="read", actor="rep-1", channel="rest", entity="prescription"))
    out, pem = tmp_path / "audit.json", tmp_path / "audit.pem"
    assert cli(phi_app, db_url, "export", "--from", "2000-01-01", "--to", "2100-01-01", "--user", "rep-1",
               "--format", "bundle", "--output", str(out), "--defs", str(ROOT / "entity_defs")) == 0
    assert "exported 1 audit entry as bundle" in capsys.readouterr().err
    assert cli(phi_app, db_url, "public-key", "--output", str(pem)) == 0
    capsys.readouterr()
    assert cli(phi_app, db_url, "verify-export", str(out), "--public-key", str(pem)) == 0
    assert capsys.readouterr().out.startswith("the export verifies: 1 AuditEvent(s)")
    assert cli(phi_app, db_url, "verify-export", str(out)) == 0        # the local key
    capsys.readouterr()
    bundle = json.loads(out.read_text())
    bundle["entry"][0]["resource"]["recorded"] = "2001-01-01T00:00:00.000000Z"
    out.write_text(json.dumps(bundle))
    assert cli(phi_app, db_url, "verify-export", str(out), "--public-key", str(pem)) == 1
    assert "problem: entry" in capsys.readouterr().out
    assert cli(phi_app, db_url, "verify-export", str(tmp_path / "missing.json")) == 2
    [export] = [e for e in phi_app.audit.entries() if e.action == "export"]
    assert export.channel == "cli" and export.detail["format"] == "fhir-bundle"


def test_cli_verify_records_its_run_only_with_record(phi_app, db_url, capsys):
    assert cli(phi_app, db_url, "verify") == 0
    assert last_verification(phi_app.audit) is None          # a verifier writes nothing by default
    assert cli(phi_app, db_url, "verify", "--record") == 0
    run = last_verification(phi_app.audit)
    assert run.channel == "cli" and run.detail["ok"] is True and run.detail["summary"].startswith("the audit log is")
