"""The sync server's platform tables: devices, the dedupe ledger and stored scope descriptors.

In store/ (below auth/ and sync/) because both read them: auth/ checks a device's status and its
newest token, sync/ writes the ledger.

`fs_ledger` is the dedupe ledger of invariant 2: one row per processed `(device_id, seq)`,
written in the same transaction as the mutation's effect, holding its result. It stores no
field values (a result's `row` is read at delivery time), so it never holds PHI (invariant 7).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import sqlalchemy as sa

from fieldsync.store.tables import PLATFORM_PREFIX
from fieldsync.store.engine import create_tables

__all__ = ["DEVICES", "DEVICE_SECRETS", "DEVICE_TOKENS", "LEDGER", "MEDIA", "RECEIVED", "SCOPES", "SPOOL", "SPOOL_RELAY", "clear_received", "seq_run",
           "add_missing_columns", "create_sync_tables", "mark_received", "spool_depth", "note_pull", "note_push", "unnote_push", "sync_metadata", "unsettled"]

sync_metadata = sa.MetaData()

DEVICES = sa.Table(
    PLATFORM_PREFIX + "devices", sync_metadata,
    sa.Column("device_id", sa.String(36), primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("install_id", sa.String(64), nullable=False),
    sa.Column("platform", sa.String(128), nullable=True),
    sa.Column("app_version", sa.String(64), nullable=True),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="active"),  # active | revoked
    sa.Column("role", sa.String(64), nullable=True),                 # the role of its last request
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_contact_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("scope_hash", sa.String(32), nullable=True),           # what its data conforms to
    sa.Column("acked_cursor", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("served_cursor", sa.BigInteger, nullable=False, server_default="0"),  # highest cursor a pull gave it
    sa.Column("results_through", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("last_received_seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("rejected", sa.BigInteger, nullable=False, server_default="0"),  # permanent rejections so far
    sa.Column("reported", sa.Text, nullable=True),                   # JSON: the device's own counts at its last ack
    sa.UniqueConstraint("user_id", "install_id", name="uq_fs_devices_install"),
)

LEDGER = sa.Table(
    PLATFORM_PREFIX + "ledger", sync_metadata,
    sa.Column("device_id", sa.String(36), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("digest", sa.String(64), nullable=False),    # of the mutation as first processed
    sa.Column("status", sa.String(16), nullable=False),    # applied | rejected
    sa.Column("entity", sa.String(64), nullable=False),
    sa.Column("record_id", sa.String(64), nullable=False),
    sa.Column("op", sa.String(8), nullable=False),
    sa.Column("position", sa.BigInteger, nullable=True),   # of the change it made, if any
    sa.Column("version", sa.Integer, nullable=True),
    sa.Column("effect", sa.String(16), nullable=True),     # changed | unchanged | partial | discarded
    sa.Column("overridden", sa.Text, nullable=True),       # JSON list of field names
    # JSON {field: "server" | "device" | "unknown"}: where each overridden field's winning value came from
    sa.Column("overridden_by", sa.Text, nullable=True),
    sa.Column("problem", sa.String(64), nullable=True),    # rejection type name
    sa.Column("detail", sa.Text, nullable=True),
    sa.Column("errors", sa.Text, nullable=True),           # JSON [{field, reason}]
    sa.Column("current_version", sa.Integer, nullable=True),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    # a device's write checkpoint, max(position), is one index seek: without it every push and
    # pull read all of the device's results, a cost growing with its history
    sa.Index("ix_fs_ledger_device_position", "device_id", "position"),
)

SCOPES = sa.Table(
    PLATFORM_PREFIX + "scopes", sync_metadata,
    sa.Column("scope_hash", sa.String(32), primary_key=True),
    sa.Column("digests", sa.Text, nullable=False),         # JSON {entity: digest}
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)

# The newest device token of each device (docs/protocol.md §3.1): a registration replaces it in
# its transaction, and the session check refuses every other device token of the device
# (`superseded`), used or not, so a token carrying the user's old attributes stops working.
# A table of its own so that existing databases gain it with create_all.
DEVICE_TOKENS = sa.Table(
    PLATFORM_PREFIX + "device_tokens", sync_metadata,
    sa.Column("device_id", sa.String(36), primary_key=True),
    sa.Column("token_id", sa.String(64), nullable=False),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
)

# The device secret each device's store key is derived from (docs/device-store.md), wrapped by
# the key provider with the device id as encryption context: the database never holds it in
# clear (invariant 7), and a wrapped secret copied to another device's row does not unwrap.
DEVICE_SECRETS = sa.Table(
    PLATFORM_PREFIX + "device_secrets", sync_metadata,
    sa.Column("device_id", sa.String(36), primary_key=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
)

# Seqs received (in the queue) and not yet processed: a device's `unsettled` count, whatever
# the queue backend (SQS and brokers cannot count one device's messages). Rows are written
# before the batch is enqueued and deleted in the transaction that processes it.
RECEIVED = sa.Table(
    PLATFORM_PREFIX + "received", sync_metadata,
    sa.Column("device_id", sa.String(36), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
)

# The push spool (docs/operations.md "Outages"): push batches received while the push queue
# could not take them, sealed like a queue message (invariant 7: ciphertext only), in the
# order received. The relay (sync/spool.py) forwards them to the queue and deletes them; a
# device's later pushes join the spool while it holds any of its batches, so its batches reach
# the queue in order.
SPOOL = sa.Table(
    PLATFORM_PREFIX + "push_spool", sync_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("device_id", sa.String(36), nullable=False, index=True),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("spooled_at", sa.DateTime(timezone=True), nullable=False),
)

# Which process relays the spool: one at a time, so every device's batches leave in order.
SPOOL_RELAY = sa.Table(
    PLATFORM_PREFIX + "spool_relay", sync_metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("until", sa.Float, nullable=False),        # epoch seconds the lease runs to
)

# Media objects (docs/protocol.md §16): one row per reference `fsmedia:<uuid>`, bound to the
# user and device that first named it (in a push or an upload request) and to the record and
# field that first held it. Written by sync/apply.py in the push batch's transaction and by
# media/service.py; holds no file content, only where it is and its state.
MEDIA = sa.Table(
    PLATFORM_PREFIX + "media", sync_metadata,
    sa.Column("ref", sa.String(44), primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=False),
    sa.Column("device_id", sa.String(36), nullable=True),       # None: bound over REST
    sa.Column("entity", sa.String(64), nullable=True),          # None until a record names it
    sa.Column("field", sa.String(64), nullable=True),
    sa.Column("record_id", sa.String(64), nullable=True),
    sa.Column("state", sa.String(16), nullable=False, server_default="pending"),  # pending | available | failed
    sa.Column("content_type", sa.String(255), nullable=True),
    sa.Column("size", sa.BigInteger, nullable=True),
    sa.Column("phi", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("location", sa.String(600), nullable=True),       # the object's key in the store
    sa.Column("reason", sa.Text, nullable=True),                # why it failed
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
)


def spool_depth(conn: sa.Connection) -> tuple[int, int, Any]:
    """The push spool's (batches, devices, oldest spooled_at or None)."""
    row = conn.execute(sa.select(sa.func.count(), sa.func.count(sa.distinct(SPOOL.c.device_id)),
                                 sa.func.min(SPOOL.c.spooled_at))).one()
    return int(row[0]), int(row[1]), row[2]


def mark_received(conn: sa.Connection, device_id: str, seqs: Sequence[int]) -> None:
    """Record `seqs` as received and not yet processed (already recorded ones are kept)."""
    if not seqs:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    conn.execute(insert(RECEIVED).on_conflict_do_nothing(), [{"device_id": device_id, "seq": s} for s in seqs])


def seq_run(ordered: Sequence[int]) -> tuple[int, int] | None:
    """(first, last) of `ordered` (sorted, distinct integers) when they are a run without gaps, as
    a push's seqs mostly are: then they are looked up by BETWEEN, two parameters instead of
    hundreds to render and bind. None otherwise (an IN list)."""
    if ordered and ordered[-1] - ordered[0] == len(ordered) - 1:
        return ordered[0], ordered[-1]
    return None


# built once (the statement's cache key is not worked out again per push)
_CLEAR_RUN = RECEIVED.delete().where(RECEIVED.c.device_id == sa.bindparam("device"),
                                     RECEIVED.c.seq.between(sa.bindparam("first"), sa.bindparam("last")))


def clear_received(conn: sa.Connection, device_id: str, seqs: Sequence[int]) -> None:
    """Forget `seqs` of `device_id`: they are processed (or were never enqueued)."""
    ordered = sorted({s for s in seqs if isinstance(s, int) and not isinstance(s, bool)})
    for i in range(0, len(ordered), 500):
        chunk = ordered[i:i + 500]
        run = seq_run(chunk)
        if run is not None:
            conn.execute(_CLEAR_RUN, {"device": device_id, "first": run[0], "last": run[1]})
        else:
            conn.execute(RECEIVED.delete().where(RECEIVED.c.device_id == device_id, RECEIVED.c.seq.in_(chunk)))


def unsettled(conn: sa.Connection, device_id: str) -> int:
    """How many of the device's mutations are received and not yet processed."""
    return conn.execute(sa.select(sa.func.count()).select_from(RECEIVED)
                        .where(RECEIVED.c.device_id == device_id)).scalar_one()


def _greatest(conn: sa.Connection, *values: Any) -> sa.ColumnElement:
    """SQL GREATEST (SQLite spells it as the scalar max() of several arguments)."""
    return (sa.func.max if conn.dialect.name == "sqlite" else sa.func.greatest)(*values)


def _least(conn: sa.Connection, *values: Any) -> sa.ColumnElement:
    """SQL LEAST (SQLite: the scalar min())."""
    return (sa.func.min if conn.dialect.name == "sqlite" else sa.func.least)(*values)


def note_push(conn: sa.Connection, device_id: str, values: Mapping[str, Any], *,
              received_through: int | None = None) -> None:
    """Record a push on the device row: `values` (last contact, role, versions) and, when the
    push received new seqs, `received_through`, its highest, as `last_received_seq` (which never
    goes down)."""
    values = dict(values)
    if received_through is not None:
        values["last_received_seq"] = _greatest(conn, DEVICES.c.last_received_seq, received_through)
    conn.execute(DEVICES.update().where(DEVICES.c.device_id == device_id).values(**values))


def unnote_push(conn: sa.Connection, device_id: str, received_through: int, before: int) -> None:
    """Undo `note_push`'s `last_received_seq` when the push's batch could not be queued: back to
    `before`, unless a later push moved it since."""
    conn.execute(DEVICES.update().where(DEVICES.c.device_id == device_id,
                                        DEVICES.c.last_received_seq == received_through)
                 .values(last_received_seq=before))


def note_pull(conn: sa.Connection, device_id: str, values: Mapping[str, Any], *, served: int, acked: int) -> None:
    """Record a pull on the device row: `values` (last contact, role, versions, scope hash), the
    highest cursor `served` to it, and `acked`, the cursor it pulled from, as applied — never
    above a cursor served to it before. Both cursors only go up."""
    conn.execute(DEVICES.update().where(DEVICES.c.device_id == device_id).values(
        **values, served_cursor=_greatest(conn, DEVICES.c.served_cursor, served),
        acked_cursor=_greatest(conn, DEVICES.c.acked_cursor, _least(conn, acked, DEVICES.c.served_cursor))))


def create_sync_tables(engine: sa.Engine) -> None:
    """Create the sync tables when missing, and the nullable columns a later version added to
    them (safe to run again, from several servers)."""
    create_tables(engine, sync_metadata)
    add_missing_columns(engine, sync_metadata)
    add_missing_indexes(engine, sync_metadata)


def add_missing_indexes(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Create the indexes of `metadata`'s tables that a later version added (create_all makes
    them only with a new table; safe to run again, from several processes)."""
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        present = {ix["name"] for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name in present:
                continue
            try:
                with engine.begin() as conn:
                    columns = ", ".join(f'"{c.name}"' for c in index.columns)
                    conn.execute(sa.text(f'CREATE INDEX IF NOT EXISTS "{index.name}" ON "{table.name}" ({columns})'))
            except (sa.exc.OperationalError, sa.exc.ProgrammingError, sa.exc.IntegrityError) as exc:
                # PostgreSQL: another server created it between the check and here (IF NOT
                # EXISTS does not cover a creation still in flight); anything else is an error
                text = str(exc.orig if exc.orig is not None else exc).lower()
                if "already exists" not in text and "duplicate key" not in text:
                    raise


def add_missing_columns(engine: sa.Engine, metadata: sa.MetaData) -> None:
    """Add the nullable columns of `metadata`'s tables that a later version added (safe to run
    again, from several processes)."""
    inspector = sa.inspect(engine)
    for table in metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            assert column.nullable and column.server_default is None, f"{table.name}.{column.name} cannot be added"
            kind = column.type.compile(dialect=engine.dialect)
            exists = " IF NOT EXISTS" if engine.dialect.name == "postgresql" else ""
            try:
                with engine.begin() as conn:
                    conn.execute(sa.text(f'ALTER TABLE "{table.name}" ADD COLUMN{exists} "{column.name}" {kind}'))
            except sa.exc.OperationalError as exc:   # SQLite: another server added it just now
                if "duplicate column" not in str(exc):
                    raise
