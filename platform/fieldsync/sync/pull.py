"""Assembling pull pages: the snapshot and rescope phases from the tables, the stream from the
change log (docs/sync-design.md decisions 6 and 7, docs/protocol.md §6).

Every page is read in one read transaction, so the rows, the head and the change-log range it
reports belong together. Pages are idempotent for the device: a page it did not commit is pulled
again with its old cursor.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa

from fieldsync.defs.access import access_rule
from fieldsync.defs.model import Entity
from fieldsync.defs.values import uuid_text
from fieldsync.errors import InvalidResume, SyncReset
from fieldsync.store.changelog import Change, changes_after, decode_row, head_position, oldest_retained_position
from fieldsync.store.raw_rows import raw_time_columns
from fieldsync.store.records import RecordStore
from fieldsync.sync.apply import result_to_wire
from fieldsync.sync.scope import DeviceScope, compile_predicate
from fieldsync.store.sync_tables import LEDGER, SCOPES
from fieldsync.untrusted import load_json

__all__ = ["PullRequest", "SyncReset", "phase_entities", "remember_digests", "InvalidResume", "ledger_rows", "pull_page", "render_results", "results_for",
           "readable_row", "snapshot_query", "write_checkpoint", "remember_scope"]

MAX_RESULTS_PER_PAGE = 1000


@dataclass
class PullRequest:
    device_id: str
    cursor: int
    resume: str | None = None
    scope_hash: str | None = None
    limit: int = 1000
    results_after: int = 0
    refetch: list[dict[str, str]] = dc_field(default_factory=list)


# -- resume tokens -----------------------------------------------------------------------------

def _sign(secret: bytes, body: str) -> str:
    return base64.urlsafe_b64encode(hmac.new(secret, body.encode(), hashlib.sha256).digest()[:18]).decode()


def encode_resume(secret: bytes, state: Mapping[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(state, separators=(",", ":"), sort_keys=True).encode()).decode()
    return f"r1.{body}.{_sign(secret, body)}"


def decode_resume(secret: bytes, token: str) -> dict[str, Any]:
    try:
        prefix, body, signature = token.split(".")
        if prefix != "r1" or not hmac.compare_digest(_sign(secret, body), signature):
            raise ValueError
        return load_json(base64.urlsafe_b64decode(body))
    except (ValueError, TypeError, AttributeError):
        raise InvalidResume("the resume token was not issued by this server") from None


# -- helpers -----------------------------------------------------------------------------------

def remember_scope(conn: sa.Connection, scope: DeviceScope, now) -> None:
    """Store the scope's digests under its hash, so a later pull can tell what changed."""
    if conn.execute(sa.select(SCOPES.c.scope_hash).where(SCOPES.c.scope_hash == scope.hash)).first() is None:
        try:
            with conn.begin_nested():
                conn.execute(SCOPES.insert().values(scope_hash=scope.hash, digests=json.dumps(scope.digests),
                                                    created_at=now))
        except sa.exc.IntegrityError:
            pass  # another request stored it first


def remember_digests(conn: sa.Connection, scope_hash: str, digests: Mapping[str, str], now) -> None:
    """Store `digests` under `scope_hash` (a scope a device holds part-way through a phase)."""
    if conn.execute(sa.select(SCOPES.c.scope_hash).where(SCOPES.c.scope_hash == scope_hash)).first() is None:
        try:
            with conn.begin_nested():
                conn.execute(SCOPES.insert().values(scope_hash=scope_hash, digests=json.dumps(dict(digests)),
                                                    created_at=now))
        except sa.exc.IntegrityError:
            pass  # another request stored it first


def _old_digests(conn: sa.Connection, scope_hash: str | None) -> dict[str, str]:
    if not scope_hash:
        return {}
    raw = conn.execute(sa.select(SCOPES.c.digests).where(SCOPES.c.scope_hash == scope_hash)).scalar_one_or_none()
    return json.loads(raw) if raw else {}


def readable_row(store: RecordStore, entity: Entity, wire: Mapping[str, Any] | None, scope: DeviceScope,
                 conn: sa.Connection) -> dict[str, Any] | None:
    """`wire` as the device's user may read it (visible fields and system members), None when
    the role may not read it. Used for results: a device sees its own pushed records even for
    push-only entities, within its role's rules."""
    return _Readable(store, scope, conn).row(entity, wire)


class _Readable:
    """`readable_row` for the many rows of one answer: each entity's effective rule looked up
    once, each parent read and judged once."""

    def __init__(self, store: RecordStore, scope: DeviceScope, conn: sa.Connection):
        self.store, self.scope, self.conn = store, scope, conn
        self._rules: dict[str, Any] = {}   # entity -> _judge's answer
        self._parents: dict[tuple[str, Any], bool] = {}

    def row(self, entity: Entity, wire: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if wire is None:
            return None
        if wire.get("deleted"):
            return {"id": wire["id"], "version": wire["version"], "deleted": True}
        judged = self._rules.get(entity.name)
        if judged is None:
            judged = self._rules[entity.name] = self._judge(entity)
        if judged is False:
            return None
        predicates, names = judged
        for predicate in predicates:
            if not predicate(wire):
                return None
        if entity.parent is not None and not self._parent_readable(entity.parent, wire.get(entity.parent_field)):
            return None
        out = {name: wire.get(name) for name in names}
        out.update(id=wire["id"], version=wire["version"], created_at=wire.get("created_at"),
                   updated_at=wire.get("updated_at"), deleted=False)
        return out

    def _judge(self, entity: Entity) -> tuple[list[Callable[[Mapping[str, Any]], bool]], tuple[str, ...]] | bool:
        """False when the role may not read `entity`; else the predicates a row must meet (the
        role's row filter, and for a top-level entity its sync scope), compiled once with
        `ex.evaluate`'s semantics, and the visible field names."""
        rule = access_rule(self.store.model, entity, self.scope.principal.role)   # the effective rule
        if rule is None or not rule.can("read"):
            return False
        perm, user = rule.permission, self.scope.user
        predicates = []
        if perm.row_filter is not None:
            predicates.append(compile_predicate(perm.row_filter, user))
        if entity.parent is None and entity.sync.scope is not None:
            predicates.append(compile_predicate(entity.sync.scope, user))
        names = tuple(f.name for f in entity.fields if perm.visible is None or f.name in perm.visible)
        return predicates, names

    def _parent_readable(self, name: str, parent_id: Any) -> bool:
        # a child is readable only under a live, readable parent: a deleted parent's tombstone
        # must not make its orphaned children visible (they would come back to the device)
        key = (name, parent_id)
        if key not in self._parents:
            parent = self.store.model.entity(name)
            table = self.store.table(parent)
            row = self.conn.execute(sa.select(table).where(table.c.id == parent_id)).mappings().first()
            self._parents[key] = row is not None and not row["deleted"] and self.row(
                parent, self.store.to_wire_row(parent, row)) is not None
        return self._parents[key]


def results_for(conn: sa.Connection, store: RecordStore, scope: DeviceScope, device_id: str, after_seq: int,
                limit: int = MAX_RESULTS_PER_PAGE) -> tuple[list[dict[str, Any]], bool]:
    """The results of this device's processed seqs above `after_seq`, ascending, with `row`
    read now; and whether more remain."""
    rows = list(conn.execute(sa.select(LEDGER).where(LEDGER.c.device_id == device_id, LEDGER.c.seq > after_seq)
                             .order_by(LEDGER.c.seq).limit(limit + 1)).mappings())
    has_more = len(rows) > limit
    return render_results(conn, store, scope, rows[:limit]), has_more


def ledger_rows(conn: sa.Connection, device_id: str, seqs: Sequence[int]) -> dict[int, Mapping[str, Any]]:
    """The dedupe ledger's rows of `device_id` for those of `seqs` already processed, by seq
    (invariant 2: a seq found here is a duplicate)."""
    found: dict[int, Mapping[str, Any]] = {}
    ordered = sorted(s for s in seqs if isinstance(s, int))
    for i in range(0, len(ordered), 500):
        for r in conn.execute(sa.select(LEDGER).where(LEDGER.c.device_id == device_id,
                                                      LEDGER.c.seq.in_(ordered[i:i + 500]))).mappings():
            found[r["seq"]] = r
    return found


def render_results(conn: sa.Connection, store: RecordStore, scope: DeviceScope,
                   rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ledger `rows` as results (docs/protocol.md §5.1), in their order, each with its record's
    `row` as the device may read it now: one query per entity, not one per result."""
    wanted: dict[str, set[str]] = {}
    for r in rows:
        if store.model.has_entity(r["entity"]):
            wanted.setdefault(r["entity"], set()).add(r["record_id"])
    current: dict[tuple[str, str], dict[str, Any]] = {}
    for name, ids in wanted.items():
        entity = store.model.entity(name)
        table = store.table(entity)
        ordered = sorted(ids)
        for i in range(0, len(ordered), 500):
            for row in conn.execute(sa.select(table).where(table.c.id.in_(ordered[i:i + 500]))).mappings():
                current[(name, row["id"])] = store.to_wire_row(entity, row)
    readable = _Readable(store, scope, conn)
    out = []
    for r in rows:
        wire = current.get((r["entity"], r["record_id"]))
        row = readable.row(store.model.entity(r["entity"]), wire) if wire else None
        out.append(result_to_wire(r, row))
    return out


def write_checkpoint(conn: sa.Connection, device_id: str) -> int:
    return conn.execute(sa.select(sa.func.coalesce(sa.func.max(LEDGER.c.position), 0))
                        .where(LEDGER.c.device_id == device_id)).scalar_one()


# -- pages -------------------------------------------------------------------------------------

class _Page:
    def __init__(self, store: RecordStore, scope: DeviceScope, conn: sa.Connection):
        self.store, self.scope, self.conn = store, scope, conn
        self.changes: list[tuple[int, int, dict[str, Any]]] = []   # (entity order, position, change)
        self.order = {name: i for i, name in enumerate(scope.order)}

    def add(self, name: str, position: int | None, change: dict[str, Any]) -> None:
        self.changes.append((self.order.get(name, 0), position or 0, change))

    def upsert(self, name: str, wire: Mapping[str, Any], position: int | None) -> None:
        self.add(name, position, {"kind": "upsert", "entity": name, "id": wire["id"], "position": position,
                                  "version": wire["version"], "row": self.scope.visible_row(name, wire)})

    def sorted(self) -> list[dict[str, Any]]:
        return [c for _, _, c in sorted(self.changes, key=lambda t: (t[0], t[1]))]


def snapshot_query(store: RecordStore, scope: DeviceScope, name: str, after: str | None = None,
                   limit: int | None = None) -> sa.Select:
    """The rows of entity `name` a device with `scope` holds after a snapshot, by id (after
    `after`, at most `limit`): its own rules and, for a child, a live parent inside the parent's.
    What a first sync sends; the admin's sync rules preview counts and samples it."""
    entity = scope.entities[name].entity
    table = store.table(entity)
    query = sa.select(table).where(*scope.sql_where(name, table))
    if entity.parent is not None:
        parent_table = store.table(store.model.entity(entity.parent))
        query = query.join(parent_table, parent_table.c.id == table.c[entity.parent_field]).where(
            *scope.sql_where(entity.parent, parent_table))
    if after is not None:
        query = query.where(table.c.id > after)
    return query.order_by(table.c.id).limit(limit)


_snapshot_query = snapshot_query


def _phase_rows_left(page: _Page, state: dict[str, Any]) -> int:
    """How many upserts the phase has still to send: the rows of its entities from where it
    stands (one count per entity; taken when a phase starts, then counted down page by page)."""
    total = 0
    for k, name in enumerate(state["ents"][state["i"]:]):
        if name in page.scope.entities:
            query = _snapshot_query(page.store, page.scope, name, state["after"] if k == 0 else None, None)
            total += page.conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
    return total


def _phase_page(page: _Page, state: dict[str, Any], limit: int) -> tuple[dict[str, Any], bool]:
    """Fill `page` with the next rows of the phase; returns the new state and whether the phase
    is finished."""
    budget = limit
    while state["i"] < len(state["ents"]) and budget > 0:
        name = state["ents"][state["i"]]
        if name not in page.scope.entities:
            # left the scope: the device drops its clean rows of it
            page.add(name, None, {"kind": "clear", "entity": name})
            state.update(i=state["i"] + 1, after=None)
            continue
        entity_scope = page.scope.entities[name]
        if state["after"] is None:
            page.add(name, None, {"kind": "clear", "entity": name})
        query = _snapshot_query(page.store, page.scope, name, state["after"], budget + 1)
        # the same rows, date-times as stored (no parsing into datetimes only to format them again)
        query = query.with_only_columns(*raw_time_columns(page.store.table(entity_scope.entity)))
        result = page.conn.execute(query)
        columns = tuple(result.keys())
        rows = result.all()
        # the visible row (`DeviceScope.visible_row` of the wire row) straight from the stored one
        visible = page.store.tuple_converter(entity_scope.entity, columns,
                                             entity_scope.visible + ("created_at", "updated_at"), raw_times=True)
        id_at, version_at = columns.index("id"), columns.index("version")
        order = page.order.get(name, 0)
        for row in rows[:budget]:
            page.changes.append((order, 0, {"kind": "upsert", "entity": name, "id": row[id_at], "position": None,
                                            "version": row[version_at], "row": visible(row)}))
        state["left"] = state.get("left", 0) - len(rows[:budget])
        if len(rows) > budget:
            state["after"] = rows[budget - 1][id_at]
            budget = 0
        else:
            budget -= len(rows)
            state.update(i=state["i"] + 1, after=None)
    return state, state["i"] >= len(state["ents"])


def _current_rows(page: _Page, name: str, ids: set[str]) -> dict[str, dict[str, Any]]:
    entity = page.store.model.entity(name)
    table = page.store.table(entity)
    out = {}
    ordered = sorted(ids)
    for i in range(0, len(ordered), 500):
        for row in page.conn.execute(sa.select(table).where(table.c.id.in_(ordered[i:i + 500]))).mappings():
            out[row["id"]] = page.store.to_wire_row(entity, row)
    return out


def _no_match(row: Mapping[str, Any] | None) -> bool:
    return False


def _agree(a: Mapping[str, Any], b: Mapping[str, Any], keys: Sequence[str]) -> bool:
    """Whether `a` and `b` hold the same values (of the same types) at `keys`."""
    for k in keys:
        x, y = a.get(k), b.get(k)
        if x != y or type(x) is not type(y):
            return False
    return True


def _stream_page(page: _Page, changes: Sequence[Change], own_device: str | None = None) -> None:
    """docs/sync-design.md decision 7: per record, compare held (before its first change in
    range) with wanted (after its last change in range).

    A record whose last change in range is `own_device`'s own push is left out (protocol §6.2):
    that mutation's result carries the record's `row`, read when the result is delivered, so
    the device settles the record from it — never from an older state — and needs the change
    no more than a second time. Only where the record enters the device's scope with children
    (its own update moved it in) is the change sent, since the result brings no children."""
    store, scope = page.store, page.scope
    entities: dict[str, Entity] = {}
    names: dict[str, tuple[str, ...]] = {}        # the fields a patch may carry: the visible ones
    encrypted: dict[str, bool] = {}
    matchers: dict[str, Callable[[Mapping[str, Any] | None], bool]] = {}
    # the members `in_scope` reads: where held and wanted rows agree on them, so do its answers
    scope_keys: dict[str, tuple[str, ...]] = {}
    for name in {c.entity for c in changes}:
        entity = entities[name] = store.model.entity(name)
        # only visible fields reach a patch (`& visible` below): the others need no comparing
        visible = set(scope.entities[name].visible) if name in scope.entities else set()
        names[name] = tuple(f for f in entity.field_names if f in visible)
        encrypted[name] = any(f.encrypted for f in entity.fields)
        if name in scope.entities:
            matchers[name] = scope.matcher(name)
            keys = set(scope.matched_fields(name))
            if entity.parent is not None:
                keys.add(entity.parent_field)
            scope_keys[name] = tuple(keys)
        if entity.parent is not None and entity.parent in scope.entities:
            matchers[entity.parent] = scope.matcher(entity.parent)
    # per record, in the order first seen: its first and last change, the fields they changed
    first: dict[tuple[str, str], Change] = {}
    last: dict[tuple[str, str], Change] = {}
    changed: dict[tuple[str, str], Sequence[str]] = {}
    between: dict[tuple[str, str], list[Change]] = {}   # a record's changes in range but its last
    for c in changes:
        key = (c.entity, c.record_id)
        if c.op == "create":
            fields = names[c.entity]
        else:
            prev, row = c.prev or {}, c.row
            fields = [f for f in names[c.entity] if prev.get(f) != row.get(f)]
        if key in first:
            changed[key] = {*changed[key], *fields}
            between.setdefault(key, []).append(last[key])
        else:
            first[key] = c
            changed[key] = fields
        last[key] = c
    # a child is in scope iff its parent is now: look the parents up once
    parents: dict[str, set[str]] = {}
    for (name, record_id), c_last in last.items():
        entity = entities[name]
        c_first = first[(name, record_id)]
        if entity.parent is not None:
            for row in (c_last.row, c_first.prev or {}):
                if row.get(entity.parent_field):
                    parents.setdefault(entity.parent, set()).add(row[entity.parent_field])
    parent_rows = {name: _current_rows(page, name, ids) for name, ids in parents.items()}
    no_match = _no_match

    def in_scope(entity: Entity, row: Mapping[str, Any] | None) -> bool:
        if not matchers.get(entity.name, no_match)(row):
            return False
        if entity.parent is None:
            return True
        parent = parent_rows.get(entity.parent, {}).get(row.get(entity.parent_field))
        return parent is not None and matchers.get(entity.parent, no_match)(parent)

    add = page.add
    entering: list[tuple[Entity, str, int]] = []
    for key, c_last in last.items():
        name, record_id = key
        entity = entities[name]
        own = own_device is not None and c_last.origin == own_device
        if own and not entity.children:
            continue   # the result's row settles it
        c_first, fields = first[key], changed[key]
        row, prev = c_last.row, c_first.prev
        if encrypted[name]:
            row = decode_row(entity, row, store.codec)
            prev = decode_row(entity, prev, store.codec) if prev is not None else None
        wanted = in_scope(entity, row)
        keys = scope_keys.get(name)
        if prev is None:
            held = False
        elif keys is not None and _agree(prev, row, keys):
            held = wanted   # the same answer for the same values: one scope check, not two
        else:
            held = in_scope(entity, prev)
        if own and not (wanted and not held and c_first.op != "create"):
            continue   # the result's row settles it; a record entering scope brings its children
        if not held and not wanted and key in between:
            # the device may hold a state from inside the range: a phase page (snapshot or
            # rescope) reads the tables after its start, and the stream after it starts again
            # at the phase's cursor. A record that was in scope after any of its changes in
            # range, and is not now, gets its delete or remove (the device was entitled to see
            # it then, so this reveals nothing, invariant 6); else it stayed on the device
            held = any(in_scope(entity, decode_row(entity, c.row, store.codec) if encrypted[name] else c.row)
                       for c in between[key])
        if wanted and held:
            position = c_last.position
            add(name, position, {
                "kind": "patch", "entity": name, "id": record_id, "position": position,
                "version": c_last.version, "from_version": prev["version"],
                "fields": {f: row.get(f) for f in (fields if len(fields) < 2 else sorted(fields))},
                "updated_at": row.get("updated_at")})
        elif wanted:
            page.upsert(name, row, c_last.position)
            if c_first.op != "create" and entity.children:
                entering.append((entity, record_id, c_last.position))
        elif held:
            if row.get("deleted"):
                add(name, c_last.position, {"kind": "delete", "entity": name, "id": record_id,
                                            "position": c_last.position, "version": c_last.version})
            else:
                add(name, c_last.position, {"kind": "remove", "entity": name, "id": record_id,
                                            "position": c_last.position, "reason": "scope"})
    # a parent that entered scope brings its live children (their own changes may be older)
    for entity, record_id, position in entering:
        for child_name in entity.children:
            if child_name not in scope.entities:
                continue
            child = store.model.entity(child_name)
            table = store.table(child)
            query = sa.select(table).where(table.c[child.parent_field] == record_id,
                                           *scope.sql_where(child_name, table))
            for row in page.conn.execute(query).mappings():
                if (child_name, row["id"]) not in last:
                    page.upsert(child_name, store.to_wire_row(child, row), position)


def _refetch(page: _Page, refetch: Sequence[Mapping[str, Any]]) -> None:
    """Answer each refetched record with an upsert when the device may see it, else a remove
    (whether or not it exists, so nothing leaks). Entries that are not objects with a string
    `entity` and `id` are skipped (docs/protocol.md)."""
    for item in refetch[:1000]:
        if not isinstance(item, Mapping):
            continue
        name, record_id = item.get("entity"), item.get("id")
        if not isinstance(name, str) or not isinstance(record_id, str):
            continue
        row = None
        if name in page.scope.entities and _is_record_id(record_id):
            entity = page.scope.entities[name].entity
            table = page.store.table(entity)
            found = page.conn.execute(_snapshot_query(page.store, page.scope, name, None, 1)
                                      .where(table.c.id == record_id)).mappings().first()
            row = page.store.to_wire_row(entity, found) if found is not None else None
        if row is not None:
            page.upsert(name, row, None)
        else:
            page.add(name, None, {"kind": "remove", "entity": name, "id": record_id, "position": None,
                                  "reason": "refetch"})


def _is_record_id(value: str) -> bool:
    """Whether `value` can be a record id (a UUID); no other id is looked up."""
    try:
        return uuid_text(value) == value   # ids are stored canonical: no other form names a record
    except ValueError:
        return False


def phase_entities(conn: sa.Connection, store: RecordStore, scope: DeviceScope,
                   old_scope_hash: str | None) -> tuple[list[str], list[str]]:
    """A phase's entities for a device whose scope was `old_scope_hash`: those whose rules
    changed (all, on a first sync), in pull order; and those it pulled before and may not now
    (read taken away, direction changed), which it clears. With an unknown old scope, every
    pullable entity outside the scope is cleared."""
    old = _old_digests(conn, old_scope_hash)
    changed = [name for name in scope.order if old.get(name) != scope.digests[name]]
    if old:
        gone = [name for name in old if name not in scope.entities]
    else:
        gone = [e.name for e in store.model.entities if e.name not in scope.entities
                and (store.model.entity(e.parent) if e.parent else e).sync.direction in ("pull", "both")]
    return changed, sorted(gone)


def pull_page(conn: sa.Connection, store: RecordStore, scope: DeviceScope, request: PullRequest, *,
              secret: bytes, now, offer_bundle: Callable[..., Any] | None = None,
              own_device: str | None = None) -> dict[str, Any]:
    """One pull page for `request` (everything but results and device bookkeeping). Read-only:
    the caller stores the scope (`remember_scope`) in its write transaction. A stream page
    leaves out the records whose last change in range is `own_device`'s push (`_stream_page`).

    `offer_bundle(changed, gone, cursor, old_digests)`, given when the device reads bundles, may answer a
    phase that starts with a snapshot bundle (an `Offer`, transfer/snapshots.py) instead of its
    first page: the page then has `phase: "bundle"` and the `bundle`, and keeps the device's
    cursor and scope hash (the device sets them when the bundle is applied)."""
    head = head_position(conn)
    cursor = request.cursor
    retained_from = oldest_retained_position(conn)
    if cursor > head:
        raise SyncReset("cursor-ahead", f"cursor {cursor} is beyond the last position this server issued ({head})",
                        retained_from - 1)
    # a device that has a scope (it finished a snapshot) streams from its cursor, even from 0:
    # if the log below the horizon is gone it would miss deletes silently (invariant 4)
    if cursor < retained_from - 1 and (cursor > 0 or request.scope_hash):
        raise SyncReset("cursor-too-old", f"cursor {cursor} is older than the retention horizon {retained_from - 1}",
                        retained_from - 1)
    page = _Page(store, scope, conn)
    state = None
    if request.resume:
        state = decode_resume(secret, request.resume)
        if state.get("new") != scope.hash or state.get("B") != cursor or state.get("old") != request.scope_hash:
            state = None  # the scope changed again during the phase, or another cursor: start over
    if state is None and request.scope_hash != scope.hash:
        changed, gone = phase_entities(conn, store, scope, request.scope_hash)
        if offer_bundle is not None:
            # a device that reads bundles takes the phase as one (transfer/snapshots.py)
            offered = offer_bundle(changed, gone, cursor, _old_digests(conn, request.scope_hash))
            if offered is not None:
                return {"head": head, "windows": scope.windows(), "phase": "bundle", "bundle": offered.bundle,
                        "cursor": cursor, "resume": None, "scope_hash": request.scope_hash, "has_more": True,
                        "changes": [], "remaining": offered.rows + max(head - offered.bundle["manifest"]["cursor"], 0),
                        "_disclosed": offered.disclosed, "_partial": offered.partial}
        changed = sorted(gone) + changed
        state = {"B": cursor, "S": head, "ents": changed, "i": 0, "after": None,
                 "old": request.scope_hash, "new": scope.hash}
        state["left"] = _phase_rows_left(page, state)   # for `remaining`: counted once per phase
    body: dict[str, Any] = {"head": head, "windows": scope.windows()}
    if state is not None:
        phase = "snapshot" if not request.scope_hash else "rescope"
        if "left" not in state:   # a token from a server that did not count yet
            state["left"] = _phase_rows_left(page, state)
        state, done = _phase_page(page, state, request.limit)
        if done:
            new_cursor = state["S"] if state["B"] == 0 else state["B"]
            body.update(phase=phase, cursor=new_cursor, resume=None, scope_hash=scope.hash,
                        has_more=new_cursor < head)
        else:
            body.update(phase=phase, cursor=cursor, resume=encode_resume(secret, state),
                        scope_hash=request.scope_hash, has_more=True)
    else:
        changes, next_cursor, has_more = changes_after(conn, cursor, request.limit, entities=scope.order)
        _stream_page(page, changes, own_device)
        body.update(phase="stream", cursor=next_cursor, resume=None, scope_hash=scope.hash, has_more=has_more)
    if request.refetch:
        _refetch(page, request.refetch)
    body["changes"] = page.sorted()
    # for progress bars only. In a phase: the records it has still to send (counted when it
    # started, so rows written meanwhile are not in it) plus the positions the stream will
    # read after it; otherwise positions still ahead (counting changes exactly costs a scan)
    if not body["has_more"]:
        body["remaining"] = 0
    elif body["resume"] is not None:
        after_phase = state["S"] if state["B"] == 0 else state["B"]
        body["remaining"] = max(max(state["left"], 0) + max(head - after_phase, 0), 1)
    else:
        body["remaining"] = max(head - body["cursor"], 1)
    return body
