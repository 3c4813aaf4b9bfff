"""Token sessions: the idle timeout and revocation of bearer tokens (HIPAA 164.312(a)(2)(iii),
automatic logoff; 164.312(d), authentication).

A token's signature and expiry are checked statelessly (`fieldsync.auth.tokens`); this module
adds the state that a signature cannot carry. `fs_sessions` has one row per token id (`jti`),
written at the token's first use (a "session start") and holding when it was last used and
whether it was revoked. A token unused for longer than its idle limit is refused with reason
"idle" even before it expires; a token, or any token of a revoked device, is refused with
reason "revoked"; so is a token of a user the directory (auth/users.py) has disabled, or one
issued before the user's role, attributes or password last changed; a device token older than
its device's newest one (the device registered again) with reason "superseded". Issuing a token needs no database (`fieldsync token create` works offline):
until its first use a token's last use is its issue time.

Last use is written only when the stored value is `touch_every` seconds old or more (a minute
by default), not on every request, so a busy token costs one primary-key read per request and
one small write a minute. The price is that a token may be idled out up to `touch_every`
seconds early (its stored last use lags the real one by at most that); never late.

Every time is whole seconds since the epoch from an injected clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from fieldsync.auth.tokens import Principal
from fieldsync.errors import ConfigError, TokenError
from fieldsync.store.directory import USERS, create_user_tables
from fieldsync.store.engine import create_tables, write_transaction
from fieldsync.store.tables import PLATFORM_PREFIX
from fieldsync.store.sync_tables import DEVICE_TOKENS, DEVICES

__all__ = ["SESSIONS", "SessionPolicy", "Sessions", "create_session_tables"]

sessions_metadata = sa.MetaData()

SESSIONS = sa.Table(
    PLATFORM_PREFIX + "sessions", sessions_metadata,
    sa.Column("token_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(8), nullable=False),          # user | device | unknown (revoked unseen)
    sa.Column("user_id", sa.String(128), nullable=True),
    sa.Column("device_id", sa.String(36), nullable=True),
    sa.Column("issued_at", sa.BigInteger, nullable=True),
    sa.Column("expires_at", sa.BigInteger, nullable=True),     # rows are swept a day after this
    sa.Column("last_used_at", sa.BigInteger, nullable=False),
    sa.Column("revoked_at", sa.BigInteger, nullable=True),
    sa.Column("revoked_by", sa.String(128), nullable=True),
)

DAY = 86400
SWEEP_EVERY = 1000   # session starts between two sweeps of expired rows (per process)


def create_session_tables(engine: sa.Engine) -> None:
    """Create `fs_sessions`, and the user directory it checks, when missing (safe to run again,
    from several servers)."""
    create_tables(engine, sessions_metadata)
    create_user_tables(engine)


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    """Idle limits in seconds, per kind of token, and how stale a stored last use may get."""

    user_idle: int = 900                # TOKEN_IDLE_SECONDS: HIPAA automatic logoff
    device_idle: int = 14 * DAY         # DEVICE_TOKEN_IDLE_SECONDS: devices are offline for days
    touch_every: int = 60

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "SessionPolicy":
        policy = cls(user_idle=int(config.get("TOKEN_IDLE_SECONDS", cls.user_idle)),
                     device_idle=int(config.get("DEVICE_TOKEN_IDLE_SECONDS", cls.device_idle)))
        if policy.user_idle <= 0 or policy.device_idle <= 0:
            raise ConfigError("TOKEN_IDLE_SECONDS and DEVICE_TOKEN_IDLE_SECONDS must be positive "
                              f"(got {policy.user_idle} and {policy.device_idle})")
        return policy

    def idle_limit(self, principal: Principal) -> int:
        return self.device_idle if principal.device_id is not None else self.user_idle


# Called inside the write transaction that records a session start, e.g. to append its audit
# entry there: if it raises, the session is not recorded and the request fails.
OnStart = Callable[[sa.Connection], Any]


class Sessions:
    """The session check every authenticated request passes after its token verified."""

    def __init__(self, engine: sa.Engine, policy: SessionPolicy | None = None, *,
                 clock: Callable[[], float] = time.time):
        self.engine = engine
        self.policy = policy or SessionPolicy()
        self.clock = clock
        self._starts = 0

    def now(self) -> int:
        return int(self.clock())

    def admit(self, principal: Principal, *, on_start: OnStart | None = None) -> bool:
        """Refuse a revoked or idle token (TokenError "revoked" / "idle"); otherwise record its
        use. True when this was the token's first use (a session started)."""
        now = self.now()
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(SESSIONS.c.last_used_at, SESSIONS.c.revoked_at)
                               .where(SESSIONS.c.token_id == principal.token_id)).first()
            device_status = newest_token = None
            if principal.device_id is not None:
                device = conn.execute(sa.select(DEVICES.c.status, DEVICE_TOKENS.c.token_id)
                                      .select_from(DEVICES.outerjoin(DEVICE_TOKENS,
                                                                     DEVICE_TOKENS.c.device_id == DEVICES.c.device_id))
                                      .where(DEVICES.c.device_id == principal.device_id)).first()
                if device is not None:
                    device_status, newest_token = device
            user = conn.execute(sa.select(USERS.c.enabled, USERS.c.tokens_after)
                                .where(USERS.c.user_id == principal.user_id)).first()
        if user is not None and not user.enabled:
            raise TokenError("revoked", "the token's user was disabled")
        if user is not None and principal.issued_at < user.tokens_after:
            raise TokenError("revoked", "the user's role, attributes or password changed since this token was "
                             "issued; sign in again")
        if (row is not None and row.revoked_at is not None) or device_status == "revoked":
            raise TokenError("revoked", "the token was revoked" if device_status != "revoked"
                             else "the token's device was revoked by an administrator")
        if newest_token is not None and newest_token != principal.token_id:
            # the device registered again since this token was issued (protocol §3.1)
            raise TokenError("superseded", "the device registered again: a newer device token replaces this one")
        last_used = row.last_used_at if row is not None else principal.issued_at
        limit = self.policy.idle_limit(principal)
        if now - last_used > limit:
            raise TokenError("idle", f"the token was unused for more than {limit} s; sign in again")
        if row is None:
            return self._start(principal, now, on_start)
        if now - last_used >= self.policy.touch_every:
            with write_transaction(self.engine) as conn:
                conn.execute(SESSIONS.update().where(SESSIONS.c.token_id == principal.token_id,
                                                     SESSIONS.c.last_used_at < now).values(last_used_at=now))
        return False

    def _start(self, principal: Principal, now: int, on_start: OnStart | None) -> bool:
        with write_transaction(self.engine) as conn:
            # concurrent first uses (several requests of a new token at once, on several servers):
            # the insert is atomic and only the one that inserts starts the session
            insert = (postgresql_insert if conn.dialect.name == "postgresql" else sqlite_insert)(SESSIONS)
            inserted = conn.execute(insert.values(
                token_id=principal.token_id, kind=principal.kind, user_id=principal.user_id,
                device_id=principal.device_id, issued_at=principal.issued_at, expires_at=principal.expires_at,
                last_used_at=now).on_conflict_do_nothing(index_elements=[SESSIONS.c.token_id])
                .returning(SESSIONS.c.token_id)).first()   # (rowcount is -1 for this on psycopg)
            if inserted is None:
                revoked = conn.execute(sa.select(SESSIONS.c.revoked_at)
                                       .where(SESSIONS.c.token_id == principal.token_id)).scalar()
                if revoked is not None:   # revoked between our read and this write
                    raise TokenError("revoked", "the token was revoked")
                return False
            if on_start is not None:
                on_start(conn)
        self._starts += 1
        if self._starts % SWEEP_EVERY == 0:
            self.sweep()
        return True

    def sweep(self) -> int:
        """Delete the rows of tokens expired for a day (an expired token is refused anyway)."""
        with write_transaction(self.engine) as conn:
            return conn.execute(SESSIONS.delete().where(SESSIONS.c.expires_at < self.now() - DAY)).rowcount

