"""Exports for a compliance officer (FHIR R5 AuditEvent NDJSON, CSV) with their filters, and the
`fieldsync audit` commands: verify, export, checkpoint, purge, public-key."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from pathlib import Path

import jsonschema
import pytest

from audit_support import fill, inserts_refused, raw, sample_event
from fieldsync.cli import main
from fieldsync.audit.trail import AuditEvent
from fieldsync.errors import AuditUnavailable
from fieldsync.audit.export import CSV_COLUMNS, export_audit, fhir_audit_event

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((Path(__file__).parent / "fhir_r5_auditevent.schema.json").read_text())
FAR_PAST, FAR_FUTURE = "2000-01-01", "2100-01-01"


def validate(resource: dict) -> None:
    jsonschema.validate(resource, SCHEMA, cls=jsonschema.Draft202012Validator)


def cli(phi, db_url, *args: str) -> int:
    data_dir = phi.state.config["DATA_DIR"]
    return main(["audit", *args, "--database-url", db_url, "--data-dir", data_dir])


# -- the FHIR shape ------------------------------------------------------------------------------

def test_every_kind_of_entry_is_a_valid_r5_audit_event(audit_log):
    audit_log.record(AuditEvent(action="read", actor="dr-1", role="compliance", device="dev-1", channel="pull",
                                entity="prescription", record_ids=("r-1", "r-2"), fields=("diagnosis",),
                                subjects=("sr_aa",), purpose="break-glass", reason="ER", detail={"count": 2}))
    audit_log.record(AuditEvent(action="auth", outcome="failure", channel="rest", detail={"reason": "expired"}))
    audit_log.record(AuditEvent(action="key", actor=None, channel="system", detail={"event": "rotate"}))
    for action in ("create", "update", "delete", "export", "admin"):
        audit_log.record(AuditEvent(action=action, actor="u", channel="cli", outcome="denied"))
    entries = list(audit_log.entries(decrypt_reasons=True))
    resources = [fhir_audit_event(e) for e in entries]
    for resource in resources:
        validate(resource)
    read, auth = resources[0], resources[1]
    assert read["action"] == "R" and read["category"][0]["coding"][0]["code"] == "110110"
    assert read["patient"] == {"identifier": {"system": "https://fieldsync.dev/subject-ref", "value": "sr_aa"}}
    assert read["agent"][0]["who"]["identifier"]["value"] == "dr-1" and read["agent"][0]["requestor"] is True
    assert read["agent"][1]["who"]["identifier"]["value"] == "dev-1"
    assert read["authorization"][0]["coding"][0]["code"] == "BTG" and "ER" in read["authorization"][0]["text"]
    whats = [e["what"].get("display") for e in read["entity"]]
    assert "prescription/r-1" in whats and "prescription/r-2" in whats
    assert auth["outcome"]["code"]["code"] == "8" and auth["category"][0]["coding"][0]["code"] == "110114"
    assert [r["action"] for r in resources[3:]] == ["C", "U", "D", "E", "E"]
    assert resources[3]["outcome"]["code"]["code"] == "4"            # denied


def test_the_schema_check_is_not_vacuous(audit_log):
    audit_log.record(sample_event(0))
    good = fhir_audit_event(next(audit_log.entries()))
    for broken in ({k: v for k, v in good.items() if k != "recorded"},
                   {**good, "action": "X"},
                   {**good, "agent": []},
                   {**good, "source": {"type": []}},
                   {**good, "recorded": "2024-03-01 12:00"}):
        with pytest.raises(jsonschema.ValidationError):
            validate(broken)


# -- export_audit: filters, auditing, failure ----------------------------------------------------

def test_export_filters_by_period_user_entity_and_subject_and_is_audited(audit_log, clock):
    audit_log.record(AuditEvent(action="read", actor="a", entity="prescription", subjects=("sr_1",)))
    clock.advance(days=1)
    start = clock.now
    audit_log.record(AuditEvent(action="read", actor="a", entity="prescription", subjects=("sr_2",)))
    audit_log.record(AuditEvent(action="read", actor="b", entity="visit"))
    audit_log.record(AuditEvent(action="create", actor="a", entity="prescription", subjects=("sr_1", "sr_2")))
    clock.advance(days=1)
    end = clock.now
    audit_log.record(AuditEvent(action="read", actor="a", entity="prescription", subjects=("sr_1",)))

    def export(**filters) -> list[int]:
        out = io.StringIO()
        export_audit(audit_log, out, fmt="fhir", start=start, end=end, exported_by="officer", **filters)
        return [int(json.loads(line)["id"].rsplit("-", 1)[1]) for line in out.getvalue().splitlines()]

    assert export() == [2, 3, 4]
    assert export(actor="a") == [2, 4]
    assert export(entity="visit") == [3]
    assert export(subject="sr_1") == [4]
    (last,) = [e for e in audit_log.entries(subject="sr_1") if e.action == "export"]
    assert last.actor == "officer" and last.channel == "cli" and last.purpose == "compliance"
    assert last.detail["entries"] == 1 and last.detail["format"] == "fhir"
    exports = [e for e in audit_log.entries() if e.action == "export"]
    assert len(exports) == 4                       # every export is itself an entry
    assert audit_log.verify().ok


def test_csv_export_withholds_reasons_unless_asked(audit_log, clock):
    start = clock.now
    audit_log.record(AuditEvent(action="read", actor="=cmd|' /C calc'!A0", purpose="break-glass",
                                reason="Patient fell", record_ids=("r-1", "r-2"), fields=("diagnosis", "patient_dob")))
    end = clock.now + dt.timedelta(seconds=1)
    out = io.StringIO()
    done = export_audit(audit_log, out, fmt="csv", start=start, end=end)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert done["entries"] == 1 and tuple(rows[0]) == CSV_COLUMNS
    assert rows[0]["record_ids"] == "r-1 r-2" and rows[0]["fields"] == "diagnosis patient_dob"
    assert rows[0]["has_reason"] == "yes" and rows[0]["reason"] == ""
    assert rows[0]["actor"].startswith("'=")        # never a live spreadsheet formula
    out = io.StringIO()
    export_audit(audit_log, out, fmt="csv", start=start, end=end, include_reasons=True)
    assert list(csv.DictReader(io.StringIO(out.getvalue())))[0]["reason"] == "Patient fell"
    assert [e.detail["include_reasons"] for e in audit_log.entries() if e.action == "export"] == [False, True]


def test_an_export_writes_nothing_when_it_cannot_be_audited(audit_log, clock):
    fill(audit_log, 3)
    out = io.StringIO()
    with inserts_refused(audit_log):
        assert len(list(audit_log.entries())) == 3          # the trail still reads
        with pytest.raises(AuditUnavailable, match="refuses writes"):
            export_audit(audit_log, out, fmt="fhir", start=clock.now - dt.timedelta(days=1),
                         end=clock.now + dt.timedelta(days=1))
    assert out.getvalue() == ""
    assert audit_log.verify().ok


# -- the CLI on a real app's trail ---------------------------------------------------------------

def _activity(phi):
    """Two patients' prescriptions written and read by two reps."""
    one, two = phi.rep_token("rep-1"), phi.rep_token("rep-2")
    p1, p2 = str(uuid.uuid4()), str(uuid.uuid4())
    a = phi.ok("POST", "/prescription", one, phi.prescription(patient_id=p1))
    b = phi.ok("POST", "/prescription", two, phi.prescription(patient_id=p2))
    phi.ok("GET", f"/prescription/{a['id']}", one)
    phi.ok("GET", f"/prescription/{b['id']}", two)
    return p1, p2, a["id"], b["id"]


def test_cli_export_fhir_for_one_patient(phi_app, db_url, tmp_path, capsys):
    p1, _, a, _ = _activity(phi_app)
    out = tmp_path / "audit.ndjson"
    assert cli(phi_app, db_url, "export", "--from", FAR_PAST, "--to", FAR_FUTURE, "--patient", p1,
               "--format", "fhir", "--output", str(out), "--defs", str(ROOT / "entity_defs")) == 0
    assert "exported 2 audit entries as fhir" in capsys.readouterr().err
    resources = [json.loads(line) for line in out.read_text().splitlines()]
    for resource in resources:
        validate(resource)
    ref = phi_app.state.store.codec.subject_ref(p1)
    assert [r["action"] for r in resources] == ["C", "R"]
    assert all(r["patient"]["identifier"]["value"] == ref for r in resources)
    assert all(r["agent"][0]["who"]["identifier"]["value"] == "rep-1" for r in resources)
    assert p1 not in out.read_text()                 # the patient is named by reference only
    export = [e for e in phi_app.entries() if e.action == "export"]
    assert len(export) == 1 and export[0].subjects == (ref,) and export[0].detail["output"] == str(out)


def test_cli_export_csv_for_one_user_and_entity(phi_app, db_url, capsys):
    _activity(phi_app)
    assert cli(phi_app, db_url, "export", "--from", FAR_PAST, "--to", FAR_FUTURE, "--user", "rep-2",
               "--entity", "prescription", "--format", "csv", "--defs", str(ROOT / "entity_defs")) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["action"], r["actor"], r["entity"]) for r in rows] == [("create", "rep-2", "prescription"),
                                                                       ("read", "rep-2", "prescription")]


def test_cli_verify_checkpoint_public_key_and_purge(phi_app, db_url, tmp_path, capsys):
    _activity(phi_app)
    assert cli(phi_app, db_url, "verify") == 0
    assert capsys.readouterr().out.startswith("the audit log is intact: entries 1 to ")
    assert cli(phi_app, db_url, "checkpoint") == 0
    line = capsys.readouterr().out.strip()
    kept = tmp_path / "kept.jsonl"
    kept.write_text(line + "\n")
    assert cli(phi_app, db_url, "public-key", "--output", str(tmp_path / "audit.pem")) == 0
    assert "BEGIN PUBLIC KEY" in (tmp_path / "audit.pem").read_text()
    assert cli(phi_app, db_url, "verify", "--checkpoints", str(kept), "--public-key", str(tmp_path / "audit.pem"),
               "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["checkpoints_verified"] >= 1
    raw(phi_app.audit, "UPDATE fs_audit_entries SET actor = 'mallory' WHERE seq = 2")
    assert cli(phi_app, db_url, "verify") == 1
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "problem: entry 2 was edited" and "NOT intact" in printed[-1]
    assert cli(phi_app, db_url, "purge", "--retention-days", "1") == 1     # refused: the log is tampered with
    assert "does not verify" in capsys.readouterr().err


def test_cli_purge_on_an_intact_trail(phi_app, db_url, capsys):
    _activity(phi_app)
    assert cli(phi_app, db_url, "purge") == 0
    assert "purged 0 audit entries" in capsys.readouterr().out   # nothing is six years old
    assert cli(phi_app, db_url, "verify") == 0
