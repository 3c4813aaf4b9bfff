"""Building audit events from PHI accesses: which records, which PHI fields, which subjects.

Pure functions (no Flask, no database): the REST views, the pull assembler and the push applier
describe what they showed or wrote, and these turn it into `AuditEvent`s — one per entity and
action, listing record ids, PHI field names and subject references, never a value.
`audit_pass` records the key maintenance's re-encryption passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from fieldsync.defs.model import Entity
from fieldsync.audit.trail import AuditEvent

__all__ = ["Disclosure", "DEFAULT_PURPOSE", "audit_pass", "phi_written", "read_events", "subject_ref_function",
           "write_events"]

DEFAULT_PURPOSE = "treatment"    # clinical access through REST and sync, unless the request says otherwise
_WRITE_ACTIONS = {"create": "create", "insert": "create", "update": "update", "delete": "delete"}


@dataclass(frozen=True, slots=True)
class Disclosure:
    """PHI of one record shown to someone: the PHI field names shown and the record's subject
    value (None when unknown; it becomes a reference, never stored)."""

    entity: Entity
    record_id: str
    fields: tuple[str, ...]
    subject: Any = None


def subject_ref_function(codec) -> Callable[[Any], str] | None:
    """The codec's `subject_ref` (a keyed HMAC of a subject value), None for a codec without one."""
    return getattr(codec, "subject_ref", None)


def _refs(ref: Callable[[Any], str] | None, values: Iterable[Any]) -> tuple[str, ...]:
    if ref is None:
        return ()
    out: dict[str, None] = {}
    for value in values:
        if value is not None:
            out[ref(value)] = None
    return tuple(out)


def _ordered(entity: Entity, names: Iterable[str]) -> tuple[str, ...]:
    wanted = set(names)
    return tuple(f.name for f in entity.phi_fields if f.name in wanted)


def read_events(disclosures: Iterable[Disclosure], *, codec, actor: str | None, role: str | None,
                device: str | None = None, channel: str = "rest", purpose: str | None = DEFAULT_PURPOSE,
                reason: str | None = None, detail: Mapping[str, Any] | None = None) -> list[AuditEvent]:
    """One `read` event per entity of `disclosures` that showed at least one PHI field."""
    ref = subject_ref_function(codec)
    groups: dict[str, tuple[Entity, dict[str, None], set[str], list[Any]]] = {}
    for d in disclosures:
        if not d.fields:
            continue
        entity, ids, names, subjects = groups.setdefault(d.entity.name, (d.entity, {}, set(), []))
        ids[d.record_id] = None
        names.update(d.fields)
        subjects.append(d.subject)
    return [AuditEvent(action="read", actor=actor, role=role, device=device, channel=channel, entity=name,
                       record_ids=tuple(ids), fields=_ordered(entity, names), subjects=_refs(ref, subjects),
                       purpose=purpose, reason=reason, detail=dict(detail or {}))
            for name, (entity, ids, names, subjects) in groups.items()]


def phi_written(entity: Entity, op: str, record: Mapping[str, Any], prev: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The PHI fields a write touched: set on a create, changed on an update, holding a value on
    a delete (the tombstone keeps the row, but the record's PHI leaves every device)."""
    phi = entity.phi_fields
    if op in ("create", "insert"):
        return tuple(f.name for f in phi if record.get(f.name) is not None)
    if op == "update":
        before = prev or {}
        return tuple(f.name for f in phi if record.get(f.name) != before.get(f.name))
    source = prev if prev is not None else record
    return tuple(f.name for f in phi if source.get(f.name) is not None)


def write_events(changes: Iterable[Sequence[Any]], *, codec, actor: str | None, role: str | None,
                 device: str | None = None, channel: str = "rest", purpose: str | None = DEFAULT_PURPOSE,
                 reason: str | None = None, detail: Mapping[str, Any] | None = None) -> list[AuditEvent]:
    """Events for `changes` — `(entity, op, record, prev)` as the change log takes them — one per
    entity and action, for the writes that touched PHI fields."""
    ref = subject_ref_function(codec)
    groups: dict[tuple[str, str], tuple[Entity, dict[str, None], set[str], list[Any]]] = {}
    for change in changes:
        entity, op, record = change[0], change[1], change[2]
        prev = change[3] if len(change) > 3 else None
        if not entity.phi_fields:
            continue
        names = phi_written(entity, op, record, prev)
        if not names:
            continue
        action = _WRITE_ACTIONS[op]
        _, ids, all_names, subjects = groups.setdefault((entity.name, action), (entity, {}, set(), []))
        ids[record["id"]] = None
        all_names.update(names)
        if entity.subject is not None:
            subjects.append(record.get(entity.subject) if record.get(entity.subject) is not None
                            else (prev or {}).get(entity.subject))
    return [AuditEvent(action=action, actor=actor, role=role, device=device, channel=channel, entity=name,
                       record_ids=tuple(ids), fields=_ordered(entity, names), subjects=_refs(ref, subjects),
                       purpose=purpose, reason=reason, detail=dict(detail or {}))
            for (name, action), (entity, ids, names, subjects) in groups.items()]


def audit_pass(audit, report, *, channel: str = "system") -> None:
    """Record a re-encryption pass (a `fieldsync.crypto.rotation.ReencryptReport`) in the audit
    trail: a key operation; references only."""
    audit.record(AuditEvent(action="key", actor="key-maintenance", channel=channel, detail={
        "event": "reencrypt", "rows": report.rows, "changes": report.changes,
        "destroyed": report.destroyed[:50], "still_retired": len(report.still_retired)}))
