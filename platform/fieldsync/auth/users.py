"""The user directory: who may log in (`POST /api/v1/auth/login`), with which role and
attributes; the operations `fieldsync users` and the admin UI call (docs/access.md, "Users and
login"). HIPAA 164.312(a)(2)(i), unique user identification; 164.312(d), authentication.

* A user has an id, a role of roles.yaml, attributes as roles.yaml declares them (checked here
  against `Model.attributes`: the ones a token carries as `$user.<name>`), a password, kept only
  as its scrypt hash (memory-hard, salted: werkzeug's `scrypt:` format), enabled or disabled, and
  for the roles in SECOND_FACTOR_ROLES an optional TOTP secret (auth/totp.py), stored sealed
  under the key ring's `directory:totp` key (auth/totp_secrets.py): the operations that enrol or
  check a second factor take the key ring as `keyring=`.
* *Decision:* the administrative roles are admin, analyst and compliance (they change the model,
  read across territories, read PHI for audits); a user of one of them may enrol a second factor,
  and then every login needs its current code. A user moved to another role loses the enrolment.
* Disabling a user, changing their role, attributes or password, revokes every token of theirs:
  `tokens_after` is set to now (tokens issued before are refused by the session check,
  auth/sessions.py, device tokens included) and their used tokens' sessions are marked revoked
  (which also covers a token issued in the same second). Their devices then need a new login and
  registration, and pull with the new scope.
* Every change is audited (action `admin`) in its own transaction; a change the audit trail
  cannot record is not made (invariant 8). Neither a password nor a TOTP secret is ever logged or
  audited.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import sqlalchemy as sa
from werkzeug.security import check_password_hash, generate_password_hash

from fieldsync.audit.trail import AuditEvent, AuditLog
from fieldsync.auth import totp as totp_codes
from fieldsync.auth.sessions import SESSIONS
from fieldsync.auth.totp_secrets import SecretUnreadable, is_sealed, open_secret, seal_secret
from fieldsync.crypto.keyring import KeyRing
from fieldsync.defs.model import Model, UserAttribute
from fieldsync.errors import Conflict, LoginRefused, NotFound
from fieldsync.store.directory import USERS
from fieldsync.store.engine import write_transaction

__all__ = ["PASSWORD_MAX", "PASSWORD_MIN", "SECOND_FACTOR_ROLES", "User", "add_user", "attribute_from_text",
           "check_attributes", "disable_user", "enable_user", "get_user", "list_users", "log_in", "revoke_tokens",
           "set_password", "set_user", "verify_password"]

log = logging.getLogger("fieldsync.auth")

SECOND_FACTOR_ROLES = ("admin", "analyst", "compliance")
PASSWORD_MIN = 10
PASSWORD_MAX = 1024       # scrypt hashes what it is given: a megabyte "password" is refused unhashed
USER_ID_MAX = 128
HASH_METHOD = "scrypt"


@dataclass(frozen=True, slots=True)
class User:
    """A directory entry as the operations return it (never its hash nor its TOTP secret)."""

    user_id: str
    role: str
    attributes: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    totp: bool = False          # a second factor is enrolled
    tokens_after: int = 0
    created_at: int = 0
    updated_at: int = 0


def _user(row: Mapping[str, Any]) -> User:
    return User(user_id=row["user_id"], role=row["role"], attributes=json.loads(row["attributes"]),
                enabled=bool(row["enabled"]), totp=row["totp_secret"] is not None, tokens_after=row["tokens_after"],
                created_at=row["created_at"], updated_at=row["updated_at"])


# -- checks ---------------------------------------------------------------------------------------

def attribute_from_text(attr: UserAttribute, raw: str) -> Any:
    """The value of `attr` written as text on a command line: lists comma-separated."""
    def one(kind: str, text: str):
        if kind == "integer":
            return int(text)
        if kind == "boolean":
            return text.lower() in ("1", "true", "yes")
        return text
    if attr.type == "list":
        return [one(attr.items, part.strip()) for part in raw.split(",") if part.strip()]
    return one(attr.type, raw)


def _valid_value(kind: str | None, value: Any) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "uuid":
        try:
            return isinstance(value, str) and str(uuid.UUID(value)) == value.lower()
        except ValueError:
            return False
    return isinstance(value, str)


def check_attributes(model: Model, attributes: Mapping[str, Any]) -> dict[str, Any]:
    """`attributes` when each is declared in roles.yaml with a value of its type; ValueError
    naming the first that is not (`id` and `role` are the directory's own, never attributes)."""
    declared = ", ".join(a.name for a in model.attributes) or "none"
    checked = {}
    for name, value in attributes.items():
        attr = model.attribute(name)
        if attr is None or name in ("id", "role"):
            raise ValueError(f"attribute {name!r} is not declared in roles.yaml (declared: {declared})")
        ok = (isinstance(value, list) and all(_valid_value(attr.items, v) for v in value)) if attr.type == "list" \
            else _valid_value(attr.type, value)
        if not ok:
            kind = f"a list of {attr.items}" if attr.type == "list" else f"a {attr.type}"
            raise ValueError(f"attribute {name!r} must be {kind}")
        checked[name] = value
    return checked


def _check_user_id(user_id: str) -> str:
    if not isinstance(user_id, str) or not user_id.strip() or user_id != user_id.strip() \
            or len(user_id) > USER_ID_MAX or any(ord(c) < 32 for c in user_id):
        raise ValueError(f"a user id is 1 to {USER_ID_MAX} printable characters without surrounding spaces")
    return user_id


def _check_role(model: Model, role: str) -> str:
    if role not in model.role_names:
        raise ValueError(f"unknown role {role!r} (roles: {', '.join(model.role_names)})")
    return role


def _hash(password: str) -> str:
    if not isinstance(password, str) or not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise ValueError(f"a password has {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    return generate_password_hash(password, method=HASH_METHOD)


def _second_factor(role: str, enrol: bool) -> str | None:
    if not enrol:
        return None
    if role not in SECOND_FACTOR_ROLES:
        raise ValueError(f"a second factor is for the roles {', '.join(SECOND_FACTOR_ROLES)}, not {role!r}")
    return totp_codes.new_secret()


def _keyring(keyring: KeyRing | None) -> KeyRing:
    if keyring is None:   # a caller's bug, not a user's input: the secret is never stored in clear
        raise TypeError("enrolling or checking a second factor needs the key ring (keyring=)")
    return keyring


def _now(now: float | None) -> int:
    return int(time.time() if now is None else now)


def _audit(audit: AuditLog, conn: sa.Connection, event: str, user: str, actor: str, channel: str,
           **detail: Any) -> None:
    audit.append(conn, AuditEvent(action="admin", actor=actor, channel=channel,
                                  detail={"event": event, "user": user, **detail}))


# -- operations -----------------------------------------------------------------------------------

def add_user(engine: sa.Engine, audit: AuditLog, model: Model, user_id: str, *, role: str, password: str,
             attributes: Mapping[str, Any] | None = None, totp: bool = False, actor: str, channel: str = "cli",
             now: float | None = None, keyring: KeyRing | None = None) -> str | None:
    """Add an enabled user; the new TOTP secret when `totp` (else None), stored sealed under
    `keyring` (needed then). ValueError for a bad id, role, attribute or password; Conflict when
    the id exists."""
    _check_user_id(user_id)
    _check_role(model, role)
    values = check_attributes(model, attributes or {})
    secret = _second_factor(role, totp)
    sealed = seal_secret(_keyring(keyring), user_id, secret) if secret is not None else None   # before the transaction
    at = _now(now)
    row = dict(user_id=user_id, role=role, attributes=json.dumps(values, sort_keys=True), password_hash=_hash(password),
               enabled=True, totp_secret=sealed, tokens_after=0, created_at=at, updated_at=at)
    with write_transaction(engine) as conn:
        if conn.execute(sa.select(USERS.c.user_id).where(USERS.c.user_id == user_id)).first() is not None:
            raise Conflict(f"user {user_id} exists")
        conn.execute(USERS.insert().values(**row))
        _audit(audit, conn, "user_added", user_id, actor, channel, role=role, attributes=sorted(values),
               second_factor=secret is not None)
    return secret


def _revoke_tokens(conn: sa.Connection, user_id: str, at: int, actor: str) -> None:
    conn.execute(USERS.update().where(USERS.c.user_id == user_id).values(tokens_after=at))
    conn.execute(SESSIONS.update().where(SESSIONS.c.user_id == user_id, SESSIONS.c.revoked_at.is_(None))
                 .values(revoked_at=at, revoked_by=actor))


def _current(conn: sa.Connection, user_id: str) -> Mapping[str, Any]:
    row = conn.execute(sa.select(USERS).where(USERS.c.user_id == user_id)).mappings().first()
    if row is None:
        raise NotFound(f"no user {user_id}")
    return row


def set_user(engine: sa.Engine, audit: AuditLog, model: Model, user_id: str, *, role: str | None = None,
             attributes: Mapping[str, Any] | None = None, password: str | None = None, totp: bool | None = None,
             actor: str, channel: str = "cli", now: float | None = None,
             keyring: KeyRing | None = None) -> str | None:
    """Change what is given (None: unchanged; `attributes` replaces them all; `totp` True enrols
    a new second factor, sealed under `keyring` (needed then), False removes it); the new TOTP
    secret when one was enrolled. A change of role, attributes or password revokes the user's
    tokens. NotFound, ValueError."""
    new_role = _check_role(model, role) if role is not None else None
    values = check_attributes(model, attributes) if attributes is not None else None
    new_hash = _hash(password) if password is not None else None
    enrolled = sealed = None
    if totp:   # made and sealed before the transaction (the key ring creates its key outside one)
        enrolled = totp_codes.new_secret()
        sealed = seal_secret(_keyring(keyring), user_id, enrolled)
    at = _now(now)
    with write_transaction(engine) as conn:
        row = _current(conn, user_id)
        change: dict[str, Any] = {}
        if new_role is not None and new_role != row["role"]:
            change["role"] = new_role
        if values is not None and values != json.loads(row["attributes"]):
            change["attributes"] = json.dumps(values, sort_keys=True)
        if new_hash is not None:
            change["password_hash"] = new_hash
        effective_role = change.get("role", row["role"])
        secret = None
        if totp:
            _second_factor(effective_role, True)   # ValueError for a role without a second factor
            secret, change["totp_secret"] = enrolled, sealed
            change["totp_last_step"] = None
        elif totp is False or (row["totp_secret"] is not None and effective_role not in SECOND_FACTOR_ROLES):
            change["totp_secret"] = change["totp_last_step"] = None
        if not change:
            return None
        conn.execute(USERS.update().where(USERS.c.user_id == user_id).values(**change, updated_at=at))
        revokes = bool({"role", "attributes", "password_hash"} & set(change))
        if revokes:
            _revoke_tokens(conn, user_id, at, actor)
        _audit(audit, conn, "user_changed", user_id, actor, channel,
               changed=sorted(k if k != "password_hash" else "password" for k in change
                              if k not in ("totp_last_step",)),
               role=effective_role, tokens_revoked=revokes)
    return secret


def set_password(engine: sa.Engine, audit: AuditLog, model: Model, user_id: str, password: str, *, actor: str,
                 channel: str = "cli", now: float | None = None) -> None:
    """Reset the user's password (their tokens are revoked)."""
    set_user(engine, audit, model, user_id, password=password, actor=actor, channel=channel, now=now)


def _set_enabled(engine: sa.Engine, audit: AuditLog, user_id: str, enabled: bool, *, actor: str, channel: str,
                 now: float | None) -> bool:
    at = _now(now)
    with write_transaction(engine) as conn:
        row = _current(conn, user_id)
        if bool(row["enabled"]) == enabled:
            return False
        conn.execute(USERS.update().where(USERS.c.user_id == user_id).values(enabled=enabled, updated_at=at))
        if not enabled:
            _revoke_tokens(conn, user_id, at, actor)
        _audit(audit, conn, "user_enabled" if enabled else "user_disabled", user_id, actor, channel)
    return True


def disable_user(engine: sa.Engine, audit: AuditLog, user_id: str, *, actor: str, channel: str = "cli",
                 now: float | None = None) -> bool:
    """Disable the user and revoke their tokens; False when already disabled. NotFound."""
    return _set_enabled(engine, audit, user_id, False, actor=actor, channel=channel, now=now)


def enable_user(engine: sa.Engine, audit: AuditLog, user_id: str, *, actor: str, channel: str = "cli",
                now: float | None = None) -> bool:
    """Enable the user again (tokens revoked when disabled stay revoked); False when enabled."""
    return _set_enabled(engine, audit, user_id, True, actor=actor, channel=channel, now=now)


def revoke_tokens(engine: sa.Engine, audit: AuditLog, user_id: str, *, actor: str, channel: str = "cli",
                  now: float | None = None) -> None:
    """Revoke every token the user holds now, changing nothing else (a lost phone, a token that
    may have leaked): their sessions, device tokens included, are refused from `now` on and
    they log in again. Audited as `tokens_revoked`. NotFound."""
    at = _now(now)
    with write_transaction(engine) as conn:
        _current(conn, user_id)
        _revoke_tokens(conn, user_id, at, actor)
        conn.execute(USERS.update().where(USERS.c.user_id == user_id).values(updated_at=at))
        _audit(audit, conn, "tokens_revoked", user_id, actor, channel)


def get_user(engine: sa.Engine, user_id: str) -> User:
    with engine.connect() as conn:
        return _user(_current(conn, user_id))


def list_users(engine: sa.Engine) -> list[User]:
    with engine.connect() as conn:
        return [_user(r) for r in conn.execute(sa.select(USERS).order_by(USERS.c.user_id)).mappings()]


@functools.cache
def _decoy_hash() -> str:
    """Checked against for an unknown user, so a wrong user id costs the time a wrong password does."""
    return generate_password_hash("not a password of anyone", method=HASH_METHOD)


def verify_password(engine: sa.Engine, user_id: str, password: str) -> User | None:
    """The user when `password` is theirs (enabled or not), else None."""
    if not isinstance(user_id, str) or not isinstance(password, str) or len(password) > PASSWORD_MAX \
            or len(user_id) > USER_ID_MAX:
        return None
    with engine.connect() as conn:
        row = conn.execute(sa.select(USERS).where(USERS.c.user_id == user_id)).mappings().first()
    if row is None:
        check_password_hash(_decoy_hash(), password)
        return None
    return _user(row) if check_password_hash(row["password_hash"], password) else None


def log_in(engine: sa.Engine, user_id: str, password: str, totp_code: str | None = None, *,
           now: float | None = None, keyring: KeyRing | None = None) -> User:
    """The user whose credentials these are, when enabled and (if enrolled) with a current TOTP
    code not used before; LoginRefused with its reason otherwise. A wrong user id and a wrong
    password are the same refusal; `disabled` and the TOTP reasons follow a right password only.
    `keyring` opens the sealed TOTP secret (needed for an enrolled user); a secret that does not
    open (altered, moved from another user's row) is refused as `totp_invalid`. A secret still
    stored in clear (a database of before) is checked as it is and sealed on that login."""
    user = verify_password(engine, user_id, password)
    if user is None:
        raise LoginRefused("invalid_credentials", "the user id or the password is wrong")
    if not user.enabled:
        raise LoginRefused("disabled", "the user is disabled")
    if not user.totp:
        return user
    if not totp_code:
        raise LoginRefused("totp_required", "this user logs in with a one-time code (totp)")
    keyring = _keyring(keyring)
    at = _now(now)
    with engine.connect() as conn:
        stored = _current(conn, user_id)["totp_secret"]
    secret = None
    if stored:
        try:
            secret = open_secret(keyring, user_id, stored)
        except SecretUnreadable as exc:
            log.warning("%s", exc)   # names the user only
    step = totp_codes.matching_step(secret, totp_code, at) if secret else None
    # a plaintext row of before: sealed with this login (made before the transaction opens)
    sealed = seal_secret(keyring, user_id, stored) if step is not None and not is_sealed(stored) else None
    with write_transaction(engine) as conn:
        row = _current(conn, user_id)
        last = row["totp_last_step"]
        if step is None or row["totp_secret"] != stored or (last is not None and step <= last):
            # a secret changed meanwhile (re-enrolled, removed) is checked again by the next login
            raise LoginRefused("totp_invalid", "the one-time code is wrong, expired or already used")
        change: dict[str, Any] = {"totp_last_step": step}
        if sealed is not None:
            change["totp_secret"] = sealed
        conn.execute(USERS.update().where(USERS.c.user_id == user_id).values(**change))
    if sealed is not None:
        log.info("sealed the plaintext TOTP secret of user %s at its login", user_id)
    return user
