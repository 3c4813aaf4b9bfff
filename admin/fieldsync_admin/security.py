"""Who is logged in to the admin UI, and the protections every admin page has (docs/admin.md).

* Login with the user directory (fieldsync.auth.users.log_in: scrypt password, TOTP when
  enrolled), the same failure limiter and audit events as `POST /api/v1/auth/login`. Only the
  roles in ADMIN_ROLES have admin views; a field rep's right password is refused here.
* The session is a signed cookie (Secure, HttpOnly, SameSite=Strict, path /admin) holding the
  user id, the login time, the last activity and the CSRF token. Each request re-reads the user:
  a disabled user, or one whose tokens were revoked after this login (role, attributes or
  password changed), is logged off; the role and attributes are always the directory's current.
* Idle timeout: a session unused for ADMIN_IDLE_SECONDS (15 minutes) is logged off (HIPAA
  164.312(a)(2)(iii) automatic logoff), measured with the app's auth clock.
* CSRF: every POST, PUT, PATCH and DELETE carries the session's token as the form field
  `csrf_token` or the header `X-CSRF-Token`; anything else is refused with 400 before a view runs.
* Headers: a Content-Security-Policy with a per-response script nonce (no inline script runs
  without it; nothing loads from another origin), frame-ancestors 'none', no-store caching.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping

from flask import Flask, abort, current_app, flash, g, redirect, render_template, request, session, url_for
from markupsafe import Markup
from werkzeug.exceptions import HTTPException

from fieldsync.api.auth import audit_event, record_audit
from fieldsync.api.login import record_failed_login
from fieldsync.auth.tokens import Principal
from fieldsync.auth.users import get_user, log_in
from fieldsync.errors import LoginRefused, NotFound

__all__ = ["ADMIN_ROLES", "AdminUser", "RoleView", "audit", "csrf_token", "csp_nonce", "current_user", "install",
           "principal", "state"]

log = logging.getLogger("fieldsync.admin")

ADMIN_ROLES = ("admin", "analyst", "compliance")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
OPEN_ENDPOINTS = ("login", "admin.static", "static")   # reachable without a session


@dataclass(frozen=True)
class AdminUser:
    """The logged-in user, as the directory has them now."""

    user_id: str
    role: str
    attributes: Mapping[str, Any] = field(default_factory=dict)


def state():
    """The fieldsync app's live state (api/app.py FieldsyncState)."""
    return current_app.extensions["fieldsync"]


def current_user() -> AdminUser | None:
    return g.get("admin_user")


def principal() -> Principal:
    """The logged-in user as the record store's permission checks take them."""
    user = current_user()
    if user is None:
        abort(401)
    return Principal(user_id=user.user_id, role=user.role, attributes=dict(user.attributes))


def audit(action: str = "admin", *, outcome: str = "success", conn=None, **fields: Any) -> None:
    """Record an audit event for the logged-in user on the admin channel (in `conn` when given);
    the trail refusing it fails the operation (invariant 8)."""
    user = current_user()
    record_audit(audit_event(action=action, outcome=outcome, channel="admin",
                             actor=user.user_id if user else None, role=user.role if user else None, **fields), conn)


def csrf_token() -> str:
    token = session.get("csrf")
    if not token:
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def csp_nonce() -> str:
    nonce = g.get("csp_nonce")
    if nonce is None:
        nonce = g.csp_nonce = secrets.token_urlsafe(16)
    return nonce


class RoleView:
    """Mixin for a Flask-Admin view seen only by `roles` (a tuple of role names)."""

    roles: tuple[str, ...] = ADMIN_ROLES

    def is_accessible(self) -> bool:
        user = current_user()
        return user is not None and user.role in self.roles

    def inaccessible_callback(self, name: str, **kwargs: Any):
        if current_user() is None:
            return redirect(url_for("login", next=request.full_path))
        abort(403)


# -- the request cycle ----------------------------------------------------------------------------

def install(app: Flask) -> None:
    """The login and logout routes and the per-request checks of the admin app."""
    app.add_url_rule("/login", "login", login, methods=["GET", "POST"])
    app.add_url_rule("/logout", "logout", logout, methods=["POST"])
    app.before_request(_before)
    app.after_request(_headers)
    app.jinja_env.globals.update(csrf_token=csrf_token, csp_nonce=csp_nonce, current_user=current_user)
    app.register_error_handler(HTTPException, _error_page)


def _now() -> float:
    return state().auth_clock()


def _before():
    g.snapshot = request.environ.get("fieldsync.snapshot") or state().current()
    g.admin_user = _session_user()
    if request.method in UNSAFE_METHODS:
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
        expected = session.get("csrf") or ""
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            abort(400, description="the form's CSRF token is missing or does not match this session: "
                                   "reload the page and submit it again")
    if g.admin_user is None and request.endpoint not in OPEN_ENDPOINTS:
        return redirect(url_for("login", next=request.full_path if request.method == "GET" else None))
    return None


def _session_user() -> AdminUser | None:
    user_id = session.get("user")
    if not user_id:
        return None
    now = _now()
    idle = float(state().config["ADMIN_IDLE_SECONDS"])
    if now - float(session.get("seen", 0)) > idle:
        _end_session("idle", user_id, f"you were logged off after {int(idle // 60)} minutes without activity")
        return None
    try:
        user = get_user(state().engine, user_id)
    except NotFound:
        user = None
    if user is None or not user.enabled or user.tokens_after > int(session.get("login_at", 0)) \
            or user.role not in ADMIN_ROLES:
        _end_session("revoked", user_id, "your session was ended: your account was changed or disabled")
        return None
    session["seen"] = now
    return AdminUser(user.user_id, user.role, dict(user.attributes))


def _end_session(reason: str, user_id: str, message: str) -> None:
    csrf = session.get("csrf")
    session.clear()
    if csrf:
        session["csrf"] = csrf
    try:
        record_audit(audit_event(action="auth", channel="admin", actor=user_id,
                                 detail={"event": "admin_logoff", "reason": reason}))
    except Exception:
        log.exception("the audit log refused an admin logoff (reason %s)", reason)
    flash(message, "warning")


def _safe_next(target: str | None) -> str:
    """Only a path inside the admin UI is followed after login (no open redirect)."""
    root = request.script_root or ""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target \
            and not any(ord(c) < 32 or ord(c) == 127 for c in target):   # a CR or LF: no Location header
        return root + target if not target.startswith(root + "/") else target
    return url_for("admin.index")


def login():
    if request.method != "POST":   # GET, and HEAD (Flask answers it with this view): never a login attempt
        if current_user() is not None:
            return redirect(url_for("admin.index"))
        return render_template("fieldsync_admin/login.html", next=request.args.get("next", ""))
    st = state()
    user_id = request.form.get("user", "")
    password = request.form.get("password", "")
    code = request.form.get("totp") or None
    address = request.remote_addr or "unknown"
    keys: list[tuple[str, str]] = [("address", address), ("user", user_id[:128])]
    wait = st.auth_limiter.retry_after(keys)
    if wait is not None:
        flash(f"too many failed logins; try again in {wait} s", "danger")
        return render_template("fieldsync_admin/login.html", next=request.form.get("next", "")), 429
    try:
        if "\x00" in user_id + password + (code or ""):
            raise LoginRefused("invalid_credentials", "the user id or the password is wrong")
        user = log_in(st.engine, user_id, password, code, now=_now(), keyring=st.crypto.keyring)
        if user.role not in ADMIN_ROLES:
            raise LoginRefused("role", f"the role {user.role} has no admin views; use the app")
    except LoginRefused as exc:
        _refused(exc.reason, user_id, keys, address)
        flash(str(exc), "danger")
        return render_template("fieldsync_admin/login.html", next=request.form.get("next", "")), 401
    session.clear()
    session.permanent = True
    now = _now()
    session.update(user=user.user_id, login_at=int(now), seen=now, csrf=secrets.token_urlsafe(32))
    record_audit(audit_event(action="auth", channel="admin", actor=user.user_id, role=user.role,
                             detail={"event": "admin_login", "source_ip": address, "second_factor": user.totp}))
    return redirect(_safe_next(request.form.get("next")))


def _refused(reason: str, user_id: str, keys: list, address: str) -> None:
    record_failed_login(reason, user_id, keys, address, channel="admin")


def logout():
    user = current_user()
    csrf = session.get("csrf")
    session.clear()
    if csrf:
        session["csrf"] = csrf
    if user is not None:
        record_audit(audit_event(action="auth", channel="admin", actor=user.user_id, role=user.role,
                                 detail={"event": "admin_logout"}))
    flash("you are logged out", "info")
    return redirect(url_for("login"))


def _headers(response):
    nonce = csp_nonce()
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; "
        f"script-src 'self' 'nonce-{nonce}'; "
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self'; connect-src 'self'; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint not in ("admin.static", "static"):
        response.headers["Cache-Control"] = "no-store"
    return response


def _error_page(exc: HTTPException):
    """An HTML page for 4xx in the admin (never a stack trace); the status is kept."""
    return render_template("fieldsync_admin/error.html", error=exc), exc.code or 500


def nonce_attribute() -> Markup:
    return Markup(f'nonce="{csp_nonce()}"')
