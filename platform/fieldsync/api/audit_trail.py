"""The audit trail at the API's edge: every response or write that shows or touches PHI is
appended to the audit log first (invariant 8), and a failed append fails the request with a
503 problem (nothing written, nothing returned).

* REST writes: `RestWriteHook` is one of the RecordStore's write hooks, so the entry is appended
  inside the write's own transaction (the record and its entry commit or roll back together).
* REST reads: `audit_rest_read` records an entry before a record or a page leaves, for the PHI
  fields the role sees — unless the same request's write entry already covers that record.
* Sync: `sync_read_events` describes the PHI of a pull page, its results, a /results page or a
  push's duplicate results; the caller appends or records them before answering.

The purpose is "treatment" unless the request set `g.audit_purpose` (break-glass sets
"break-glass" and `g.audit_reason`, stored encrypted).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Mapping, Sequence

import sqlalchemy as sa
from flask import Flask, current_app, g, has_request_context

from fieldsync.api.problems import problem_response
from fieldsync.errors import AuditUnavailable, Problem, ProblemType
from fieldsync.defs.model import Entity, Permission
from fieldsync.audit.trail import AuditEvent
from fieldsync.audit.events import DEFAULT_PURPOSE, Disclosure, read_events, write_events

__all__ = ["RestWriteHook", "audit_rest_read", "register_audit", "sync_read_events"]

log = logging.getLogger("fieldsync.audit")
_WRITTEN = "_fieldsync_audited_writes"


def _purpose() -> tuple[str | None, str | None]:
    if g.get("break_glass") is not None:   # fieldsync.api.break_glass: the request's reason
        return "break-glass", g.break_glass
    return g.get("audit_purpose") or DEFAULT_PURPOSE, g.get("audit_reason")


class RestWriteHook:
    """A RecordStore write hook appending the write's audit entry in the write's transaction.

    In a request the actor is the token's user (channel "rest"); outside one (seeding, a CLI
    command) the write is the system's (channel "system", purpose "operations")."""

    def __init__(self, state):
        self.state = state

    def __call__(self, conn: sa.Connection, entity: Entity, op: str, record: dict[str, Any],
                 prev: dict[str, Any] | None = None) -> None:
        audit = self.state.audit
        if audit is None or not entity.phi_fields:
            return
        principal = g.get("principal") if has_request_context() else None
        if principal is not None:
            purpose, reason = _purpose()
            # the admin UI's data views write through the same store and set their channel
            who = {"actor": principal.user_id, "role": principal.role, "channel": g.get("audit_channel") or "rest",
                   "purpose": purpose, "reason": reason}
        else:
            who = {"actor": None, "role": None, "channel": "system", "purpose": "operations"}
        events = write_events([(entity, op, record, prev)], codec=self.state.store.codec, **who)
        if not events:
            return
        audit.append_all(conn, events)
        if principal is not None:
            g.setdefault(_WRITTEN, set()).add((entity.name, record["id"]))


def _disclosures(entity: Entity, perm: Permission, records: Iterable[Mapping[str, Any]], role: str,
                 written: set, out: list[Disclosure]) -> None:
    visible = set(entity.field_names if perm.visible is None else perm.visible)
    phi = tuple(f.name for f in entity.phi_fields if f.name in visible)
    model = g.snapshot.model
    for record in records:
        if phi and (entity.name, record.get("id")) not in written:
            shown = tuple(n for n in phi if n in record)
            if shown:
                out.append(Disclosure(entity, record["id"], shown,
                                      record.get(entity.subject) if entity.subject else None))
        for child_name in entity.children:
            child = model.entity(child_name)
            rows = record.get(child.collection)
            child_perm = child.permission(role)
            if isinstance(rows, list) and child_perm is not None and child_perm.can("read"):
                _disclosures(child, child_perm, rows, role, written, out)


def audit_rest_read(entity: Entity, perm: Permission, records: Sequence[Mapping[str, Any]]) -> None:
    """Record the PHI `records` (full wire records, before the role's columns are cut) show to
    the request's user through `perm`; AuditUnavailable when that fails, before anything is
    returned."""
    state = current_app.extensions["fieldsync"]
    if state.audit is None or not records:
        return
    principal = g.principal
    disclosures: list[Disclosure] = []
    covered = set(g.get(_WRITTEN, set()))
    if g.get("break_glass") is not None:
        # fieldsync.api.break_glass records the break-glass read of these records itself;
        # children shown with them (expand) are recorded here, with the same purpose and reason
        covered.update((entity.name, r.get("id")) for r in records)
    _disclosures(entity, perm, records, principal.role, covered, disclosures)
    if not disclosures:
        return
    purpose, reason = _purpose()
    state.audit.record_all(read_events(disclosures, codec=g.snapshot.store.codec, actor=principal.user_id,
                                       role=principal.role, channel="rest", purpose=purpose, reason=reason))


def _subjects(conn: sa.Connection, store, entity: Entity, ids: set[str]) -> dict[str, Any]:
    """The subject value of records whose subject field was not in what was sent (a patch)."""
    table = store.table(entity)
    out = {}
    ordered = sorted(ids)
    for i in range(0, len(ordered), 500):
        for row in conn.execute(sa.select(table).where(table.c.id.in_(ordered[i:i + 500]))).mappings():
            out[row["id"]] = store.to_wire_row(entity, row).get(entity.subject)
    return out


_UNSEEN = object()


def sync_read_events(conn: sa.Connection, store, principal, device_id: str | None, *,
                     changes: Iterable[Mapping[str, Any]] = (), results: Iterable[Mapping[str, Any]] = (),
                     channel: str = "pull") -> list[AuditEvent]:
    """The read events for PHI in sync answers: pull `changes` (upserts' rows, patches' fields)
    and `results` (each with its `row`), one per entity; subjects looked up on `conn` when the
    answer does not carry them."""
    model = store.model
    found: list[tuple[Entity, str, tuple[str, ...], Mapping[str, Any]]] = []
    # per entity name: the entity and its PHI field names (None: no such entity); a page holds
    # few entities and many items, and an item of an entity without PHI fields discloses none
    phi: dict[str, tuple[Entity, tuple[str, ...]] | None] = {}
    for item in list(changes) + list(results):
        name = item.get("entity")
        if not isinstance(name, str):
            continue
        known = phi.get(name, _UNSEEN)
        if known is _UNSEEN:
            known = phi[name] = ((model.entity(name), tuple(f.name for f in model.entity(name).phi_fields))
                                 if model.has_entity(name) else None)
        if known is None or not known[1]:
            continue
        values = item.get("row") if item.get("row") is not None else item.get("fields")
        if not isinstance(values, Mapping):
            continue
        entity, phi_names = known
        shown = tuple(f for f in phi_names if f in values)
        if shown:
            found.append((entity, str(item.get("id")), shown, values))
    if not found:
        return []
    missing: dict[str, set[str]] = {}
    for entity, record_id, _, values in found:
        if entity.subject and entity.subject not in values:
            missing.setdefault(entity.name, set()).add(record_id)
    looked_up = {name: _subjects(conn, store, model.entity(name), ids) for name, ids in missing.items()}
    disclosures = [Disclosure(entity, record_id, shown,
                              (values.get(entity.subject) if entity.subject in values
                               else looked_up.get(entity.name, {}).get(record_id)) if entity.subject else None)
                   for entity, record_id, shown, values in found]
    purpose, reason = _purpose() if has_request_context() else (DEFAULT_PURPOSE, None)
    return read_events(disclosures, codec=store.codec, actor=principal.user_id, role=principal.role,
                       device=device_id, channel=channel, purpose=purpose, reason=reason)


def register_audit(app: Flask, state) -> None:
    """Attach the write hook to the live record store and answer AuditUnavailable with 503."""
    hooks = state.store.write_hooks
    if not any(isinstance(h, RestWriteHook) for h in hooks):
        hooks.append(RestWriteHook(state))   # after the change log's hook: fs_position, then fs_audit_head

    @app.errorhandler(AuditUnavailable)
    def _audit_unavailable(exc: AuditUnavailable):
        log.error("audit append failed; the request was refused: %s", exc)
        return problem_response(Problem(
            ProblemType.AUDIT_UNAVAILABLE,
            "the audit trail could not record this access, so it was not done; try again later",
            headers={"Retry-After": "30"}))
