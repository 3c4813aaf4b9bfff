"""Fleet-wide sync figures for the admin dashboard (issue 12, section 3): how many devices synced
recently, how many lag, how many mutations are quarantined. Read-only counts over the device
table, the change log's head and the dedupe ledger (store/sync_tables.py); per-device detail is
the devices page's (`fieldsync devices`, GET /api/v1/sync/devices).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa

from fieldsync.store.changelog import head_position
from fieldsync.store.sync_tables import DEVICES, LEDGER

__all__ = ["LAG_IDLE", "SYNC_WINDOW", "SyncOverview", "sync_overview"]

SYNC_WINDOW = dt.timedelta(hours=1)   # "syncing": in contact within this window
LAG_IDLE = dt.timedelta(hours=1)      # "lagging": behind the head and silent for longer than this


@dataclass(frozen=True)
class SyncOverview:
    """`syncing`: active devices in contact within SYNC_WINDOW; `lagging`: active devices whose
    applied cursor is behind the change log's head and that have not been in contact within
    LAG_IDLE (behind and not catching up: an offline tablet, a broken app); `quarantined`:
    mutations permanently rejected (ledger status `rejected`: quarantined on their device with
    the reason, invariant 5); `head`: the change log's head position."""

    syncing: int
    lagging: int
    quarantined: int
    head: int
    devices: int


def sync_overview(engine: sa.Engine, now: dt.datetime) -> SyncOverview:
    """The figures as of `now` (timezone-aware)."""
    contact_since = now - SYNC_WINDOW
    silent_before = now - LAG_IDLE
    active = DEVICES.c.status == "active"
    with engine.connect() as conn:
        head = head_position(conn)
        devices, syncing, lagging = conn.execute(sa.select(
            sa.func.count(),
            sa.func.count().filter(DEVICES.c.last_contact_at >= contact_since),
            sa.func.count().filter(DEVICES.c.acked_cursor < head, DEVICES.c.last_contact_at < silent_before),
        ).where(active)).one()
        quarantined = conn.execute(sa.select(sa.func.count()).select_from(LEDGER)
                                   .where(LEDGER.c.status == "rejected")).scalar_one()
    return SyncOverview(syncing=syncing, lagging=lagging, quarantined=quarantined, head=head, devices=devices)
