"""Where the registered devices stand, as operators see it: the admin UI's devices page and its
dashboard, read from the sync tables (store/sync_tables.py) and the change log's head.

Every function takes a connection (one read, no writes) so a page can read all its figures in
one transaction. The figures:

* cursor lag (`behind`): positions between the change log's head and the cursor the device last
  applied (`acked_cursor`);
* `unsettled`: mutations the server received (queued) and has not processed yet (fs_received);
* `rejected`: mutations the server rejected permanently, each quarantined on its device
  (invariant 5): the device row's counter, which the applier raises in the ledger's transaction;
* `pending` and `quarantined`: the device's own outbox and quarantine counts as it reported
  them with its last ack (None before its first ack).

Dashboard figures: `devices_synced_since`, `lagging_devices`, `quarantined_mutations`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Mapping

import sqlalchemy as sa

from fieldsync.store.changelog import head_position
from fieldsync.store.sync_tables import DEVICES, LEDGER, RECEIVED
from fieldsync.sync.pull import write_checkpoint

__all__ = ["LAG_QUIET_FOR", "device_overview", "device_rejections", "device_row", "devices_synced_since", "lagging_devices",
           "quarantined_mutations"]

# a device that made contact this recently is keeping up, even if writes came after its pull
LAG_QUIET_FOR = dt.timedelta(hours=1)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands datetimes back naive; they were stored in UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _reported(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def device_overview(conn: sa.Connection, device_id: str | None = None) -> dict[str, Any]:
    """Every registered device (or only `device_id`) with where it stands: `{"head": position,
    "items": [...]}`, ordered by user and registration. Each item has device_id, user_id,
    status, role, platform, app_version, schema_version (as of its last sync), registered_at,
    last_contact_at (aware UTC datetimes), acked_cursor, behind (cursor lag), last_received_seq,
    unsettled, rejected (permanent rejections so far), pending and quarantined (its last ack's
    report, None before one; `pending` counts outbox entries without a final result: pending,
    sent and received) and reported_at (text, the server time of that ack). One read of the
    devices table and of fs_received; the dedupe ledger is not read."""
    head = head_position(conn)
    query = sa.select(DEVICES).order_by(DEVICES.c.user_id, DEVICES.c.registered_at, DEVICES.c.device_id)
    received = sa.select(RECEIVED.c.device_id, sa.func.count())
    if device_id is not None:
        query = query.where(DEVICES.c.device_id == device_id)
        received = received.where(RECEIVED.c.device_id == device_id)
    rows = list(conn.execute(query).mappings())
    # fs_received holds only what is in flight: small, unlike the ledger, which is never scanned here
    unsettled = dict(conn.execute(received.group_by(RECEIVED.c.device_id)).all())
    items = []
    for r in rows:
        reported = _reported(r["reported"])
        outbox = reported.get("outbox") if isinstance(reported.get("outbox"), dict) else None
        pending = None
        if outbox is not None:
            counts = [_count(outbox.get(k)) for k in ("pending", "sent", "received")]
            pending = sum(c for c in counts if c is not None)
        items.append({
            "device_id": r["device_id"], "user_id": r["user_id"], "status": r["status"], "role": r["role"],
            "platform": r["platform"], "app_version": r["app_version"], "schema_version": r["schema_version"],
            "registered_at": _aware(r["registered_at"]), "last_contact_at": _aware(r["last_contact_at"]),
            "acked_cursor": r["acked_cursor"], "behind": max(head - r["acked_cursor"], 0),
            "last_received_seq": r["last_received_seq"], "unsettled": unsettled.get(r["device_id"], 0),
            "rejected": r["rejected"], "pending": pending, "quarantined": _count(reported.get("quarantined")),
            "reported_at": reported.get("at") if isinstance(reported.get("at"), str) else None,
        })
    return {"head": head, "items": items}


def device_rejections(conn: sa.Connection, device_id: str, limit: int = 500) -> list[dict[str, Any]]:
    """The device's permanently rejected mutations (quarantined on the device), newest seq
    first: seq, entity, record_id, op, problem (the rejection's type name), detail, errors
    ([{field, reason}]) and processed_at. The ledger holds no field values (invariant 7)."""
    rows = conn.execute(sa.select(LEDGER.c.seq, LEDGER.c.entity, LEDGER.c.record_id, LEDGER.c.op,
                                  LEDGER.c.problem, LEDGER.c.detail, LEDGER.c.errors, LEDGER.c.processed_at)
                        .where(LEDGER.c.device_id == device_id, LEDGER.c.status == "rejected")
                        .order_by(LEDGER.c.seq.desc()).limit(limit)).mappings()
    out = []
    for r in rows:
        try:
            errors = json.loads(r["errors"]) if r["errors"] else []
        except ValueError:
            errors = []
        out.append({**r, "errors": errors if isinstance(errors, list) else [],
                    "processed_at": _aware(r["processed_at"])})
    return out


def devices_synced_since(conn: sa.Connection, since: dt.datetime) -> int:
    """Active devices whose last push, pull or ack was at or after `since` (the dashboard's
    "synced in the last hour": `since` = now - 1 hour)."""
    return conn.execute(sa.select(sa.func.count()).select_from(DEVICES)
                        .where(DEVICES.c.status == "active", DEVICES.c.last_contact_at >= since)).scalar_one()


def lagging_devices(conn: sa.Connection, now: dt.datetime, *, min_behind: int = 1,
                    quiet_for: dt.timedelta = LAG_QUIET_FOR) -> int:
    """Active devices at least `min_behind` positions behind the change log's head that have
    not been in contact for `quiet_for` (default an hour): changes wait for them and they are
    not coming for them. A device that synced recently is not counted, even if writes came
    after its pull."""
    head = head_position(conn)
    return conn.execute(sa.select(sa.func.count()).select_from(DEVICES).where(
        DEVICES.c.status == "active", DEVICES.c.acked_cursor <= head - min_behind,
        DEVICES.c.last_contact_at < now - quiet_for)).scalar_one()


def quarantined_mutations(conn: sa.Connection, *, active_only: bool = True) -> int:
    """Mutations the server rejected permanently — each quarantined on its device with its
    reason (invariant 5) — summed from the devices' counters; of active devices only, unless
    `active_only` is False (a revoked device's quarantine needs no one's attention)."""
    query = sa.select(sa.func.coalesce(sa.func.sum(DEVICES.c.rejected), 0))
    if active_only:
        query = query.where(DEVICES.c.status == "active")
    return int(conn.execute(query).scalar_one())


def device_row(conn: sa.Connection, device_id: str) -> Mapping[str, Any] | None:
    """One device of `device_overview`, with its `write_checkpoint` (the pull position at which
    its own writes are visible); None when there is no such device."""
    items = device_overview(conn, device_id)["items"]
    if not items:
        return None
    return {**items[0], "write_checkpoint": write_checkpoint(conn, device_id)}
