"""The admin app per model version, mounted under `/admin` of the fieldsync app.

Flask cannot add routes to an app that has served requests, and the data views are one per
entity of the live model, so the admin is its own small Flask app, built from one snapshot and
rebuilt (once, under a lock) when the applied model version changes. Sessions survive the
rebuild: every build signs its cookies with the same key, derived from the server's secret.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable

from flask import Flask

log = logging.getLogger("fieldsync.admin")

PREFIX = "/admin"

__all__ = ["AdminMount", "PREFIX", "mount"]


class AdminMount:
    """WSGI middleware: `/admin` and below to the admin app of the current model version,
    everything else to the fieldsync app."""

    def __init__(self, app: Flask, wsgi_app: Callable):
        self.app = app
        self.wsgi_app = wsgi_app
        self._lock = threading.Lock()
        self._built: tuple[int | None, Any, Flask] | None = None   # (version, snapshot, admin app)

    def admin_app(self) -> tuple[Flask, Any]:
        """The admin app for the applied model version (built on first use and on each change),
        with the snapshot it was built from."""
        state = self.app.extensions["fieldsync"]
        snapshot = state.current()
        built = self._built
        if built is not None and built[1] is snapshot:
            return built[2], snapshot
        with self._lock:
            built = self._built
            if built is None or built[1] is not snapshot:
                from fieldsync_admin.app import build_admin_app
                admin = build_admin_app(self.app, snapshot)
                self._built = built = (state.version, snapshot, admin)
                log.info("admin UI built for model version %s", state.version)
        return built[2], built[1]

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return self.wsgi_app(environ, start_response)
        admin, snapshot = self.admin_app()
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + PREFIX
        environ["PATH_INFO"] = path[len(PREFIX):] or "/"
        environ["fieldsync.snapshot"] = snapshot
        return admin(environ, start_response)


def mount(app: Flask) -> AdminMount:
    """Serve the admin UI at `/admin` of `app` (the fieldsync app made by create_app)."""
    middleware = AdminMount(app, app.wsgi_app)
    app.wsgi_app = middleware
    app.extensions["fieldsync_admin"] = middleware
    return middleware
