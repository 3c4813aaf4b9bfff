"""Audit trail exports for a compliance officer: FHIR R5 AuditEvent resources as NDJSON, or CSV.

An export is itself a PHI-related access and is audited: `export_audit` counts the matching
entries, records the `export` entry (who, filters, format, count), and only then writes them —
up to the last entry counted, so the export's own entry and anything newer are not in it.

FHIR mapping (R5, https://hl7.org/fhir/R5/auditevent.html), one resource per entry:

    category        DICOM audit event id: 110110 Patient Record (read/create/update/delete),
                    110106 Export, 110114 User Authentication, 110100 Application Activity
    code            fieldsync's event code `<channel>.<action>` (+ the RESTful interaction for REST)
    action          C create, R read, U update, D delete, E export, auth, key and admin
    recorded        the entry's time (instant, UTC)
    outcome         audit-event-outcome 0 success, 4 denied (minor failure), 8 failure
    authorization   the purpose of use (v3-ActReason: TREAT, HOPERAT, BTG, ...)
    agent           the user (requestor, with role) and the device, when there is one
    source          this fieldsync server (security-source-type 4, application server)
    entity          each record (`<entity>/<id>`, with the PHI field names) and each subject
    patient         the subject reference, when the entry concerns exactly one subject

Subject references (`codec.subject_ref`) stand in for patients: the export names no patient.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from typing import Any, Iterable, Iterator, TextIO

from fieldsync.audit.chain import iso
from fieldsync.audit.trail import AuditEntry, AuditEvent, AuditLog

__all__ = ["CSV_COLUMNS", "FORMATS", "export_audit", "fhir_audit_event", "write_csv", "write_fhir"]

FORMATS = ("fhir", "csv")
BASE = "https://fieldsync.dev/fhir"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
_CATEGORY = {
    "read": ("110110", "Patient Record"), "create": ("110110", "Patient Record"),
    "update": ("110110", "Patient Record"), "delete": ("110110", "Patient Record"),
    "export": ("110106", "Export"), "auth": ("110114", "User Authentication"),
    "key": ("110100", "Application Activity"), "admin": ("110100", "Application Activity"),
}
_ACTION = {"create": "C", "read": "R", "update": "U", "delete": "D",
           "export": "E", "auth": "E", "key": "E", "admin": "E"}
_RESTFUL = {"read": "read", "create": "create", "update": "update", "delete": "delete"}
_OUTCOME = {"success": ("0", "Success"), "denied": ("4", "Minor failure"), "failure": ("8", "Serious failure")}
_PURPOSE = {"treatment": "TREAT", "operations": "HOPERAT", "break-glass": "BTG", "payment": "HPAYMT",
            "research": "HRESCH", "compliance": "HCOMPL"}
CSV_COLUMNS = ("seq", "recorded_at", "action", "outcome", "actor", "role", "device", "channel", "entity",
               "record_ids", "fields", "subjects", "purpose", "has_reason", "reason", "detail", "entry_hash")


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def _identifier(kind: str, value: str) -> dict[str, Any]:
    return {"system": f"https://fieldsync.dev/{kind}", "value": value}


def fhir_audit_event(entry: AuditEntry, *, server: str = "fieldsync") -> dict[str, Any]:
    """The FHIR R5 AuditEvent resource of one entry (see the module docstring for the mapping)."""
    cat_code, cat_display = _CATEGORY[entry.action]
    code = [_coding(f"{BASE}/CodeSystem/audit-event", f"{entry.channel}.{entry.action}",
                    f"{entry.action} through {entry.channel}")]
    if entry.channel == "rest" and entry.action in _RESTFUL:
        code.append(_coding("http://hl7.org/fhir/restful-interaction", _RESTFUL[entry.action]))
    outcome_code, outcome_display = _OUTCOME[entry.outcome]
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"fieldsync-audit-{entry.seq}",
        "category": [{"coding": [_coding(DCM, cat_code, cat_display)]}],
        "code": {"coding": code, "text": f"{entry.action} ({entry.channel})"},
        "action": _ACTION[entry.action],
        "severity": "informational" if entry.outcome == "success" else "warning",
        "occurredDateTime": iso(entry.recorded_at),
        "recorded": iso(entry.recorded_at),
        "outcome": {"code": _coding("http://terminology.hl7.org/CodeSystem/audit-event-outcome", outcome_code,
                                    outcome_display)},
    }
    if entry.outcome != "success":
        resource["outcome"]["detail"] = [{"text": entry.outcome}]
    purpose = None
    if entry.purpose:
        purpose = {"text": entry.purpose + (f": {entry.reason}" if entry.reason else "")}
        if entry.purpose in _PURPOSE:
            purpose["coding"] = [_coding("http://terminology.hl7.org/CodeSystem/v3-ActReason", _PURPOSE[entry.purpose])]
        resource["authorization"] = [purpose]
    user: dict[str, Any] = {
        "type": {"coding": [_coding("http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                                    "humanuser" if entry.actor else "dataprocessor")]},
        "who": ({"identifier": _identifier("users", entry.actor), "display": entry.actor} if entry.actor
                else {"identifier": _identifier("servers", server), "display": "fieldsync"}),
        "requestor": True,
    }
    if entry.role:
        user["role"] = [{"text": entry.role}]
    if purpose is not None:
        user["authorization"] = [purpose]
    resource["agent"] = [user]
    if entry.device:
        resource["agent"].append({"type": {"coding": [_coding(DCM, "110150", "Application")]},
                                  "who": {"identifier": _identifier("devices", entry.device)}, "requestor": False})
    resource["source"] = {"observer": {"identifier": _identifier("servers", server), "display": "fieldsync"},
                          "type": [{"coding": [_coding("http://terminology.hl7.org/CodeSystem/security-source-type",
                                                       "4", "Application Server")]}]}
    entities: list[dict[str, Any]] = []
    for record_id in entry.record_ids:
        item: dict[str, Any] = {
            "what": {"identifier": _identifier(f"entities/{entry.entity}", record_id),
                     "display": f"{entry.entity}/{record_id}"},
            "role": {"coding": [_coding("http://terminology.hl7.org/CodeSystem/object-role", "4", "Domain Resource")]}}
        if entry.fields:
            item["detail"] = [{"type": {"text": "phi-fields"}, "valueString": ",".join(entry.fields)}]
        entities.append(item)
    for ref in entry.subjects:
        entities.append({"what": {"identifier": _identifier("subject-ref", ref)},
                         "role": {"coding": [_coding("http://terminology.hl7.org/CodeSystem/object-role", "1",
                                                     "Patient")]}})
    if entry.detail:
        entities.append({"what": {"display": "event detail"},
                         "detail": [{"type": {"text": str(k)},
                                     "valueString": v if isinstance(v, str) else json.dumps(v, sort_keys=True)}
                                    for k, v in sorted(entry.detail.items())]})
    if entities:
        resource["entity"] = entities
    if len(entry.subjects) == 1:
        resource["patient"] = {"identifier": _identifier("subject-ref", entry.subjects[0])}
    resource["extension"] = [{"url": f"{BASE}/StructureDefinition/audit-chain", "extension": [
        {"url": "seq", "valueString": str(entry.seq)}, {"url": "entryHash", "valueString": entry.entry_hash}]}]
    return resource


def write_fhir(entries: Iterable[AuditEntry], out: TextIO, *, server: str = "fieldsync") -> int:
    """Write one AuditEvent resource per line (NDJSON); returns how many."""
    n = 0
    for entry in entries:
        out.write(json.dumps(fhir_audit_event(entry, server=server), separators=(",", ":"), sort_keys=True))
        out.write("\n")
        n += 1
    return n


def _cell(value: Any) -> str:
    """A CSV cell; a leading = + - @ is quoted away so a spreadsheet never runs it as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_csv(entries: Iterable[AuditEntry], out: TextIO) -> int:
    """Write the entries as CSV with a header row (lists space-separated); returns how many."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    n = 0
    for e in entries:
        writer.writerow([_cell(v) for v in (
            e.seq, iso(e.recorded_at), e.action, e.outcome, e.actor, e.role, e.device, e.channel, e.entity,
            " ".join(e.record_ids), " ".join(e.fields), " ".join(e.subjects), e.purpose,
            "yes" if e.has_reason else "no", e.reason, json.dumps(dict(e.detail), sort_keys=True), e.entry_hash)])
        n += 1
    return n


def export_audit(audit: AuditLog, out: TextIO, *, fmt: str, start: dt.datetime, end: dt.datetime,
                 actor: str | None = None, entity: str | None = None, subject: str | None = None,
                 include_reasons: bool = False, exported_by: str | None = None, destination: str = "stdout",
                 server: str = "fieldsync", channel: str = "cli", exported_role: str | None = None) -> dict[str, Any]:
    """Export the entries recorded in [start, end) matching the filters to `out`, after recording
    the export itself on `channel` by `exported_by` (with their role `exported_role`, when known:
    the admin UI's user) (AuditUnavailable: nothing is written). Returns what was exported."""
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r} is not one of {', '.join(FORMATS)}")
    if end <= start:
        raise ValueError("the export period is empty: --to must be after --from")
    filters = {"start": start, "end": end, "actor": actor, "entity": entity, "subject": subject}
    count, through = 0, 0
    for e in audit.entries(**filters):
        count, through = count + 1, e.seq
    detail = {"event": "audit-export", "format": fmt, "from": iso(start), "to": iso(end), "entries": count,
              "through_seq": through, "include_reasons": include_reasons, "output": destination}
    if actor is not None:
        detail["user_filter"] = actor
    seq = audit.record(AuditEvent(action="export", actor=exported_by, role=exported_role, channel=channel,
                                  entity=entity, subjects=(subject,) if subject else (), purpose="compliance",
                                  detail=detail))
    selected: Iterator[AuditEntry] = (e for e in audit.entries(**filters, decrypt_reasons=include_reasons)
                                      if e.seq <= through)
    written = write_fhir(selected, out, server=server) if fmt == "fhir" else write_csv(selected, out)
    return {"entries": written, "through_seq": through, "export_entry": seq}
