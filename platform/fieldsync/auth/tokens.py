"""Signed, expiring bearer tokens (HMAC-SHA256 over a compact JSON payload).

A token is `v1.<payload>.<signature>`, both parts base64url without padding. The payload holds
the user id (`sub`), role, attributes (`$user.<name>` in expressions), the issue and expiry
times and a random token id (`jti`); a device token also names its device (`dev`). The
signature and expiry are checked here, statelessly, by any server process holding the secret;
the idle timeout and revocation need the token id and live in `fieldsync.auth.sessions`.
The clock is passed in (`now`), so tests decide what time it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from fieldsync.errors import TokenError
from fieldsync.untrusted import load_json, parse_int

PREFIX = "v1"
# token times are Unix seconds a datetime can hold (up to 9999-12-31T23:59:59Z): a larger `exp`
# would overflow the session table and every date conversion
MAX_TIMESTAMP = 253402300799


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified token speaks for."""

    user_id: str
    role: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    expires_at: int = 0
    token_id: str = ""            # the token's `jti`: what sessions and revocation are keyed on
    issued_at: int = 0
    device_id: str | None = None  # set for a device token: the one device it speaks for

    @property
    def kind(self) -> str:
        """"device" for a device token (bound to one device), "user" otherwise."""
        return "device" if self.device_id is not None else "user"

    def expression_user(self) -> dict[str, Any]:
        """The `user` mapping expressions are evaluated with ($user.id, $user.role, attributes)."""
        user = dict(self.attributes)
        user["id"] = self.user_id
        user["role"] = self.role
        return user


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _sign(secret: bytes | str, message: str) -> str:
    return _b64(hmac.new(_key(secret), message.encode(), hashlib.sha256).digest())


def new_token_id() -> str:
    """A random token id (128 bits, hex): unguessable, so it names a token without being one.
    Hex, not base64url: an id starting with '-' read as an option on `fieldsync token revoke ID`."""
    return secrets.token_hex(16)


def issue_token(secret: bytes | str, user: str, role: str, attributes: Mapping[str, Any] | None = None,
                ttl: int = 12 * 3600, now: float | None = None, *, roles: tuple[str, ...] | None = None,
                device_id: str | None = None, token_id: str | None = None) -> str:
    """A token for `user` acting as `role` with `attributes`, valid for `ttl` seconds from `now`.

    Pass the model's role names as `roles` to refuse a role that does not exist (TokenError
    with reason "unknown_role"); `attributes` must be JSON-serialisable. With `device_id` the
    token is a device token, bound to that device. Every token gets a fresh random id unless
    `token_id` names one.
    """
    if roles is not None and role not in roles:
        raise TokenError("unknown_role", f"no role {role!r} (roles: {', '.join(roles)})")
    if not isinstance(user, str) or not user:
        raise ValueError("user must be a non-empty string")
    if not isinstance(role, str) or not role:
        raise ValueError("role must be a non-empty string")
    issued = int(time.time() if now is None else now)
    if issued + int(ttl) > MAX_TIMESTAMP:
        raise ValueError(f"ttl {ttl} puts the expiry past the year 9999")
    if device_id is not None and (not isinstance(device_id, str) or not device_id):
        raise ValueError("device_id must be a non-empty string")
    payload = {"sub": user, "role": role, "attrs": dict(attributes or {}), "iat": issued, "exp": issued + int(ttl),
               "jti": token_id or new_token_id()}
    if device_id is not None:
        payload["dev"] = device_id
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    message = f"{PREFIX}.{body}"
    return f"{message}.{_sign(secret, message)}"


def verify_token(secret: bytes | str, token: str, now: float | None = None,
                 roles: tuple[str, ...] | None = None) -> Principal:
    """The Principal a token speaks for; raises TokenError (an AuthError) saying why not.

    With `roles`, a token whose role is not one of them (the model changed) is refused too.
    """
    if not isinstance(token, str) or token.count(".") != 2:
        raise TokenError("malformed", "the token is malformed")
    prefix, body, signature = token.split(".")
    if prefix != PREFIX:
        raise TokenError("malformed", "the token is malformed")
    if not hmac.compare_digest(_sign(secret, f"{prefix}.{body}"), signature):
        raise TokenError("bad_signature", "the token's signature does not match")
    try:
        payload = load_json(_unb64(body))
        user, role, attrs, exp = payload["sub"], payload["role"], payload["attrs"], payload["exp"]
        issued, device = payload.get("iat", 0), payload.get("dev")
        exp, issued = parse_int(exp, low=0, high=MAX_TIMESTAMP), parse_int(issued, low=0, high=MAX_TIMESTAMP)
        if not (isinstance(user, str) and isinstance(role, str) and isinstance(attrs, dict)
                and isinstance(payload["exp"], int) and isinstance(payload.get("iat", 0), int)
                and (device is None or isinstance(device, str))):
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise TokenError("malformed", "the token is malformed") from None
    token_id = payload.get("jti")
    if not isinstance(token_id, str) or not token_id:
        # a token from before token ids: without one it cannot be idled out or revoked
        raise TokenError("malformed", "the token carries no token id; issue a new one")
    current = time.time() if now is None else now
    if current >= exp:
        raise TokenError("expired", "the token has expired")
    if roles is not None and role not in roles:
        raise TokenError("unknown_role", f"the token's role {role!r} does not exist")
    return Principal(user_id=user, role=role, attributes=attrs, expires_at=exp, token_id=token_id,
                     issued_at=issued, device_id=device)


def unverified_claims(token: str) -> dict[str, Any]:
    """The payload of `token` WITHOUT checking its signature ({} when it does not parse).

    Only for choosing a rate-limit bucket (the device a token claims) before the token is
    verified; never for deciding access.
    """
    try:
        _prefix, body, _signature = token.split(".")
        payload = load_json(_unb64(body))   # unverified: anyone can send any payload
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, AttributeError):
        return {}
    return payload if isinstance(payload, dict) else {}
