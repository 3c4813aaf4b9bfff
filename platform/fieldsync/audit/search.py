"""Reading the audit trail for people: a page of entries newest first, counts, and the newest
recorded verification run (the admin UI's audit page and dashboard; docs/audit.md). Read-only;
`AuditLog.entries` is the oldest-first stream exports and the verifier use."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa

from fieldsync.audit.chain import ENTRIES, filter_clauses
from fieldsync.audit.trail import AuditEntry, AuditEvent, AuditLog, _entry

__all__ = ["VERIFIED_EVENT", "count_entries", "filter_clauses", "last_verification", "search_entries",
           "verification_event"]

VERIFIED_EVENT = "audit_verified"   # detail event of an `admin` entry recording a verification run


def search_entries(audit: AuditLog, *, start: dt.datetime | None = None, end: dt.datetime | None = None,
                   actor: str | None = None, entity: str | None = None, subject: str | None = None,
                   action: str | None = None, limit: int = 50, offset: int = 0) -> tuple[list[AuditEntry], int]:
    """One page of the entries recorded in [start, end) matching the filters, **newest first**,
    and how many match in all. Reasons stay encrypted (`has_reason` says there is one)."""
    where = filter_clauses(start=start, end=end, actor=actor, entity=entity, subject=subject, action=action)
    with audit.snapshot() as conn:
        if subject is None:
            total = conn.execute(sa.select(sa.func.count()).select_from(ENTRIES).where(*where)).scalar_one()
            rows = conn.execute(sa.select(ENTRIES).where(*where).order_by(ENTRIES.c.seq.desc())
                                .limit(limit).offset(offset)).mappings().all()
            return [_entry(r) for r in rows], total
        # the text match can over-select: filter exactly, then page (subject searches are narrow)
        matching = [e for e in (_entry(r) for r in conn.execute(
            sa.select(ENTRIES).where(*where).order_by(ENTRIES.c.seq.desc())).mappings()) if subject in e.subjects]
        return matching[offset:offset + limit], len(matching)


def count_entries(audit: AuditLog, **filters: Any) -> int:
    """How many entries match `filters` (those of `filter_clauses`, without `subject`)."""
    with audit.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(ENTRIES)
                            .where(*filter_clauses(**filters))).scalar_one()


def verification_event(report, *, actor: str | None, role: str | None = None, channel: str) -> AuditEvent:
    """The `admin` entry recording a verification run (`report`: a VerifyReport) that
    `last_verification` finds: its result, never a value of the trail."""
    return AuditEvent(action="admin", actor=actor, role=role, channel=channel,
                      detail={"event": VERIFIED_EVENT, "ok": report.ok, "problems": len(report.problems),
                              "entries": report.entries, "summary": report.summary()})


def last_verification(audit: AuditLog) -> AuditEntry | None:
    """The newest entry recording a verification run (`admin`, detail event VERIFIED_EVENT:
    ok, problems, summary), None when no run was recorded (the admin UI's verify records one,
    `fieldsync audit verify --record` too)."""
    marker = json.dumps({"event": VERIFIED_EVENT}, separators=(",", ":"))[1:-1]   # as json_detail writes it
    with audit.engine.connect() as conn:
        for row in conn.execute(sa.select(ENTRIES).where(ENTRIES.c.action == "admin", ENTRIES.c.detail.contains(marker))
                                .order_by(ENTRIES.c.seq.desc()).limit(20)).mappings():
            entry = _entry(row)
            if entry.detail.get("event") == VERIFIED_EVENT:
                return entry
    return None
