"""Deciding pushed mutations: what each mutation of a push batch does, and the batch's writes.

For every mutation of the batch, in seq order, `Batch` checks it (entity, direction,
permission, values, references, scope, the entity's conflict policy) and decides its result;
`Batch.flush` then writes all effects of the batch, their change-log entries (one counter
update, invariant 3), their audit entries and the ledger rows, in the batch's one transaction,
which `fieldsync.sync.applier` opens, skipping seqs the dedupe ledger holds (invariant 2).

A rejected mutation is rejected alone, with its type and field problems; the rest of its batch
is applied (invariant 5). Also here: what a queued batch is (`PushBatch`), a mutation's digest,
and a ledger row as a result on the wire (`result_to_wire`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from json.encoder import c_make_encoder, encode_basestring_ascii
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa

from fieldsync.auth.tokens import Principal
from fieldsync.defs.access import access_rule
from fieldsync.defs.model import Entity, Model
from fieldsync.defs.model import Field, Permission
from fieldsync.defs.values import (FieldProblem, field_map, format_datetime, parse_datetime, uuid_text,
                                   validate_record)
from fieldsync.errors import ProblemType, ValueProblem
from fieldsync import json_wire
from fieldsync.json_wire import orjson
from fieldsync.store.changelog import record_history
from fieldsync.store.records import RecordStore
from fieldsync.audit.trail import AuditLog
from fieldsync.store.bulk import insert_many, present_ids
from fieldsync.store.codec import StoredRow, to_wire
from fieldsync.sync.scope import PUSHED_DIRECTIONS, compile_predicate
from fieldsync.store.sync_tables import DEVICES, LEDGER
from fieldsync.media.references import Claim, MediaBindings

__all__ = ["Batch", "NamedMutation", "OPS", "PushBatch", "mutation_digest", "plausible_offset_ms", "read_mutations",
           "result_to_wire"]

OPS = ("insert", "update", "delete")
_ACTION = {"insert": "create", "update": "update", "delete": "delete"}
# a device clock off by more than this is not measured but broken: its offset is ignored
MAX_CLOCK_OFFSET_MS = 100 * 366 * 24 * 3600 * 1000


def plausible_offset_ms(value: Any) -> int | None:
    """A push's `clock_offset_ms` (the server's clock minus the device's, as the device measured
    it over its fastest recent round trip, docs/protocol.md §8.1) when it is an integer within
    a century; anything else is ignored like an absent one."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_CLOCK_OFFSET_MS:
        return value
    return None


# The digest's JSON text must stay byte for byte `json.dumps(core, sort_keys=True,
# separators=(",", ":"), default=str)`: stored digests are compared with the digest of a
# mutation sent again. orjson writes that same text several times faster for what a pushed
# mutation holds (`_orjson_writes_alike`), and for the rest the standard library's C encoder
# is built once with those settings (json.dumps builds one per call, which cost twice the
# encoding); without the circular-reference check, which parsed JSON never needs.
_DIGEST_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
_digest_chunks = (c_make_encoder(None, str, encode_basestring_ascii, None, ":", ",", True, False, True)
                  if c_make_encoder is not None else None)


def _orjson_writes_alike(value: Any) -> bool:
    """Whether orjson writes `value` as json.dumps does, but for non-ASCII text and DEL
    (json.dumps escapes them, orjson writes them as they are and sorts such keys by bytes: the
    caller checks its output is ASCII without DEL). What differs: floats below 1e-4 (json.dumps `1e-05`, orjson `0.00001`; `1e-07`
    and `1e-7`) and at 1e16 and above (kept out to be safe), NaN and the infinities (which
    `untrusted.load_json` refuses anyway), integers past 64 bits and keys that are not text."""
    pending = [value]
    while pending:
        item = pending.pop()
        kind = type(item)
        if kind is str or item is None or kind is bool:
            continue
        if kind is dict:
            for key in item:
                if type(key) is not str:
                    return False
            pending.extend(item.values())
        elif kind is list:
            pending.extend(item)
        elif kind is int:
            if not -(2**63) <= item < 2**64:
                return False
        elif kind is float:
            if not (item == 0.0 or 1e-4 <= abs(item) < 1e16):
                return False
        else:
            return False
    return True


def mutation_digest(m: Mapping[str, Any]) -> str:
    """A digest of what a mutation asks for: a reused seq with a different payload is detected."""
    core = {"entity": m.get("entity"), "op": m.get("op"), "id": m.get("id"), "base_version": m.get("base_version"),
            "fields": m.get("fields")}
    if orjson is not None and _orjson_writes_alike(core):
        try:
            data = orjson.dumps(core, option=orjson.OPT_SORT_KEYS)
        except TypeError:   # a lone surrogate
            data = b"\x80"
        if data.isascii() and b"\x7f" not in data:   # json.dumps escapes DEL too
            return hashlib.sha256(data).hexdigest()
    text = "".join(_digest_chunks(core, 0)) if _digest_chunks is not None else _DIGEST_JSON.encode(core)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class PushBatch:
    """What the push endpoint enqueues: one device's received mutations and who sent them."""

    device_id: str
    user_id: str
    role: str
    attributes: dict[str, Any]
    received_at: str
    sent_at: str | None
    schema_version: int
    mutations: list[dict[str, Any]]
    clock_offset_ms: int | None = None   # measured by the device over round trips (§8.1)

    def to_bytes(self) -> bytes:
        return json_wire.dumps_bytes(self.__dict__)

    @classmethod
    def from_bytes(cls, body: bytes) -> "PushBatch":
        return cls(**json_wire.loads(body))

    @property
    def principal(self) -> Principal:
        return Principal(self.user_id, self.role, self.attributes)


class _Rejected(Exception):
    """A mutation rejected with a rejection type of the registry (fieldsync.errors.ProblemType)."""

    def __init__(self, kind: ProblemType, detail: str, errors: Sequence[FieldProblem] = (),
                 current_version: int | None = None):
        if kind.rejection is None:
            raise ValueError(f"{kind.slug!r} is not a rejection type")
        super().__init__(detail)
        self.problem, self.detail, self.errors, self.current_version = kind.slug, detail, list(errors), current_version


@dataclass(frozen=True, slots=True)
class NamedMutation:
    """What a mutation names, read once per batch (`read_mutations`) and used by every step
    after — key creation, prefetch and the decision: its entity, op, canonical record id and
    fields (under their current names when the device's schema is older, invariant 9), or
    `problem`, the rejection of a mutation that names nothing valid."""

    entity: Entity | None
    op: str
    record_id: str | None
    fields: dict[str, Any]
    problem: _Rejected | None = None


def read_mutations(model: Model, batch: PushBatch) -> dict[int, NamedMutation]:
    """Each mutation of `batch` read against `model`, by seq (seqs are unique in a batch: the
    push endpoint checked them). Only shapes are checked here; values are judged once, when the
    mutation is decided (`Batch.apply`)."""
    entities = {e.name: e for e in model.entities}
    named = {}
    for m in batch.mutations:
        op, fields, record_id = m.get("op"), m.get("fields", {}), _uuid_or_none(m.get("id"))
        name = m.get("entity")
        entity = entities.get(name) if isinstance(name, str) else None
        if op not in OPS or not isinstance(fields, dict) or record_id is None:
            found = NamedMutation(None, str(op), None, {}, _Rejected(
                ProblemType.MALFORMED_MUTATION, "a mutation needs op insert/update/delete, a UUID id and a fields object"))
        elif entity is None:
            found = NamedMutation(None, op, record_id, {}, _Rejected(ProblemType.UNKNOWN_ENTITY, f"no entity {name!r}"))
        else:
            if batch.schema_version < model.schema_version:
                fields = _renamed(entity, fields)
            found = NamedMutation(entity, op, record_id, fields)
        named[m.get("seq")] = found
    return named


@dataclass
class _Rules:
    """What one batch needs of an entity, worked out once per batch: the batch's role and user
    are fixed, so the row filter and scope are compiled to Python functions once."""

    entity: Entity
    root: Entity
    perm: Permission | None
    fields: dict[str, Field]
    writable: frozenset[str]                   # on update (on insert a child may name its parent too)
    insert_writable: frozenset[str]
    field_names: tuple[str, ...]
    refs: tuple[Field, ...]                    # plain ref fields whose target entity exists
    has_unique: bool
    plain: bool                                # no encrypted field: wire values are the clean values
    row_filter: Callable[[Mapping[str, Any]], bool] | None
    scope: Callable[[Mapping[str, Any]], bool] | None


@dataclass(slots=True)
class _Record:
    """A record as the batch sees it: its DB row and whether it is already in the table."""

    db: dict[str, Any]
    stored: bool
    dirty: bool = False
    versions_by_me: set[int] = dc_field(default_factory=set)   # written by this batch


@dataclass
class _Since:
    """Who wrote a record since a mutation's base version (docs/protocol.md §8.1).

    `others`: the fields another writer changed, each with the record's write time after that
    change; None when no other writer did. `floor`: the latest write time the device's own
    history of the record holds — the record's write time at `base_version` and after each of
    this device's own changes since —, below which its new write is never placed: a device's
    writes of a record follow each other in seq order whatever their clocks say."""

    others: dict[str, dt.datetime] | None
    floor: dt.datetime | None
    origins: dict[str, str] = dc_field(default_factory=dict)   # field -> "server" | "device" | "unknown"
    latest_origin: str = "unknown"                              # of the latest other writer

    def origin_of(self, name: str) -> str:
        """Where the value that beat a write of field `name` came from: the latest other writer
        that changed it, else the latest other writer (whose write made the policy keep the record)."""
        return self.origins.get(name, self.latest_origin)


def _time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_datetime(value)
    except (ValueProblem, TypeError):
        return None


def _aware(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


_ROWS_BY_ID: dict[tuple[int, bool], tuple[sa.Table, sa.Select]] = {}


def _rows_by_id(table: sa.Table, lock: bool) -> sa.Select:
    """SELECT of `table`'s rows whose id is in the list parameter `ids` (FOR UPDATE with `lock`),
    built once per table: its construction and cache key cost more than the query."""
    key = (id(table), lock)
    found = _ROWS_BY_ID.get(key)
    if found is None or found[0] is not table:
        query = sa.select(table).where(table.c.id.in_(sa.bindparam("ids", expanding=True)))
        if lock:
            query = query.with_for_update()
        if len(_ROWS_BY_ID) > 1024:
            _ROWS_BY_ID.clear()
        found = _ROWS_BY_ID[key] = (table, query)
    return found[1]


class Batch:
    """The state of one batch being applied inside one transaction (`fieldsync.sync.applier`
    opens it): every mutation decided in seq order, then `flush` writes their effects."""

    def __init__(self, store: RecordStore, conn: sa.Connection, batch: PushBatch, now: dt.datetime, *,
                 audit: AuditLog | None = None, named: Mapping[int, NamedMutation] | None = None):
        self.audit = audit
        self.store = store
        self.model: Model = store.model
        self.named = named or {}
        self.conn = conn
        self.batch = batch
        self.now = now
        self.user = batch.principal.expression_user()
        self.entities: dict[str, Entity] = {e.name: e for e in self.model.entities}
        self._rules: dict[str, _Rules] = {}
        self._readable: dict[tuple[str, str, int], bool] = {}   # (entity, id, version) -> readable
        self._stamp_text: tuple[dt.datetime | None, str] = (None, "")
        self.records: dict[tuple[str, str], _Record | None] = {}
        self.changes: list[tuple] = []        # (entity, op, record, prev) for the change log
        self.change_seqs: list[int] = []
        self.results: list[dict[str, Any]] = []
        self.result_change: dict[int, int] = {}  # index in results -> index in changes
        self._since: _Since | None = None          # of the mutation being decided
        self.media = MediaBindings(conn, now)      # media references this batch binds
        self._has_media: dict[str, bool] = {}
        received = _time(batch.received_at) or now
        sent = _time(batch.sent_at)
        self.received_at = _aware(received)
        if batch.clock_offset_ms is not None:
            # measured by the device over its fastest round trip: the upload time of this
            # push is not in it (a slow upload must not move the push's edits later)
            self.offset = dt.timedelta(milliseconds=batch.clock_offset_ms)
        elif sent is not None:
            try:
                self.offset = self.received_at - _aware(sent)
            except OverflowError:
                self.offset = dt.timedelta(0)
        else:
            self.offset = dt.timedelta(0)

    def rules(self, entity: Entity) -> _Rules:
        found = self._rules.get(entity.name)
        if found is not None:
            return found
        # the effective rule (defs/access.py): a child's actions and field lists are resolved
        # from its parent's; its rows are checked through the parent in `allowed`/`readable`
        rule = access_rule(self.model, entity, self.batch.role)
        perm = rule.permission if rule is not None else None
        writable = rule.writable(create=False) if rule is not None else ()
        row_filter = perm.row_filter if perm is not None else None
        scope = entity.sync.scope if entity.parent is None else None
        found = _Rules(
            entity=entity, root=self.entities[entity.parent] if entity.parent else entity, perm=perm,
            fields=field_map(entity), writable=frozenset(writable),
            insert_writable=frozenset(rule.writable(create=True) if rule is not None else ()),
            field_names=entity.field_names,
            refs=tuple(f for f in entity.fields if f.type == "ref" and not f.encrypted and f.ref in self.entities),
            has_unique=any(f.unique for f in entity.fields), plain=not any(f.encrypted for f in entity.fields),
            row_filter=compile_predicate(row_filter, self.user) if row_filter is not None else None,
            scope=compile_predicate(scope, self.user) if scope is not None else None)
        self._rules[entity.name] = found
        return found

    def stamp_text(self, stamp: dt.datetime) -> str:
        """`stamp` in wire form; the inserts of a batch mostly share one stamp."""
        last, text = self._stamp_text
        if last is not stamp and last != stamp:
            text = format_datetime(_aware(stamp))
            self._stamp_text = (stamp, text)
        return text

    # -- loading -------------------------------------------------------------------------------
    def prefetch(self, mutations: Sequence[Mapping[str, Any]]) -> None:
        """Load (and on PostgreSQL lock) every record the batch names and every referenced id,
        one query per entity, so checks do not cost a query per mutation."""
        wanted: dict[str, set[str]] = {}
        # per entity: the set its ids go to, and per ref field (name, the set its targets go to)
        plans: dict[str, tuple[set[str], list[tuple[str, set[str]]]]] = {}
        for m in mutations:
            named = self.named[m["seq"]]
            entity = named.entity
            if entity is None:
                continue
            plan = plans.get(entity.name)
            if plan is None:
                plan = plans[entity.name] = (wanted.setdefault(entity.name, set()), [
                    (f.name, wanted.setdefault(f.ref, set())) for f in self.rules(entity).refs])
            plan[0].add(named.record_id)
            for name, targets in plan[1]:
                # only a UUID can name a record; anything else (a lone surrogate, which no database
                # encoder takes) is refused by validation when the mutation is decided
                v = _uuid_or_none(named.fields.get(name))
                if v is not None:
                    targets.add(v)
        for name, ids in sorted(wanted.items()):
            if not ids:
                continue
            table = self.store.table(self.entities[name])
            for key in ids:
                self.records.setdefault((name, key), None)
            ordered = sorted(ids)
            locking = self.conn.dialect.name == "postgresql"
            if not locking and name in plans:
                # most records a push names are new: their ids are looked up before rows are read
                # (a referenced record mostly exists, and is read at once)
                ordered = present_ids(self.conn, table, ordered)
            query = _rows_by_id(table, locking)
            for i in range(0, len(ordered), 500):
                for row in self.conn.execute(query, {"ids": ordered[i:i + 500]}).mappings():
                    self.records[(name, row["id"])] = _Record(dict(row), stored=True)

    def record(self, entity: Entity, record_id: str) -> _Record | None:
        key = (entity.name, record_id)
        if key not in self.records:
            table = self.store.table(entity)
            row = self.conn.execute(sa.select(table).where(table.c.id == record_id)).mappings().first()
            self.records[key] = _Record(dict(row), stored=True) if row is not None else None
        return self.records[key]

    def wire(self, entity: Entity, rec: _Record) -> dict[str, Any]:
        return self.store.to_wire_row(entity, rec.db)

    # -- rules ---------------------------------------------------------------------------------
    def allowed(self, entity: Entity, wire: Mapping[str, Any]) -> bool:
        """The record lies inside what this device's user may write: the role's row filter and,
        for a root entity, its sync scope; a child inherits its parent's."""
        rules = self.rules(entity)
        if rules.row_filter is not None and not rules.row_filter(wire):
            return False
        if entity.parent is None:
            return rules.scope is None or rules.scope(wire)
        parent = self.entities[entity.parent]
        parent_id = wire.get(entity.parent_field)
        rec = self.record(parent, parent_id) if isinstance(parent_id, str) else None
        if rec is None or rec.db["deleted"]:
            return False
        return self.allowed(parent, self.wire(parent, rec))

    def readable(self, entity: Entity, rec: _Record) -> bool:
        """The device's user may read the record through its role (the REST rule: the role's
        read action and row filter, for a child a live parent it may read)."""
        if rec.db["deleted"]:
            return False
        rules = self.rules(entity)
        if rules.perm is None or not rules.perm.can("read"):
            return False
        if rules.row_filter is None and entity.parent is None:
            return True
        key = (entity.name, rec.db["id"], rec.db["version"])
        found = self._readable.get(key)
        if found is None:
            found = self._readable[key] = self._readable_row(entity, self.wire(entity, rec))
        return found

    def _readable_row(self, entity: Entity, wire: Mapping[str, Any]) -> bool:
        rules = self.rules(entity)
        if rules.row_filter is not None and not rules.row_filter(wire):
            return False
        if entity.parent is None:
            return True
        parent = self.entities[entity.parent]
        parent_id = wire.get(entity.parent_field)
        rec = self.record(parent, parent_id) if isinstance(parent_id, str) else None
        return rec is not None and self.readable(parent, rec)

    def check_refs(self, entity: Entity, values: Mapping[str, Any]) -> list[FieldProblem]:
        """A problem for each reference to a record that is missing, deleted, or that the user
        may not read: the same problem, so a rejection never tells them apart."""
        problems = []
        for f in self.rules(entity).refs:
            v = values.get(f.name)
            if v is not None:
                target = self.entities[f.ref]
                rec = self.record(target, v)
                if rec is None or not self.readable(target, rec):
                    problems.append(FieldProblem(f.name, f"refers to a {f.ref} that does not exist ({v})"))
        return problems

    def effective_time(self, m: Mapping[str, Any], floor: dt.datetime | None = None) -> dt.datetime:
        """The device's edit time corrected by the clock offset of its push, never in the future,
        and never before `floor`, the device's own history of the record (docs/protocol.md §8.1)."""
        client = _time(m.get("client_time"))
        if client is None:
            effective = self.received_at
        else:
            try:
                effective = min(_aware(client) + self.offset, self.received_at)
            except OverflowError:   # a clock centuries off: as early or as late as can be
                effective = self.received_at if self.offset > dt.timedelta(0) else \
                    dt.datetime.min.replace(tzinfo=dt.timezone.utc)
        return effective if floor is None else max(effective, floor)

    def since(self, entity: Entity, rec: _Record, base: int) -> _Since:
        """Who wrote the record since `base` (see `_Since`). Missing history counts as another
        writer."""
        current = rec.db["version"]
        written = _aware(rec.db["updated_at"])
        if base >= current:
            return _Since(None, written)
        history = record_history(self.conn, entity.name, rec.db["id"], base) if rec.stored else []
        covered = set(rec.versions_by_me)
        fields: dict[str, dt.datetime] = {}
        origins: dict[str, str] = {}
        latest_origin = "unknown"
        floor: dt.datetime | None = written if rec.versions_by_me else None   # our own write in this batch
        other = False
        for change in history:
            covered.add(change.version)
            when = _time(change.row.get("updated_at")) or change.changed_at
            prev = change.prev or {}
            if change.version == base + 1 and prev.get("version") == base:
                at_base = _time(prev.get("updated_at"))
                if at_base is not None:
                    floor = at_base if floor is None else max(floor, at_base)
            if change.origin == self.batch.device_id:
                floor = when if floor is None else max(floor, when)
                continue
            other = True
            latest_origin = "server" if change.origin is None else "device"
            for f in entity.field_names:
                if change.op == "create" or prev.get(f) != change.row.get(f):
                    fields[f] = max(fields.get(f, when), when)
                    origins[f] = latest_origin
        if any(v not in covered for v in range(base + 1, current + 1)):
            other = True  # history compacted away: assume the worst
            latest_origin = "unknown"
            for f in entity.field_names:
                fields[f] = max(fields.get(f, written), written)
                origins.setdefault(f, "unknown")
        if not other:
            return _Since(None, written)   # every write since base_version is the device's own
        return _Since(fields, floor, origins, latest_origin)

    # -- one mutation --------------------------------------------------------------------------
    def ledger_row(self, m: Mapping[str, Any]) -> dict[str, Any]:
        """The dedupe ledger row of mutation `m` before its result is decided."""
        return {"device_id": self.batch.device_id, "seq": m.get("seq"), "digest": mutation_digest(m),
                "entity": str(m.get("entity"))[:64], "record_id": str(m.get("id"))[:64],
                "op": str(m.get("op"))[:8], "position": None, "version": None, "effect": None,
                "overridden": None, "overridden_by": None, "problem": None, "detail": None, "errors": None,
                "current_version": None, "processed_at": self.now}

    def apply(self, m: Mapping[str, Any]) -> dict[str, Any]:
        """Decide mutation `m` (its effect is staged in the batch) and return its ledger row."""
        base = self.ledger_row(m)
        self._since = None
        try:
            base.update(self._decide(m))
            base["status"] = "applied"
            lost = json.loads(base["overridden"]) if base["overridden"] else []
            if lost and self._since is not None:
                base["overridden_by"] = json.dumps({f: self._since.origin_of(f) for f in lost}, sort_keys=True)
        except _Rejected as r:
            base.update(status="rejected", problem=r.problem, detail=r.detail,
                        errors=json.dumps([p.as_dict() for p in r.errors]) if r.errors else None,
                        current_version=r.current_version)
        return base

    def _decide(self, m: Mapping[str, Any]) -> dict[str, Any]:
        named = self.named[m["seq"]]
        if named.problem is not None:
            raise named.problem
        entity, op, record_id, fields = named.entity, named.op, named.record_id, named.fields
        name = entity.name
        rules = self.rules(entity)
        root = rules.root
        if root.sync.direction not in PUSHED_DIRECTIONS:
            raise _Rejected(ProblemType.DIRECTION, f"{name} is {root.sync.direction}-only: devices may not write it")
        perm = rules.perm
        if perm is None or not perm.can(_ACTION[op]):
            raise _Rejected(ProblemType.FORBIDDEN, f"role {self.batch.role!r} may not {_ACTION[op]} {name} records")
        writable = rules.writable
        if op == "insert":
            return self._insert(entity, record_id, fields, rules.insert_writable, m)
        rec = self.record(entity, record_id)
        if rec is None:
            raise _Rejected(ProblemType.UNKNOWN_RECORD, f"no {name} with id {record_id}")
        if rec.db["deleted"]:
            if op == "delete":
                return {"version": rec.db["version"], "effect": "unchanged"}
            raise _Rejected(ProblemType.RECORD_DELETED, f"{name} {record_id} was deleted; deletes are final",
                            current_version=rec.db["version"])
        current = self.wire(entity, rec)
        if not self.allowed(entity, current):
            raise _Rejected(ProblemType.FORBIDDEN, f"{name} {record_id} is outside the records your role may change")
        base_version = m.get("base_version")
        if not isinstance(base_version, int) or isinstance(base_version, bool) or base_version < 0:
            raise _Rejected(ProblemType.MALFORMED_MUTATION, "base_version must be an integer >= 0 for update and delete")
        if base_version > rec.db["version"]:
            raise _Rejected(ProblemType.MALFORMED_MUTATION, f"base_version {base_version} is above the current version "
                            f"{rec.db['version']}")
        policy = root.sync.conflict
        since = self._since = self.since(entity, rec, base_version)
        others = since.others
        # invariant 5: the device's own earlier writes of the record never make this one lose
        effective = self.effective_time(m, since.floor)
        if op == "delete":
            return self._delete(entity, rec, current, policy, others, effective, m)
        return self._update(entity, rec, current, fields, writable, policy, others, effective, m)

    def _stamp(self, root: Entity, effective: dt.datetime) -> dt.datetime:
        # last_write_wins and field_merge compare write times, so a device write carries its
        # effective time; other policies stamp the server clock
        return effective if root.sync.conflict in ("last_write_wins", "field_merge") else self.now

    def _insert(self, entity: Entity, record_id: str, fields: Mapping[str, Any], writable, m) -> dict[str, Any]:
        existing = self.record(entity, record_id)
        if existing is not None:
            raise _Rejected(ProblemType.ID_EXISTS, f"a {entity.name} with id {record_id} already exists",
                            current_version=existing.db["version"])
        server_values = {entity.owner: self.batch.user_id} if entity.owner else {}
        rules = self.rules(entity)
        known = rules.fields
        # a device store materialises defaults: a field the role may not set is accepted on
        # insert when it only carries its default (or null)
        if not writable.issuperset(fields):
            fields = {k: v for k, v in fields.items()
                      if k in writable or k not in known
                      or not (v is None or (known[k].has_default and v == known[k].default))}
        clean, problems = validate_record(entity, fields, partial=False, writable=writable,
                                          server_set=tuple(server_values))
        if problems:
            raise _Rejected(ProblemType.VALIDATION, "some values are invalid", problems)
        clean.update(server_values)
        problems = self.check_refs(entity, clean)
        if rules.has_unique:
            problems += self._check_unique(entity, clean, None)
        if problems:
            raise _Rejected(ProblemType.VALIDATION, "some values are invalid", problems)
        stamp = self._stamp(rules.root, self.effective_time(m))
        # the stored row and the wire row in one compiled pass (store/compiled_rows.py); validated
        # values are already in wire form (what the stored row converts back to)
        db, wire = self.store.insert_builder(entity)(clean, record_id, stamp, self.stamp_text(stamp),
                                                     clean.get(entity.subject) if entity.subject else None)
        if not rules.plain:
            wire = StoredRow(wire)
            wire.stored = db   # the change log reuses these ciphertexts
        if not self.allowed(entity, wire):
            raise _Rejected(ProblemType.FORBIDDEN, f"the new {entity.name} would fall outside the records your role may reach")
        self.bind_media(entity, record_id, clean)
        rec = _Record(db, stored=False, dirty=True, versions_by_me={1})
        self.records[(entity.name, record_id)] = rec
        self._log(entity, "create", wire, None, m)
        return {"version": 1, "effect": "changed"}

    def _update(self, entity, rec, current, fields, writable, policy, others, effective, m) -> dict[str, Any]:
        clean, problems = validate_record(entity, dict(fields), partial=True, writable=writable)
        if problems:
            raise _Rejected(ProblemType.VALIDATION, "some values are invalid", problems)
        overridden: list[str] = []
        if others is not None:
            if policy == "reject_stale":
                raise _stale(entity, rec, m, "change")
            if policy == "server_wins":
                return {"version": rec.db["version"], "effect": "discarded", "overridden": json.dumps(sorted(clean))}
            if policy == "field_merge":
                overridden = sorted(f for f in clean if f in others and effective < others[f])
                clean = {k: v for k, v in clean.items() if k not in overridden}
        if policy == "last_write_wins" and effective < _aware(rec.db["updated_at"]):
            return {"version": rec.db["version"], "effect": "discarded", "overridden": json.dumps(sorted(clean))}
        if not clean:
            return {"version": rec.db["version"], "effect": "discarded" if overridden else "unchanged",
                    "overridden": json.dumps(overridden) if overridden else None}
        if self.rules(entity).plain:
            values = self.store.values_to_db(entity, clean)
            same = all(rec.db.get(k) == v for k, v in values.items())
        else:
            # ciphertexts differ on every write: compare what they hold
            values = None
            same = self._same(entity, rec.db, clean)
        if same:
            return {"version": rec.db["version"], "effect": "partial" if overridden else "unchanged",
                    "overridden": json.dumps(overridden) if overridden else None}
        problems = self.check_refs(entity, clean)
        if self.rules(entity).has_unique:
            problems += self._check_unique(entity, clean, rec.db["id"])
        if problems:
            raise _Rejected(ProblemType.VALIDATION, "some values are invalid", problems)
        if values is None:
            values = self.store.encrypted_update(self.conn, entity, rec.db["id"], clean, rec.db)
        new_db = dict(rec.db)
        new_db.update(values)
        stamp = self._stamp(self.rules(entity).root, effective)
        new_db["updated_at"] = max(_aware(rec.db["updated_at"]), stamp)   # a write time never goes backwards
        new_db["version"] = rec.db["version"] + 1
        wire = self.store.to_wire_row(entity, new_db, known=clean)
        if not self.allowed(entity, wire):
            raise _Rejected(ProblemType.FORBIDDEN, f"the change would move {entity.name} {rec.db['id']} outside the records "
                            "your role may reach")
        self.bind_media(entity, rec.db["id"], clean)
        rec.db, rec.dirty = new_db, True
        rec.versions_by_me.add(new_db["version"])
        self._log(entity, "update", wire, current, m)
        return {"version": new_db["version"], "effect": "partial" if overridden else "changed",
                "overridden": json.dumps(overridden) if overridden else None}

    def _delete(self, entity, rec, current, policy, others, effective, m) -> dict[str, Any]:
        if others is not None:
            if policy == "reject_stale":
                raise _stale(entity, rec, m, "delete")
            if policy == "server_wins":
                return {"version": rec.db["version"], "effect": "discarded", "overridden": "[]"}
        if policy in ("last_write_wins", "field_merge"):
            latest = max([_aware(rec.db["updated_at"])] + list((others or {}).values()))
            if effective < latest:
                return {"version": rec.db["version"], "effect": "discarded", "overridden": "[]"}
        new_db = dict(rec.db)
        new_db.update(deleted=True, version=rec.db["version"] + 1,
                      updated_at=max(_aware(rec.db["updated_at"]), self.now))   # never backwards
        rec.db, rec.dirty = new_db, True
        rec.versions_by_me.add(new_db["version"])
        self._log(entity, "delete", self.store.to_wire_row(entity, new_db), current, m)
        return {"version": new_db["version"], "effect": "changed"}

    def bind_media(self, entity: Entity, record_id: str, clean: Mapping[str, Any]) -> None:
        """The last check of a write: its media values are platform references this device may
        bind to this record (media/references.py); rejected alone otherwise (invariant 5)."""
        has = self._has_media.get(entity.name)
        if has is None:
            has = self._has_media[entity.name] = any(f.type == "media" for f in entity.fields)
        if not has:
            return
        claim = Claim(self.batch.user_id, self.batch.device_id)
        problems = self.media.check(entity, record_id, clean, claim)
        if problems:
            raise _Rejected(ProblemType.VALIDATION, "some values are invalid", problems)

    def _same(self, entity: Entity, db: Mapping[str, Any], clean: Mapping[str, Any]) -> bool:
        """Whether the stored row `db` already holds every value of `clean` (wire values)."""
        fields = self.rules(entity).fields
        plain = {k: v for k, v in clean.items() if not fields[k].encrypted}
        if any(db.get(k) != v for k, v in self.store.values_to_db(entity, plain).items()):
            return False
        return all(to_wire(fields[k], db.get(k), entity, self.store.codec, db["id"]) == v
                   for k, v in clean.items() if fields[k].encrypted)

    def _check_unique(self, entity: Entity, values: Mapping[str, Any], own_id: str | None) -> list[FieldProblem]:
        if not any(f.unique and values.get(f.name) is not None for f in entity.fields):
            return []
        problems = self.store.check_unique(self.conn, entity, values, own_id)
        for f in entity.fields:  # records written earlier in this batch are not in the table yet
            if f.unique and values.get(f.name) is not None and not any(p.field == f.name for p in problems):
                stored = self.store.values_to_db(entity, {f.name: values[f.name]})[f.name]
                for (name, rid), rec in self.records.items():
                    if (name == entity.name and rec is not None and rec.dirty and rid != own_id
                            and not rec.db["deleted"] and rec.db.get(f.name) == stored):
                        problems.append(FieldProblem(f.name, "must be unique; another record has this value"))
                        break
        return problems

    def _log(self, entity: Entity, op: str, wire: dict[str, Any], prev: dict[str, Any] | None, m) -> None:
        self.result_change[len(self.results)] = len(self.changes)
        self.changes.append((entity, op, wire, prev))
        self.change_seqs.append(m.get("seq"))

    # -- commit --------------------------------------------------------------------------------
    def flush(self) -> None:
        """Write the batch's records and change-log entries (through the RecordStore, the one
        write path), its audit entries and its ledger rows."""
        positions = self.store.write_rows(
            self.conn, [(self.entities[name], rec.db, rec.stored) for (name, _), rec in self.records.items()
                        if rec is not None and rec.dirty],
            self.changes, origin=self.batch.device_id, seqs=self.change_seqs)
        for i, change_index in self.result_change.items():
            self.results[i]["position"] = positions[change_index]
        self.media.flush()
        if self.audit is not None and self.changes:
            # invariant 8: applied PHI is audited in the batch's own transaction, so a failing
            # append leaves the batch unapplied (redelivered later), never applied-unaudited
            from fieldsync.audit.events import write_events
            b = self.batch
            self.audit.append_all(self.conn, write_events(
                self.changes, codec=self.store.codec, actor=b.user_id, role=b.role, device=b.device_id,
                channel="push"))
        if self.results:
            insert_many(self.conn, LEDGER, self.results)
            rejected = sum(1 for r in self.results if r["status"] == "rejected")
            if rejected:
                self.conn.execute(DEVICES.update().where(DEVICES.c.device_id == self.batch.device_id)
                                  .values(rejected=DEVICES.c.rejected + rejected))


def _stale(entity: Entity, rec: _Record, m: Mapping[str, Any], what: str) -> _Rejected:
    """reject_stale: another writer changed the record since the device's base version."""
    return _Rejected(ProblemType.STALE, f"{entity.name} {rec.db['id']} is at version {rec.db['version']}; "
                     f"the {what} was made on version {m.get('base_version')}", current_version=rec.db["version"])


def _renamed(entity: Entity, fields: Mapping[str, Any]) -> dict[str, Any]:
    """Fields written by a device on an older schema, under their current names (invariant 9:
    a rename declared with `renamed_from` never loses a pushed value)."""
    out = dict(fields)
    for f in entity.fields:
        for old in f.renamed_from:
            if old in out and f.name not in out:
                out[f.name] = out.pop(old)
    return out


def _uuid_or_none(value: Any) -> str | None:
    """`value` as a canonical UUID string, None when it is not a UUID."""
    if not isinstance(value, str):
        return None
    try:
        return uuid_text(value)
    except ValueError:
        return None


def result_to_wire(ledger: Mapping[str, Any], row: dict[str, Any] | None) -> dict[str, Any]:
    """A ledger row as the result object of docs/sync-design.md (with `row` read at delivery)."""
    out: dict[str, Any] = {"seq": ledger["seq"], "status": ledger["status"], "entity": ledger["entity"],
                           "id": ledger["record_id"], "op": ledger["op"], "position": ledger["position"]}
    if ledger["status"] == "applied":
        out.update(version=ledger["version"], effect=ledger["effect"],
                   overridden=json.loads(ledger["overridden"]) if ledger["overridden"] else [],
                   overridden_by=json.loads(ledger["overridden_by"]) if ledger.get("overridden_by") else {})
    else:
        kind = ProblemType(ledger["problem"])
        out.update(permanent=True, type=kind.uri, title=kind.rejection, detail=ledger["detail"],
                   errors=json.loads(ledger["errors"]) if ledger["errors"] else [],
                   current_version=ledger["current_version"])
    out["row"] = row
    return out
