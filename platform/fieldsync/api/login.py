"""`POST /api/v1/auth/login`: a user of the directory (auth/users.py) exchanges their password,
and their one-time code when they enrolled one, for the user token every other endpoint
verifies (auth/tokens.py), carrying the directory's role and attributes (docs/access.md).

A refusal is 401 `login-failed` with a `reason`; it counts against the authentication failure
limiter under the client's address and the user id tried, and is audited (action "auth",
outcome "failure": the reason and the address, never the password nor the code). Beyond the
limit the login answers 429 with Retry-After, the right password included, until the window
has passed. A success is audited (event `login`, with the new token's id).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Blueprint, Flask, Response, current_app, request

from fieldsync.api.auth import audit_event, record_audit, too_many_failures
from fieldsync.auth.tokens import issue_token, new_token_id
from fieldsync.auth.users import get_user, log_in
from fieldsync.codegen.openapi import API_PREFIX
from fieldsync.defs.values import FieldProblem
from fieldsync.errors import JsonRefused, LoginRefused, NotFound, Problem, ProblemType, TokenError
from fieldsync.untrusted import load_json, unstorable_paths

__all__ = ["blueprint", "record_failed_login", "register_login"]

log = logging.getLogger("fieldsync.auth")

blueprint = Blueprint("fieldsync_login", __name__)


def register_login(app: Flask) -> None:
    app.register_blueprint(blueprint, url_prefix=API_PREFIX + "/auth")


def _credentials() -> tuple[str, str, str | None]:
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise Problem(ProblemType.UNSUPPORTED_MEDIA_TYPE,
                      f"send the body as application/json (got {mimetype or 'no content type'})")
    try:
        body = load_json(request.get_data(cache=False).decode("utf-8"))
    except (UnicodeDecodeError, JsonRefused):
        raise Problem(ProblemType.MALFORMED_JSON, "the body is not a JSON document") from None
    if not isinstance(body, dict) or not isinstance(body.get("user"), str) \
            or not isinstance(body.get("password"), str) or not isinstance(body.get("totp", ""), (str, type(None))):
        raise Problem(ProblemType.BAD_REQUEST, 'send {"user": "...", "password": "...", "totp": "123456"} '
                                               "(totp only for a user who enrolled a second factor)")
    for path, reason in unstorable_paths(body):   # a lone surrogate or NUL: no database takes it
        raise Problem(ProblemType.BAD_REQUEST, f"{path}: {reason}", errors=[FieldProblem(path, reason)])
    return body["user"], body["password"], body.get("totp") or None


def record_failed_login(reason: str, user_id: str, keys: list, address: str, *, channel: str = "rest") -> None:
    """Count a refused login against the failure limiter and audit it (the reason and the
    address; the user only when the id names one, never the password). Shared by this endpoint
    and the admin UI's login form."""
    state = current_app.extensions["fieldsync"]
    newly_blocked = state.auth_limiter.failed(keys)
    try:
        known = get_user(state.engine, user_id) if "\x00" not in user_id else None
    except NotFound:
        known = None
    try:
        # the user id tried is kept only when it names a user: a password typed into the user
        # field by mistake is never recorded
        record_audit(audit_event(action="auth", outcome="failure", channel=channel,
                                 actor=known.user_id if known else None, role=known.role if known else None,
                                 detail={"event": "login_failed", "reason": reason, "source_ip": address,
                                         "known_user": known is not None}))
        if newly_blocked:
            record_audit(audit_event(action="auth", outcome="denied", channel=channel, detail={
                "event": "rate_limited", "source_ip": address, "limit": state.auth_limiter.limit,
                "window_seconds": state.auth_limiter.window, "keys": [k for k, _ in newly_blocked]}))
    except Exception:
        log.exception("the audit log refused a failed login (reason %s)", reason)


def _refuse(reason: str, message: str, user_id: str, keys: list, address: str) -> Problem:
    """Count and audit a refused login; the 401 problem to raise."""
    record_failed_login(reason, user_id, keys, address)
    return Problem(ProblemType.LOGIN_FAILED, message, extra={"reason": reason})


@blueprint.post("/login")
def login() -> Response:
    state = current_app.extensions["fieldsync"]
    address = request.remote_addr or "unknown"
    user_id, password, code = _credentials()
    keys: list[tuple[str, str]] = [("address", address), ("user", user_id[:128])]
    wait = state.auth_limiter.retry_after(keys)
    if wait is not None:
        raise too_many_failures(wait)
    now = state.auth_clock()
    model = state.current().model   # the applied version (api/app.py: live definitions)
    try:
        user = log_in(state.engine, user_id, password, code, now=now, keyring=state.crypto.keyring)
        attributes = {k: v for k, v in user.attributes.items() if model.attribute(k) is not None}
        token_id = new_token_id()
        ttl = int(state.config["TOKEN_TTL_SECONDS"])
        token = issue_token(state.secret, user.user_id, user.role, attributes, ttl=ttl, now=now,
                            roles=model.role_names, token_id=token_id)
    except LoginRefused as exc:
        raise _refuse(exc.reason, str(exc), user_id, keys, address) from None
    except TokenError as exc:   # the directory's role left the definitions
        raise _refuse(exc.reason, str(exc), user_id, keys, address) from None
    record_audit(audit_event(action="auth", channel="rest", actor=user.user_id, role=user.role,
                             detail={"event": "login", "token_id": token_id, "source_ip": address,
                                     "second_factor": user.totp}))
    body: dict[str, Any] = {"token": token, "token_type": "Bearer", "token_id": token_id,
                            "expires_at": int(now) + ttl, "expires_in": ttl,
                            "idle_timeout": int(state.sessions.policy.user_idle),
                            "user": user.user_id, "role": user.role, "attributes": attributes}
    return Response(json.dumps(body, separators=(",", ":")), status=200, mimetype="application/json",
                    headers={"Cache-Control": "no-store"})
