"""The user directory's platform table, `fs_users`: who may log in, with which role and attributes.

In store/ (below auth/) because two rooms read it: auth/users.py keeps it (add, set, disable,
log in) and auth/sessions.py checks every request's token against it (a disabled user, or a
token issued before the user's role or attributes last changed, is refused: docs/access.md).

A row holds no password, only its scrypt hash (werkzeug's `scrypt:` format, salted), no PHI,
and no TOTP secret in clear: `totp_secret` holds it sealed under the key ring
(auth/totp_secrets.py; a row of before holds the base32 text until it is sealed).
`tokens_after` is the per-user revocation: tokens of the user issued before that time (whole
seconds since the epoch) are refused.
"""

from __future__ import annotations

import sqlalchemy as sa

from fieldsync.store.tables import PLATFORM_PREFIX
from fieldsync.store.engine import create_tables

__all__ = ["USERS", "create_user_tables", "directory_metadata"]

directory_metadata = sa.MetaData()
TOTP_SECRET_MAX = 255   # the sealed form is ~96 characters; the column held 64 before secrets were sealed

USERS = sa.Table(
    PLATFORM_PREFIX + "users", directory_metadata,
    sa.Column("user_id", sa.String(128), primary_key=True),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("attributes", sa.Text, nullable=False),             # JSON object, as the token carries them
    sa.Column("password_hash", sa.String(256), nullable=False),    # scrypt, salted; never the password
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("totp_secret", sa.String(TOTP_SECRET_MAX), nullable=True),   # sealed (auth/totp_secrets.py)
    sa.Column("totp_last_step", sa.BigInteger, nullable=True),     # the last accepted code's step: no replay
    sa.Column("tokens_after", sa.BigInteger, nullable=False),      # tokens issued before are refused
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)


def create_user_tables(engine: sa.Engine) -> None:
    """Create `fs_users` when missing, and widen a `totp_secret` column of before to hold a sealed
    secret (safe to run again, from several servers)."""
    create_tables(engine, directory_metadata)
    if engine.dialect.name != "postgresql":
        return   # SQLite does not enforce a VARCHAR length
    column = next(c for c in sa.inspect(engine).get_columns(USERS.name) if c["name"] == "totp_secret")
    length = getattr(column["type"], "length", None)
    if length is not None and length < TOTP_SECRET_MAX:
        with engine.begin() as conn:   # widening a varchar is a catalog change in PostgreSQL: no rewrite
            conn.execute(sa.text(f'ALTER TABLE "{USERS.name}" ALTER COLUMN totp_secret '
                                 f'TYPE VARCHAR({TOTP_SECRET_MAX})'))
