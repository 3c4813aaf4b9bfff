"""Authenticating a request, shared by the entity API and the sync API (docs/access.md).

In order: the bearer token's signature, expiry and role (`fieldsync.auth.tokens`), then its
session (`fieldsync.auth.sessions`: idle timeout, revocation). Each failure counts against the
limiter and is audited (action "auth", outcome "failure", a reason code: never the token). A
client address, or the device a token claims, with too many recent failures gets 429 and
Retry-After for every request whose token is not valid (neither counted nor audited again); a
valid token is let through. A token's first use starts its session, audited with the session row
in one transaction.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import sqlalchemy as sa
from flask import Flask, current_app, g, request

from fieldsync.errors import Problem, ProblemType, TokenError
from fieldsync.auth.ratelimit import FailureLimiter
from fieldsync.auth.sessions import SessionPolicy, Sessions, create_session_tables
from fieldsync.auth.tokens import Principal, unverified_claims, verify_token
from fieldsync.audit.trail import AuditEvent

__all__ = ["audit_event", "authenticate_request", "install_auth", "record_audit", "refuse_device_token",
           "too_many_failures"]

log = logging.getLogger("fieldsync.auth")


def install_auth(app: Flask, *, clock=None) -> None:
    """Give the app's state its session store and failure limiter (called by create_app).

    `clock` returns seconds since the epoch (default time.time); tests inject one to move time.
    """
    state = app.extensions["fieldsync"]
    config = state.config
    state.auth_clock = clock or time.time
    create_session_tables(state.engine)
    state.sessions = Sessions(state.engine, SessionPolicy.from_config(config), clock=state.auth_clock)
    state.auth_limiter = FailureLimiter(int(config["AUTH_FAILURE_LIMIT"]), float(config["AUTH_FAILURE_WINDOW_SECONDS"]),
                                        clock=state.auth_clock)


# -- audit (fieldsync.audit.trail; docs/access.md lists the events) ---------------------------

def audit_event(**fields: Any) -> AuditEvent:
    """An AuditEvent (references only: never a token, a secret or a PHI value)."""
    return AuditEvent(**fields)


def record_audit(event: AuditEvent, conn: sa.Connection | None = None) -> None:
    """Append `event` (in the caller's transaction `conn`, else in its own); AuditUnavailable
    propagates: the operation being audited fails with it (invariant 8)."""
    audit = current_app.extensions["fieldsync"].audit
    if conn is not None:
        audit.append(conn, event)
    else:
        audit.record(event)


def _address() -> str:
    return request.remote_addr or "unknown"


def _refused(kind: ProblemType, reason: str, message: str, keys: list, channel: str,
             principal: Principal | None = None) -> Problem:
    """Count and audit a failed authentication; the 401 problem to raise."""
    state = current_app.extensions["fieldsync"]
    address = _address()
    newly_blocked = state.auth_limiter.failed(keys)
    detail: dict[str, Any] = {"event": "token_refused", "reason": reason, "source_ip": address,
                              "endpoint": request.endpoint or request.path}
    if principal is not None:   # the signature verified: who it was is known, and which token
        detail["token_id"] = principal.token_id
    try:
        record_audit(audit_event(action="auth", outcome="failure", channel=channel,
                                 actor=principal.user_id if principal else None,
                                 role=principal.role if principal else None,
                                 device=principal.device_id if principal else None, detail=detail))
        if newly_blocked:
            record_audit(audit_event(action="auth", outcome="denied", channel=channel, detail={
                "event": "rate_limited", "source_ip": address, "limit": state.auth_limiter.limit,
                "window_seconds": state.auth_limiter.window,
                "keys": [f"{kind}:{value}" for kind, value in newly_blocked]}))
    except Exception:
        # the request is refused either way; an unaudited refusal is logged, never let through
        log.exception("the audit log refused an authentication failure (reason %s)", reason)
    headers = {"WWW-Authenticate": 'Bearer realm="fieldsync"' if reason == "missing" else
               f'Bearer realm="fieldsync", error="invalid_token", error_description="{reason}"'}
    return Problem(kind, message, headers=headers, extra={"reason": reason})


def authenticate_request(*, kind: ProblemType = ProblemType.UNAUTHORIZED, channel: str = "rest") -> Principal:
    """The Principal of the current request's bearer token, or a Problem (401, or 429).

    `kind` is the problem type of a 401 (the sync API's `unauthenticated`; the entity API's
    default `unauthorized`); `channel` is the audit channel of the request.
    """
    state = current_app.extensions["fieldsync"]
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    keys: list[tuple[str, str]] = [("address", _address())]
    claimed_device = unverified_claims(token).get("dev") if token else None
    if isinstance(claimed_device, str) and claimed_device:
        keys.append(("device", claimed_device[:64]))
    # A blocked address or device still gets its token checked: a valid token is let through
    # (the users behind one NAT are not locked out by someone else's failures, nor a device by
    # forgeries claiming it); anything else is 429, neither counted again nor audited again.
    wait = state.auth_limiter.retry_after(keys)
    if scheme.lower() != "bearer" or not token:
        raise too_many_failures(wait) if wait is not None else \
            _refused(kind, "missing", "send a bearer token in the Authorization header", keys, channel)
    try:
        snapshot = getattr(g, "snapshot", None)   # the blueprints pin one model per request
        model = snapshot.model if snapshot is not None else state.model
        principal = verify_token(state.secret, token, now=state.auth_clock(), roles=model.role_names)
    except TokenError as exc:
        raise (too_many_failures(wait) if wait is not None
               else _refused(kind, exc.reason, str(exc), keys, channel)) from None
    try:
        state.sessions.admit(principal, on_start=lambda conn: record_audit(audit_event(
            action="auth", channel=channel, actor=principal.user_id, role=principal.role, device=principal.device_id,
            detail={"event": "session_start", "token_id": principal.token_id, "kind": principal.kind,
                    "source_ip": _address()}), conn))
    except TokenError as exc:
        raise (too_many_failures(wait) if wait is not None
               else _refused(kind, exc.reason, str(exc), keys, channel, principal)) from None
    return principal


def too_many_failures(wait: int) -> Problem:
    return Problem(ProblemType.TOO_MANY_REQUESTS,
                   f"too many failed authentications from this client; retry after {wait} s",
                   headers={"Retry-After": str(wait)}, extra={"retry_after": wait})


def refuse_device_token(principal: Principal, what: str) -> None:
    """403 when `principal` comes from a device token: those speak for one device's sync only."""
    if principal.device_id is not None:
        raise Problem(ProblemType.DEVICE_TOKEN_NOT_ALLOWED,
                      f"a device token cannot {what}; use the user's own token")
