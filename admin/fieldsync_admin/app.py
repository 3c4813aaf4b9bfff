"""Build the admin app for one snapshot of the live model (mount.py rebuilds it on a change).

The views come from the modules in VIEW_MODULES, each with `views(snapshot) -> [BaseView]`;
a view says which roles see it (security.RoleView). Everything the views do goes through the
fieldsync app's state (`current_app.extensions["fieldsync"]`): the same record store, audit
trail, user directory and queue as REST and sync.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
from typing import Any

from flask import Flask
from flask_admin import Admin
from flask_admin.theme import Bootstrap4Theme

from fieldsync_admin import security

__all__ = ["VIEW_MODULES", "build_admin_app", "session_key"]

# the order is the menu's
VIEW_MODULES = ("definitions", "preview", "data", "devices", "queues", "keys", "audit", "users")


def session_key(secret: bytes) -> bytes:
    """The admin session cookie's signing key: derived from the server secret, so every build
    of the admin app (and every process) signs and reads the same cookies."""
    return hmac.new(secret, b"fieldsync admin session v1", hashlib.sha256).digest()


def build_admin_app(fieldsync_app: Flask, snapshot: Any) -> Flask:
    """A Flask app serving the admin UI for `snapshot` (a fieldsync.api.app.Snapshot)."""
    state = fieldsync_app.extensions["fieldsync"]
    # the UI's own scripts and styles (no CDN: hospitals' closed networks), at /admin/assets/
    app = Flask("fieldsync_admin", static_folder="static", static_url_path="/assets")
    app.extensions["fieldsync"] = state
    app.config.update(
        SECRET_KEY=session_key(state.secret_bytes),
        MAX_CONTENT_LENGTH=fieldsync_app.config.get("MAX_CONTENT_LENGTH"),
        SESSION_COOKIE_NAME="fieldsync_admin",
        SESSION_COOKIE_PATH="/admin",
        SESSION_COOKIE_SECURE=True,      # sent over TLS only (browsers treat http://localhost as secure)
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=int(state.config["TOKEN_TTL_SECONDS"]),
        FLASK_ADMIN_SWATCH="default",
    )
    security.install(app)
    admin = Admin(app, name="fieldsync", url="/", index_view=_index_view(snapshot),
                  theme=Bootstrap4Theme(base_template="fieldsync_admin/base.html", fluid=True),
                  csp_nonce_generator=security.csp_nonce)
    for name in VIEW_MODULES:
        module = importlib.import_module(f"fieldsync_admin.{name}")
        admin.add_views(*module.views(snapshot))
    return app


def _index_view(snapshot: Any):
    from fieldsync_admin.dashboard import DashboardView
    return DashboardView(snapshot)
