"""The server's change log: every record write, numbered in commit order (invariant 3).

Differential pull reads "changes after cursor C". That is only gap-free if a change numbered
P can never become visible after a reader has moved its cursor past P. A PostgreSQL sequence
breaks this: numbers are handed out at insert time, so a transaction holding 10 can commit
after one holding 11 has been pulled, and the device never sees 10 (DESIGN.md §4).

Positions here come from a one-row counter, `UPDATE fs_position SET pos = pos + n RETURNING pos`,
run inside the writing transaction. The row lock it takes is held until commit, so the next
writer cannot take a position before this one has committed: positions are ordered by commit.
PostgreSQL makes a commit visible before it releases the transaction's locks, so once a reader
sees position P every position below P is visible too. A rolled-back write also rolls back its
counter increment, so positions have no holes (until `compact` removes superseded changes).
On SQLite, BEGIN IMMEDIATE already serialises writers; the counter keeps one code path.

Keep the position lock short: take positions as late in a transaction as possible (the batched
`record_changes` once, just before commit), and take it after any record locks, never before,
so writers always lock in the same order.

Tables (platform tables, prefix `fs_`): `fs_position` (one row: the last position handed out and
the compaction watermark) and `fs_changes` (one row per change, the record's full wire row as
JSON; a later piece computes field patches from it). Encrypted fields are stored in their
encoded form (the codec the RecordStore uses), never as plaintext (invariant 7).
"""

from __future__ import annotations

import datetime as dt
import json
from contextlib import contextmanager
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import sqlalchemy as sa

from fieldsync.defs.model import Entity
from fieldsync.defs.values import field_map
from fieldsync.errors import ChangeLogMissing, KeyShredded
from fieldsync import json_wire
from fieldsync.store.bulk import insert_many
from fieldsync.store.codec import FieldCodec, PlainJsonCodec
from fieldsync.ids import utc_now
from fieldsync.store.tables import PLATFORM_PREFIX
from fieldsync.store.engine import create_tables

__all__ = [
    "CHANGES_TABLE", "POSITION_TABLE", "Change", "ChangeLog", "ChangeLogMissing", "attach_changelog",
    "changelog_metadata", "changelog_tables", "changes_after", "compact", "count_after",
    "create_changelog_tables", "decode_row", "first_position_since", "head_position",
    "oldest_retained_position", "purge_before", "record_history",
]

POSITION_TABLE = PLATFORM_PREFIX + "position"
CHANGES_TABLE = PLATFORM_PREFIX + "changes"
OPS = ("create", "update", "delete")
_COUNTER_ID = 1  # fs_position holds exactly this one row


# -- tables ------------------------------------------------------------------------------------

def changelog_tables(metadata: sa.MetaData | None = None) -> tuple[sa.Table, sa.Table]:
    """`(fs_position, fs_changes)` added to `metadata` (a new MetaData when None).

    Returns the existing tables when `metadata` already holds them.
    """
    metadata = metadata if metadata is not None else sa.MetaData()
    if POSITION_TABLE in metadata.tables:
        return metadata.tables[POSITION_TABLE], metadata.tables[CHANGES_TABLE]
    position = sa.Table(
        POSITION_TABLE, metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("pos", sa.BigInteger, nullable=False),            # the last position handed out
        # every change at this position or later is retained (compact() moves it up)
        sa.Column("retained_from", sa.BigInteger, nullable=False),
        sa.CheckConstraint(f"id = {_COUNTER_ID}", name="ck_fs_position_one_row"),
    )
    changes = sa.Table(
        CHANGES_TABLE, metadata,
        # on SQLite an INTEGER PRIMARY KEY is the rowid: reading "after a position" is a range
        # scan of the table itself, not of a separate index
        sa.Column("position", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=False),
        sa.Column("entity", sa.String(64), nullable=False),
        sa.Column("record_id", sa.String(36), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("row", sa.Text, nullable=False),                  # the record's wire row, JSON
        # the row before this change (NULL for a create): pulls decide from it whether a device
        # held the record at its cursor (removals, patches; docs/sync-design.md decision 7)
        sa.Column("prev", sa.Text, nullable=True),
        # who wrote it: a device id (with the mutation's seq) or NULL for the server (REST, admin)
        sa.Column("origin", sa.String(36), nullable=True),
        sa.Column("seq", sa.BigInteger, nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        # compaction looks for a later change of the same record
        sa.Index("ix_fs_changes_record", "entity", "record_id", "position"),
    )
    return position, changes


def changelog_metadata() -> sa.MetaData:
    """A MetaData holding only the change log tables."""
    metadata = sa.MetaData()
    changelog_tables(metadata)
    return metadata


_POSITION, _CHANGES = changelog_tables()


def create_changelog_tables(engine: sa.Engine) -> None:
    """Create the change log tables and the counter row when missing (safe to run again)."""
    create_tables(engine, changelog_metadata())
    with engine.connect() as conn:
        exists = conn.execute(sa.select(_POSITION.c.id)).first() is not None
    if exists:
        return
    try:
        with engine.begin() as conn:
            conn.execute(_POSITION.insert().values(id=_COUNTER_ID, pos=0, retained_from=1))
    except sa.exc.IntegrityError:
        pass  # another server inserted the row first; one row is all we need


# -- changes -----------------------------------------------------------------------------------

class Change(NamedTuple):
    """One logged write: `row` is the record's wire row after the write (tombstone for delete),
    with encrypted fields still encoded (see `decode_row`). A named tuple: immutable, and built
    three times faster than a frozen dataclass (a pull page builds a thousand)."""

    position: int
    entity: str
    record_id: str
    version: int
    op: str
    row: dict[str, Any]
    changed_at: dt.datetime
    prev: dict[str, Any] | None = None
    origin: str | None = None
    seq: int | None = None


_AS_IS: dict[int, tuple[Entity, bool]] = {}


def _logged_as_is(entity: Entity) -> bool:
    """Whether `entity`'s wire rows are logged as they are: no inline children to leave out, no
    encrypted field to encode (worked out once per entity object)."""
    found = _AS_IS.get(id(entity))
    if found is None or found[0] is not entity:
        if len(_AS_IS) > 4096:
            _AS_IS.clear()
        found = _AS_IS[id(entity)] = (entity, not entity.children and not entity.has_encrypted)
    return found[1]


def _encode_row(entity: Entity, record: Mapping[str, Any], codec: FieldCodec) -> str:
    if type(record) is dict and _logged_as_is(entity):
        return json_wire.dumps_sorted(record)
    known = field_map(entity)
    # children created inline are logged as changes of their own
    row = {k: v for k, v in record.items() if not isinstance(v, list) or k in known}
    if entity.has_encrypted:
        subject = record.get(entity.subject) if entity.subject else None
        stored = getattr(record, "stored", None)   # the ciphertexts just written (records.StoredRow)
        for f in entity.fields:
            if f.encrypted and row.get(f.name) is not None:
                same = stored.get(f.name) if stored is not None else None
                # the table's ciphertext is bound to the same entity, record and field
                row[f.name] = same if same is not None else codec.encode(entity, f, row[f.name], record["id"], subject)
    return json_wire.dumps_sorted(row)


def decode_row(entity: Entity, row: Mapping[str, Any], codec: FieldCodec) -> dict[str, Any]:
    """`row` from a Change with its encrypted fields decoded to their wire values (None for a
    value whose key was shredded)."""
    out = dict(row)
    for f in entity.fields:
        if f.encrypted and out.get(f.name) is not None:
            try:
                out[f.name] = codec.decode(entity, f, out[f.name], row["id"])
            except KeyShredded:
                out[f.name] = None
    return out


@dataclass
class ChangeLog:
    """Appends changes, numbered in commit order. A RecordStore given one logs each write it
    makes (`RecordStore.changelog`).

    `codec` must be the RecordStore's codec: it encodes encrypted fields before they are stored.
    """

    codec: FieldCodec = dc_field(default_factory=PlainJsonCodec)
    clock: Callable[[], dt.datetime] = utc_now

    def record_changes(self, conn: sa.Connection, changes: Sequence[tuple], *,
                       origin: str | None = None, seqs: Sequence[int | None] | None = None) -> list[int]:
        """Log `changes` — `(entity, op, record)` or `(entity, op, record, prev)` each — in
        `conn`'s open write transaction and return their positions, consecutive and in the
        given order. One counter update takes all of them, so a batch of 500 mutations costs one
        row lock, not 500. `origin` is the writing device (None: the server); `seqs` its
        mutation seq per change."""
        if not changes:
            return []
        for change in changes:
            if change[1] not in OPS:
                raise ValueError(f"unknown change op {change[1]!r}")
        last = self._take_positions(conn, len(changes))
        first = last - len(changes) + 1
        now = self.clock()
        rows = []
        for i, change in enumerate(changes):
            entity, op, record = change[0], change[1], change[2]
            prev = change[3] if len(change) > 3 else None
            rows.append({"position": first + i, "entity": entity.name, "record_id": record["id"],
                         "version": record["version"], "op": op,
                         "row": _encode_row(entity, record, self.codec),
                         "prev": _encode_row(entity, prev, self.codec) if prev is not None else None,
                         "origin": origin, "seq": seqs[i] if seqs is not None else None,
                         "changed_at": now})
        insert_many(conn, _CHANGES, rows)
        return [r["position"] for r in rows]

    def _take_positions(self, conn: sa.Connection, n: int) -> int:
        # invariant 3: commit-ordered positions. The row lock taken here is held until this
        # transaction ends, so no other writer takes a position before this one commits.
        last = conn.execute(_TAKE_POSITIONS, {"n": n}).scalar_one_or_none()
        if last is None:
            raise ChangeLogMissing("fs_position has no counter row; run create_changelog_tables")
        return last


# built once: the statement of every logged write (its cache key is not worked out again)
_TAKE_POSITIONS = (_POSITION.update().where(_POSITION.c.id == _COUNTER_ID)
                   .values(pos=_POSITION.c.pos + sa.bindparam("n", type_=sa.BigInteger)).returning(_POSITION.c.pos))


def attach_changelog(store: Any, clock: Callable[[], dt.datetime] | None = None) -> ChangeLog:
    """A ChangeLog with `store`'s codec, made the change log `store` (a RecordStore) writes."""
    log = ChangeLog(codec=store.codec, clock=clock or utc_now)
    store.changelog = log
    return log


# -- reading -----------------------------------------------------------------------------------

@contextmanager
def _connection(conn_or_engine: sa.Connection | sa.Engine) -> Iterator[sa.Connection]:
    if isinstance(conn_or_engine, sa.Engine):
        with conn_or_engine.connect() as conn:
            yield conn
    else:
        yield conn_or_engine


def _as_utc(value: dt.datetime) -> dt.datetime:
    # SQLite keeps no zone; every time is stored in UTC
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def head_position(conn_or_engine: sa.Connection | sa.Engine) -> int:
    """The last position handed out and committed (as seen by this connection)."""
    with _connection(conn_or_engine) as conn:
        pos = conn.execute(sa.select(_POSITION.c.pos).where(_POSITION.c.id == _COUNTER_ID)).scalar_one_or_none()
    if pos is None:
        raise ChangeLogMissing("fs_position has no counter row; run create_changelog_tables")
    return pos


def _where_after(cursor: int, entities: Iterable[str] | None) -> list[sa.ColumnElement]:
    where = [_CHANGES.c.position > cursor]
    if entities is not None:
        # `entity || ''` keeps planners on the position range: with the bare column SQLite
        # picks the (entity, record_id, position) index, reads every change of those entities
        # and sorts them, whatever the cursor — O(log size) per page becomes O(size)
        where.append((_CHANGES.c.entity + "").in_(sorted(set(entities))))
    return where


def changes_after(conn_or_engine: sa.Connection | sa.Engine, cursor: int, limit: int,
                  entities: Iterable[str] | None = None) -> tuple[list[Change], int, bool]:
    """Up to `limit` changes with position > `cursor`, oldest first, as
    `(changes, next_cursor, has_more)`.

    `entities` keeps only changes of those entities. When nothing more matches, `next_cursor`
    moves up to the head position read before the query, so a reader filtering on quiet
    entities does not rescan the same positions: every position up to that head had committed
    when it was read (commit order), so none of its entities' changes can still appear.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    with _connection(conn_or_engine) as conn:
        head = head_position(conn) if entities is not None else None
        query = (sa.select(*_RAW_TIME_COLUMNS).where(*_where_after(cursor, entities))
                 .order_by(_CHANGES.c.position).limit(limit + 1))
        rows = conn.execute(query).all()
    has_more = len(rows) > limit
    rows = rows[:limit]
    changes = _changes(rows)
    next_cursor = changes[-1].position if changes else cursor
    if head is not None and not has_more:
        next_cursor = max(next_cursor, head)
    return changes, next_cursor, has_more


# fs_changes' columns in table order, `changed_at` as the driver gives it: SQLite's text is read
# by `datetime.fromisoformat` (in C) instead of SQLAlchemy's regular expression, a tenth of
# the cost on a page of a thousand changes
_RAW_TIME_COLUMNS = tuple(sa.type_coerce(c, sa.String).label(c.name) if c.name == "changed_at" else c
                          for c in _CHANGES.columns)


def _change(r: Sequence[Any]) -> Change:
    """A Change from a row of `select(fs_changes)` (its columns in table order; `changed_at` a
    datetime, or text as SQLite stores it when read through `_RAW_TIME_COLUMNS`)."""
    position, entity, record_id, version, op, row, prev, origin, seq, changed_at = r
    if isinstance(changed_at, str):
        changed_at = dt.datetime.fromisoformat(changed_at)
    return Change(position, entity, record_id, version, op, json_wire.loads(row), _as_utc(changed_at),
                  json_wire.loads(prev) if prev is not None else None, origin, seq)


def _changes(rows: Sequence[Sequence[Any]]) -> list[Change]:
    """`_change` of each of `rows`, their `row` and `prev` texts read by one JSON parse of the
    page: a thousand changes cost one call instead of two thousand (same values: each text is
    an element of the array, and `json_wire.loads` gives what `json.loads` would)."""
    texts = []
    for r in rows:
        texts.append(r[5])
        if r[6] is not None:
            texts.append(r[6])
    if not texts:
        return []
    values = iter(json_wire.loads("[" + ",".join(texts) + "]"))
    out = []
    stored = when = None
    for position, entity, record_id, version, op, _, prev, origin, seq, changed_at in rows:
        if changed_at != stored:   # a batch's changes share one time: parse it once
            stored, when = changed_at, _as_utc(dt.datetime.fromisoformat(changed_at)
                                              if isinstance(changed_at, str) else changed_at)
        out.append(Change(position, entity, record_id, version, op, next(values), when,
                          next(values) if prev is not None else None, origin, seq))
    return out


def record_history(conn: sa.Connection, entity: str, record_id: str, after_version: int) -> list[Change]:
    """The retained changes of one record with a version above `after_version`, oldest first
    (conflict detection: who wrote the record since a device's base version)."""
    rows = conn.execute(sa.select(_CHANGES).where(_CHANGES.c.entity == entity, _CHANGES.c.record_id == record_id,
                                                  _CHANGES.c.version > after_version)
                        .order_by(_CHANGES.c.position))
    return [_change(r) for r in rows]


def count_after(conn_or_engine: sa.Connection | sa.Engine, cursor: int,
                entities: Iterable[str] | None = None) -> int:
    """How many changes lie after `cursor` (for progress reports)."""
    with _connection(conn_or_engine) as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(_CHANGES)
                            .where(*_where_after(cursor, entities))).scalar_one()


# -- compaction --------------------------------------------------------------------------------

def compact(conn: sa.Connection, before_position: int) -> int:
    """Delete changes below `before_position` that a later change of the same record
    supersedes; return how many were deleted. The latest change of every record (tombstones
    included) stays, so `changes_after(0)` still replays to the final state; what is lost is
    the per-change history a patch needs, which `oldest_retained_position` reports.
    Run it in a write transaction; it moves the watermark up as its last statement so the
    counter row is locked only briefly."""
    later = _CHANGES.alias("later")
    superseded = sa.exists().where(later.c.entity == _CHANGES.c.entity,
                                   later.c.record_id == _CHANGES.c.record_id,
                                   later.c.position > _CHANGES.c.position)
    deleted = conn.execute(_CHANGES.delete().where(_CHANGES.c.position < before_position, superseded)).rowcount
    conn.execute(_POSITION.update().where(_POSITION.c.id == _COUNTER_ID,
                                          _POSITION.c.retained_from < before_position)
                 .values(retained_from=before_position))
    return deleted


def purge_before(conn: sa.Connection, before_position: int) -> int:
    """Retention (docs/sync-design.md decision 8): delete every change below `before_position`
    and move the watermark there. A device whose cursor is below `before_position - 1` can no
    longer be served by the stream and gets a typed reset. Returns how many were deleted."""
    deleted = conn.execute(_CHANGES.delete().where(_CHANGES.c.position < before_position)).rowcount
    conn.execute(_POSITION.update().where(_POSITION.c.id == _COUNTER_ID,
                                          _POSITION.c.retained_from < before_position)
                 .values(retained_from=before_position))
    return deleted


def first_position_since(conn: sa.Connection, since: dt.datetime) -> int | None:
    """The lowest position of a change made at or after `since` (None when there is none)."""
    return conn.execute(sa.select(sa.func.min(_CHANGES.c.position))
                        .where(_CHANGES.c.changed_at >= since)).scalar_one_or_none()


def oldest_retained_position(conn_or_engine: sa.Connection | sa.Engine) -> int:
    """The smallest position P from which every change is kept: a reader whose cursor is
    >= P - 1 sees each change (patch-able history); an older cursor still converges from the
    latest rows, but must be sent full rows instead of patches."""
    with _connection(conn_or_engine) as conn:
        value = conn.execute(sa.select(_POSITION.c.retained_from)
                             .where(_POSITION.c.id == _COUNTER_ID)).scalar_one_or_none()
    if value is None:
        raise ChangeLogMissing("fs_position has no counter row; run create_changelog_tables")
    return value
