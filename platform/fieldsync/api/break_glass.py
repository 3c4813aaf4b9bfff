"""Break-glass reads on the entity API (HIPAA 164.312(a)(2)(ii), emergency access; docs/access.md).

A role granted `break_glass: true` in an entity's permissions may send a read (GET) with the
header `X-Fieldsync-Break-Glass: <reason>`: the answer then shows every field, PHI included.
Row filters still apply. Every such request is audited with purpose "break-glass" and the
reason (which the audit log stores encrypted, as it may name a patient): granted reads with
the records and PHI fields they returned, refusals (no grant: 403; no reason: 400) too.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Mapping

from flask import current_app, g, request

from fieldsync.api.auth import audit_event, record_audit
from fieldsync.errors import Problem, ProblemType
from fieldsync.auth.tokens import Principal
from fieldsync.defs.model import Entity, Permission

__all__ = ["HEADER", "MAX_REASON", "audit_break_glass", "break_glass_reason", "widen_for_break_glass"]

HEADER = "X-Fieldsync-Break-Glass"
MAX_REASON = 500
PURPOSE = "break-glass"

log = logging.getLogger("fieldsync.auth")


def _entity_name() -> str | None:
    return (request.view_args or {}).get("name")


def _audit(outcome: str, principal: Principal, reason: str | None, *, entity: str | None = None,
           record_ids: tuple[str, ...] = (), fields: tuple[str, ...] = (), subjects: tuple[str, ...] = (),
           detail: Mapping[str, Any] | None = None) -> None:
    event = audit_event(action="read", outcome=outcome, actor=principal.user_id, role=principal.role,
                        channel="rest", entity=entity, record_ids=record_ids, fields=fields,
                        subjects=subjects, purpose=PURPOSE, reason=reason,
                        detail={"source_ip": request.remote_addr or "unknown", **(detail or {})})
    if outcome == "success":
        record_audit(event)   # a failure propagates: the PHI is not returned (invariant 8)
        return
    try:
        record_audit(event)
    except Exception:   # the request is refused anyway; keep its 400/403 and log the gap
        log.exception("the audit log refused a break-glass refusal")


def break_glass_reason(principal: Principal) -> str | None:
    """The request's break-glass reason; None when the header is absent. A blank or too long
    reason, or the header on anything but a read, is 400 (audited)."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    reason = raw.strip()
    problem = None
    if request.method not in ("GET", "HEAD"):
        problem = f"{HEADER} applies to reads (GET) only, not {request.method}"
    elif not reason:
        problem = f"{HEADER} needs a reason: why this emergency access is needed"
    elif len(reason) > MAX_REASON:
        problem = f"the {HEADER} reason is longer than {MAX_REASON} characters"
    if problem is not None:
        _audit("failure", principal, reason or None, entity=_entity_name(),
               detail={"event": "break_glass_refused", "why": "bad_request"})
        raise Problem(ProblemType.BREAK_GLASS_REASON, problem)
    return reason


def widen_for_break_glass(entity: Entity, perm: Permission, reason: str) -> Permission:
    """`perm` with every field visible, when the role holds the grant; 403 (audited) otherwise."""
    principal: Principal = g.principal
    if not perm.break_glass:
        _audit("denied", principal, reason, entity=entity.name,
               detail={"event": "break_glass_refused", "why": "no_grant"})
        raise Problem(ProblemType.BREAK_GLASS_NOT_GRANTED,
                      f"role {principal.role!r} has no break-glass access to {entity.name} records")
    return dataclasses.replace(perm, visible=None)


def audit_break_glass(entity: Entity, records: Iterable[Mapping[str, Any]], reason: str) -> None:
    """Audit a granted break-glass read of `records` (ids, PHI field names, subject references;
    never values). Raises when the audit log cannot take it: then nothing is returned."""
    records = list(records)
    codec = getattr(current_app.extensions["fieldsync"].store, "codec", None)
    subject_ref = getattr(codec, "subject_ref", None)
    subjects: list[str] = []
    if entity.subject and subject_ref is not None:
        for r in records:
            value = r.get(entity.subject)
            if value is not None:
                ref = subject_ref(str(value))
                if ref not in subjects:
                    subjects.append(ref)
    _audit("success", g.principal, reason, entity=entity.name,
           record_ids=tuple(str(r["id"]) for r in records), fields=tuple(f.name for f in entity.phi_fields),
           subjects=tuple(subjects), detail={"event": "break_glass_read", "count": len(records)})
