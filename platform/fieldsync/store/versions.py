"""The applied model versions: every row of `fs_schema` (store/migrate.py writes them), read back.

A version is one applied migration: its number (the row id, rising), schema_version, fingerprint,
the definitions' YAML texts, who applied it, when, and the plan's steps. Running servers poll
`latest_version_id` to swap their model without a restart (api/app.py); `fieldsync versions`
lists and shows them and `fieldsync rollback N` applies the texts of version N again.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from fieldsync.store.migrate import SCHEMA_TABLE, schema_table

__all__ = ["latest_version_id", "list_versions", "read_version"]

# built once: constructing the Table per call would cost more than the query (about 1 ms)
_LATEST = sa.select(sa.func.max(sa.column("id"))).select_from(sa.table(SCHEMA_TABLE))


def latest_version_id(conn: sa.Connection) -> int | None:
    """The number of the newest applied version, None before the first migration. One indexed
    read of the primary key: cheap enough to run before every request."""
    try:
        return conn.execute(_LATEST).scalar()
    except sa.exc.DBAPIError:
        # fs_schema does not exist yet (a database never migrated)
        conn.rollback()
        if sa.inspect(conn).has_table(SCHEMA_TABLE):
            raise
        return None


def list_versions(conn: sa.Connection) -> list[dict[str, Any]]:
    """Every applied version, oldest first, without the definitions' texts."""
    if not sa.inspect(conn).has_table(SCHEMA_TABLE):
        return []
    table = _reflected(conn)
    columns = [c for c in table.c if c.name not in ("definitions", "tables")]
    return [{"applied_by": None, **r} for r in conn.execute(sa.select(*columns).order_by(table.c.id)).mappings()]


def read_version(conn: sa.Connection, number: int) -> dict[str, Any] | None:
    """Version `number` with everything recorded (definitions may be None), or None."""
    if not sa.inspect(conn).has_table(SCHEMA_TABLE):
        return None
    table = _reflected(conn)
    row = conn.execute(sa.select(table).where(table.c.id == number)).mappings().first()
    return {"definitions": None, "applied_by": None, **row} if row is not None else None


def _reflected(conn: sa.Connection) -> sa.Table:
    # a database migrated by an older release lacks the newer columns until its next migration
    present = {c["name"] for c in sa.inspect(conn).get_columns(SCHEMA_TABLE)}
    full = schema_table()
    return sa.table(SCHEMA_TABLE, *(sa.column(c.name, c.type) for c in full.c if c.name in present))

