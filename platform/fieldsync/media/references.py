"""Binding media references to who minted them and the record that holds them.

A device mints `fsmedia:<uuid>` offline (it cannot ask the server for one) and puts it in a
record. The server trusts a reference only through `fs_media`: the first write that names it
binds it to the writer's user and device and to (entity, field, record id); the first upload
request binds it to the user, device, entity and field, and the record fills in later (the upload may
overtake the push it belongs to, which is applied asynchronously). First binding wins: a
reference bound elsewhere is a field problem of the mutation that names it, and only of that
mutation (invariant 5). Why not server-issued references: docs/decisions.md, "Media references".
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Mapping

import sqlalchemy as sa

from fieldsync.defs.model import Entity
from fieldsync.defs.values import FieldProblem, is_media_ref
from fieldsync.store.sync_tables import MEDIA

__all__ = ["Claim", "MediaBindings", "NOT_ISSUED", "bound_elsewhere"]

NOT_ISSUED = ("must be a media reference the platform issued (fsmedia:<uuid>, minted by the SDK's "
              "attach_media); URLs and object keys are not accepted from devices")


@dataclass(frozen=True, slots=True)
class Claim:
    """Who names a reference, and where: `entity`/`field`/`record_id` are None for an upload
    request that comes before the record; `device_id` is None for a REST write."""

    user_id: str
    device_id: str | None
    entity: str | None = None
    field: str | None = None
    record_id: str | None = None


def bound_elsewhere(row: Mapping[str, Any], claim: Claim) -> str | None:
    """Why `claim` may not use the reference `row` binds, or None when it may. The reasons
    never say to whom the reference belongs."""
    if row["user_id"] != claim.user_id or (row["device_id"] is not None and claim.device_id is not None
                                           and row["device_id"] != claim.device_id):
        return "refers to a media object issued to another user or device"
    if claim.entity is not None and row["entity"] is not None and (
            (row["entity"], row["field"]) != (claim.entity, claim.field)
            or (claim.record_id is not None and row["record_id"] is not None and row["record_id"] != claim.record_id)):
        return "refers to a media object that belongs to another record"
    return None


class MediaBindings:
    """The media references one push batch (or one REST write) binds, checked against
    `fs_media` and against each other, written by `flush` in the caller's transaction."""

    def __init__(self, conn: sa.Connection, now: dt.datetime):
        self.conn = conn
        self.now = now
        self._rows: dict[str, dict[str, Any] | None] = {}   # ref -> its row (staged or stored), None: unbound
        self._inserts: dict[str, dict[str, Any]] = {}
        self._updates: dict[str, dict[str, Any]] = {}

    def _row(self, ref: str) -> dict[str, Any] | None:
        if ref not in self._rows:
            found = self.conn.execute(sa.select(MEDIA).where(MEDIA.c.ref == ref)).mappings().first()
            self._rows[ref] = dict(found) if found is not None else None
        return self._rows[ref]

    def check(self, entity: Entity, record_id: str, values: Mapping[str, Any], claim: Claim, *,
              devices_only_refs: bool = True) -> list[FieldProblem]:
        """A problem for each media field of `values` whose value `claim` may not hold: not a
        platform reference (from a device), or a reference bound to another user, device or
        record. Nothing is staged when there is a problem."""
        problems, staged = [], []
        for f in entity.fields:
            value = values.get(f.name)
            if f.type != "media" or value is None:
                continue
            if not is_media_ref(value):
                if devices_only_refs:
                    problems.append(FieldProblem(f.name, NOT_ISSUED))
                continue
            here = Claim(claim.user_id, claim.device_id, entity.name, f.name, record_id)
            row = self._row(value)
            reason = bound_elsewhere(row, here) if row is not None else None
            if reason is not None:
                problems.append(FieldProblem(f.name, reason))
            else:
                staged.append((value, row, here, f.phi))
        if not problems:
            for value, row, here, phi in staged:
                self._stage(value, row, here, phi)
        return problems

    def _stage(self, ref: str, row: dict[str, Any] | None, claim: Claim, phi: bool) -> None:
        binding = {"entity": claim.entity, "field": claim.field, "record_id": claim.record_id}
        if row is None:
            row = {"ref": ref, "user_id": claim.user_id, "device_id": claim.device_id, "state": "pending",
                   "phi": phi, "created_at": self.now, **binding}
            self._inserts[ref] = row
            self._rows[ref] = row
        elif row["record_id"] is None:
            row.update(binding, phi=phi)
            if claim.device_id is not None and row["device_id"] is None:
                row["device_id"] = claim.device_id
            target = self._inserts.get(ref)
            if target is None:
                self._updates[ref] = {**binding, "phi": phi, "device_id": row["device_id"]}

    def flush(self) -> None:
        """Write the staged bindings (in the caller's transaction). Two batches binding the same
        new reference at once: one insert fails, that batch rolls back and is redelivered,
        and then meets the other's binding (first binding wins)."""
        if self._inserts:
            self.conn.execute(MEDIA.insert(), list(self._inserts.values()))
        for ref, values in self._updates.items():
            self.conn.execute(MEDIA.update().where(MEDIA.c.ref == ref, MEDIA.c.record_id.is_(None)).values(**values))
        self._inserts, self._updates = {}, {}
