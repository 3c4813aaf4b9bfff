"""The user directory's platform table, `fs_users`: who may log in, with which role and attributes.

In store/ (below auth/) because two rooms read it: auth/users.py keeps it (add, set, disable,
log in) and auth/sessions.py checks every request's token against it (a disabled user, or a
token issued before the user's role or attributes last changed, is refused: docs/access.md).

A row holds no password, only its scrypt hash (werkzeug's `scrypt:` format, salted), and no
PHI. `tokens_after` is the per-user revocation: tokens of the user issued before that time
(whole seconds since the epoch) are refused.
"""

from __future__ import annotations

import sqlalchemy as sa

from fieldsync.store.tables import PLATFORM_PREFIX
from fieldsync.store.engine import create_tables

__all__ = ["USERS", "create_user_tables", "directory_metadata"]

directory_metadata = sa.MetaData()

USERS = sa.Table(
    PLATFORM_PREFIX + "users", directory_metadata,
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),             # JSON object, as the token carries them
    sa.Column("password_hash", sa.String(256), nullable=False),    # scrypt, salted; never the password
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("totp_secret", sa.String(64), nullable=True),        # base32 (RFC 6238), when enrolled
    sa.Column("totp_last_step", sa.BigInteger, nullable=True),     # the last accepted code's step: no replay
    sa.Column("tokens_after", sa.BigInteger, nullable=False),      # tokens issued before are refused
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)


def create_user_tables(engine: sa.Engine) -> None:
    """Create `fs_users` when missing (safe to run again, from several servers)."""
    create_tables(engine, directory_metadata)
