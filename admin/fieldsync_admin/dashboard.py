"""The admin UI's first page: how the platform is doing, at a glance (docs/admin.md). Every
admin role sees it. Eight figures, each read when the page is
shown (no cache), as of the server's clock:

* `syncing`: active devices in contact within the last hour; `lagging`: active devices behind the
  change log's head and silent for more than an hour; `quarantined`: mutations permanently
  rejected, of active devices (fieldsync.sync.overview, shared with the devices page);
* `queue-depth`: messages waiting in the sync queue (visible; in flight and dead letters beside
  it), as `fieldsync workers status` reports it;
* `failed-logins`: audit entries `auth` with outcome `failure` in the last 24 hours (REST, sync
  and admin logins alike);
* `last-verification`: the newest recorded verification run of the audit trail (the audit page's
  "Verify" records one) with its result;
* `push-spool`: push batches held in the database during a queue outage, and the oldest one's
  age; `dependencies`: the database, queue, key provider and object store this process finds
  degraded or down (docs/operations.md "Outages").
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from flask_admin import AdminIndexView, expose

from fieldsync.audit.search import count_entries, last_verification
from fieldsync.dependencies import DEGRADED, DOWN, call_within, describe_error
from fieldsync.workers.fleet import QUEUE_READ_SECONDS
from fieldsync.sync.overview import LAG_QUIET_FOR, devices_synced_since, lagging_devices, quarantined_mutations
from fieldsync_admin.security import ADMIN_ROLES, RoleView, state

__all__ = ["DashboardView", "FAILED_LOGIN_WINDOW", "Figure", "figures"]

FAILED_LOGIN_WINDOW = dt.timedelta(hours=24)
SYNC_WINDOW = dt.timedelta(hours=1)
log = logging.getLogger("fieldsync.admin")


@dataclass(frozen=True)
class Figure:
    """One figure of the dashboard: its stable name (the element id is `fs-fig-<name>`), label,
    value, a line of detail and a Bootstrap colour for a figure that needs attention."""

    name: str
    label: str
    value: Any
    detail: str = ""
    alert: str = ""


def _queue_figure() -> Figure:
    sync = state().sync
    try:   # bounded: a broker out of reach must not take the dashboard down with it
        depth = call_within(QUEUE_READ_SECONDS, lambda: sync.queue.depth(), "the push queue")
    except Exception as exc:
        log.warning("the sync queue's depth could not be read: %s", describe_error(exc))
        return Figure("queue-depth", "Queue depth", "unavailable", "the queue did not answer", "warning")
    shown = "?" if depth.visible is None else depth.visible
    detail = (f"in flight {'?' if depth.in_flight is None else depth.in_flight}, "
              f"dead letters {'?' if depth.dead is None else depth.dead}")
    return Figure("queue-depth", "Queue depth", shown, detail, "warning" if depth.dead else "")


def _dependencies_figure() -> Figure:
    """The dependencies this process finds failing (fieldsync.dependencies), else "all up"."""
    failing = [s for s in state().dependencies.snapshot().values() if s.state in (DEGRADED, DOWN)]
    if not failing:
        return Figure("dependencies", "Dependencies", "all up", "database, queue, keys, object store")
    worst = "danger" if any(s.state == DOWN for s in failing) else "warning"
    return Figure("dependencies", "Dependencies", ", ".join(f"{s.name} {s.state}" for s in failing),
                  "; ".join(f"{s.name}: {s.error} (since {s.to_dict()['since']})" for s in failing), worst)


def _spool_figure() -> Figure:
    """Push batches held in the database while the queue was out (sync/spool.py)."""
    depth = state().sync.spool_depth()
    if depth is None:
        return Figure("push-spool", "Push spool", "off", "no spool: QUEUE_ENCRYPTION sealer missing")
    shown = depth.to_dict()
    detail = (f"{shown['devices']} device(s), oldest {shown['oldest_age_seconds']:g} s"
              if depth.batches else "empty: every received push is in the queue")
    return Figure("push-spool", "Push spool", depth.batches, detail, "warning" if depth.batches else "")


def figures() -> list[Figure]:
    """The dashboard's figures, read now."""
    st = state()
    now = st.audit.clock()
    with st.engine.connect() as conn:   # the device figures in one read
        syncing = devices_synced_since(conn, now - SYNC_WINDOW)
        lagging = lagging_devices(conn, now)
        quarantined = quarantined_mutations(conn)
    failed = count_entries(st.audit, start=now - FAILED_LOGIN_WINDOW, action="auth", outcome="failure")
    verified = last_verification(st.audit)
    if verified is None:
        last = Figure("last-verification", "Audit trail last verified", "never",
                      "verify it on the Audit page", "warning")
    else:
        ok = verified.detail.get("ok") is True
        last = Figure("last-verification", "Audit trail last verified",
                      "intact" if ok else f"{verified.detail.get('problems', '?')} problem(s)",
                      f"{verified.recorded_at:%Y-%m-%d %H:%M} UTC by {verified.actor or 'the system'}",
                      "" if ok else "danger")
    return [
        Figure("syncing", "Devices syncing (last hour)", syncing, "in contact within the hour"),
        Figure("lagging", "Devices lagging", lagging,
               f"behind and silent for over {int(LAG_QUIET_FOR.total_seconds() // 3600)} h",
               "warning" if lagging else ""),
        Figure("quarantined", "Quarantined mutations", quarantined, "permanently rejected, on active devices",
               "warning" if quarantined else ""),
        _queue_figure(),
        _spool_figure(),
        _dependencies_figure(),
        Figure("failed-logins", "Failed logins (24 h)", failed, "from the audit trail",
               "warning" if failed else ""),
        last,
    ]


class DashboardView(RoleView, AdminIndexView):
    roles = ADMIN_ROLES

    def __init__(self, snapshot: Any):
        super().__init__(name="Dashboard", url="/")
        self.snapshot = snapshot

    @expose("/")
    def index(self):
        return self.render("fieldsync_admin/dashboard.html", figures=figures())
