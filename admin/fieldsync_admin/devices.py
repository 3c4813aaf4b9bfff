"""The devices view of the admin UI (issue 12, section 3; docs/admin.md "Devices").

A table of the registered devices and where each stands (fieldsync.sync.overview: the same
figures as `fieldsync devices` and the dashboard), a page per device with its rejected
(quarantined) mutations and their reasons, and Revoke with a reason — the same
`fieldsync.auth.revocation.revoke_device` as `fieldsync devices revoke` and the admin endpoint,
audited in the revocation's transaction.

Admins only: the REST listing (`GET /api/v1/sync/devices`) and revocation are admin-only, and a
device list names users and their working hours (last contact); analysts have no task here.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import abort, flash, redirect, request, url_for
from flask_admin import BaseView, expose

from fieldsync.auth.revocation import REASON_MAX, revoke_device
from fieldsync.errors import NotFound
from fieldsync.ids import utc_now
from fieldsync.sync.overview import device_overview, device_rejections, device_row
from fieldsync_admin.security import RoleView, current_user, state

__all__ = ["DevicesView", "views"]

DEVICE_ID_MAX = 36   # fs_devices.device_id


def _now() -> dt.datetime:
    """The time the sync endpoints stamp last contact with (the app's record clock)."""
    clock = state().clock
    return clock() if clock is not None else utc_now()


def _ago(moment: dt.datetime | None, now: dt.datetime) -> str:
    """'3 min ago' and the like, for the table; the exact time is in the title attribute."""
    if moment is None:
        return "-"
    seconds = int((now - moment).total_seconds())
    if seconds < 0:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def _when(moment: dt.datetime | None) -> str:
    """A stored UTC time as the pages show it."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "-"


class DevicesView(RoleView, BaseView):
    roles = ("admin",)

    def __init__(self, snapshot: Any):
        super().__init__(name="Devices", endpoint="devices", url="devices")
        self.snapshot = snapshot

    def _device_id(self, device_id: str) -> str:
        if not device_id or len(device_id) > DEVICE_ID_MAX or "\x00" in device_id:
            abort(404, description=f"no device {device_id[:DEVICE_ID_MAX]!r}")
        return device_id

    @expose("/")
    def index(self):
        with state().engine.connect() as conn:
            overview = device_overview(conn)
        return self.render("fieldsync_admin/devices_list.html", overview=overview, now=_now(), ago=_ago, when=_when)

    @expose("/<device_id>")
    def detail(self, device_id: str):
        device_id = self._device_id(device_id)
        with state().engine.connect() as conn:
            device = device_row(conn, device_id)
            if device is None:
                abort(404, description=f"no device {device_id}")
            rejections = device_rejections(conn, device_id)
        return self.render("fieldsync_admin/devices_detail.html", device=device, rejections=rejections,
                           now=_now(), ago=_ago, when=_when, reason_max=REASON_MAX)

    @expose("/<device_id>/revoke", methods=("POST",))
    def revoke(self, device_id: str):
        device_id = self._device_id(device_id)
        reason = request.form.get("reason", "")
        if "\x00" in reason:
            reason = ""
        st = state()
        user = current_user()
        try:
            before = revoke_device(st.engine, st.audit, device_id, reason=reason, actor=user.user_id, role=user.role,
                                   channel="admin", detail={"source_ip": request.remote_addr or "unknown"})
        except NotFound:
            abort(404, description=f"no device {device_id}")
        except ValueError as exc:   # no reason, or too long a one
            flash(str(exc), "danger")
            return redirect(url_for(".detail", device_id=device_id))
        if before["status"] == "revoked":
            flash(f"device {device_id} was already revoked; nothing changed", "info")
        else:
            flash(f"device {device_id} (user {before['user_id']}) revoked: every token of it is refused from now "
                  "on; its data and outbox stay on the device", "success")
        return redirect(url_for(".detail", device_id=device_id))


def views(snapshot) -> list:
    return [DevicesView(snapshot)]
