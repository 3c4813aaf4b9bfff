"""The admin UI's first page: how the platform is doing, at a glance (issue 12, section 3)."""

from __future__ import annotations

from typing import Any

from flask_admin import AdminIndexView, expose

from fieldsync_admin.security import ADMIN_ROLES, RoleView

__all__ = ["DashboardView"]


class DashboardView(RoleView, AdminIndexView):
    roles = ADMIN_ROLES

    def __init__(self, snapshot: Any):
        super().__init__(name="Dashboard", url="/")
        self.snapshot = snapshot

    @expose("/")
    def index(self):
        return self.render("fieldsync_admin/dashboard.html", figures={})
