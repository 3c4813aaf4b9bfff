"""Revoking a device or one token, each with its audit entry in the same transaction.

Used by the admin endpoint `POST /api/v1/sync/devices/<id>/revoke` and by the commands
`fieldsync devices revoke` and `fieldsync token revoke` (docs/access.md). A revocation is
refused with the rest of its transaction when its audit entry cannot be appended.

* A revoked device (`fs_devices.status = 'revoked'`): every token of it, issued or still to be,
  is refused (401 `revoked`), and so is any request naming it with its user's token (403
  `device-revoked`); it cannot register again.
* A revoked token (`fs_sessions.revoked_at`): that token only, even one never used yet.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from fieldsync.auth.sessions import SESSIONS
from fieldsync.errors import NotFound
from fieldsync.audit.trail import AuditEvent, AuditLog
from fieldsync.store.engine import write_transaction
from fieldsync.store.sync_tables import DEVICES

__all__ = ["REASON_MAX", "revoke_device", "revoke_token"]

REASON_MAX = 500


def _check_reason(reason: str | None, *, required: bool) -> str | None:
    text = (reason or "").strip()
    if required and not text:
        raise ValueError("a reason is required: say why (it is kept, encrypted, in the audit log)")
    if len(text) > REASON_MAX:
        raise ValueError(f"the reason is longer than {REASON_MAX} characters")
    return text or None


def revoke_device(engine: sa.Engine, audit: AuditLog, device_id: str, *, reason: str, actor: str,
                  role: str | None = None, channel: str = "admin",
                  detail: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """Revoke `device_id`; the device row as it was before (its `status` says whether it was
    already revoked: then nothing changes and nothing is audited). NotFound for no such device;
    ValueError without a reason."""
    text = _check_reason(reason, required=True)
    with write_transaction(engine) as conn:
        row = conn.execute(sa.select(DEVICES).where(DEVICES.c.device_id == device_id)).mappings().first()
        if row is None:
            raise NotFound(f"no device {device_id}")
        if row["status"] != "revoked":
            conn.execute(DEVICES.update().where(DEVICES.c.device_id == device_id).values(status="revoked"))
            audit.append(conn, AuditEvent(action="admin", actor=actor, role=role, device=device_id, channel=channel,
                                          reason=text, detail={"event": "device_revoked",
                                                               "device_user": row["user_id"], **(detail or {})}))
        return dict(row)


def revoke_token(engine: sa.Engine, audit: AuditLog, token_id: str, *, actor: str, role: str | None = None,
                 channel: str = "cli", reason: str | None = None, now: float | None = None) -> bool:
    """Revoke the token `token_id` (its `jti`) from now on, even if it was never used: True when
    the token had been used (a session existed), False when it was unknown until now. Revoking
    twice keeps the first time and audits once."""
    if not isinstance(token_id, str) or not token_id.strip() or len(token_id) > 64:
        raise ValueError("a token id is a non-empty string of at most 64 characters")
    text = _check_reason(reason, required=False)
    at = int(time.time() if now is None else now)
    with write_transaction(engine) as conn:
        query = sa.select(SESSIONS.c.revoked_at, SESSIONS.c.user_id, SESSIONS.c.device_id) \
            .where(SESSIONS.c.token_id == token_id)
        known = conn.execute(query).first()
        if known is None:
            insert = (postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert)(SESSIONS)
            if conn.execute(insert.values(token_id=token_id, kind="unknown", last_used_at=at, revoked_at=at,
                                          revoked_by=actor).on_conflict_do_nothing()
                            .returning(SESSIONS.c.token_id)).first() is None:
                known = conn.execute(query).first()   # its first use came in meanwhile
        if known is not None and known.revoked_at is None:
            conn.execute(SESSIONS.update().where(SESSIONS.c.token_id == token_id)
                         .values(revoked_at=at, revoked_by=actor))
        if known is None or known.revoked_at is None:
            audit.append(conn, AuditEvent(
                action="admin", actor=actor, role=role, channel=channel, reason=text,
                device=known.device_id if known is not None else None,
                detail={"event": "token_revoked", "token_id": token_id,
                        "token_user": known.user_id if known is not None else None}))
    return known is not None
