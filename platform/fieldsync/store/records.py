"""The record repository: create, read, update, soft-delete and list entity records.

SQLAlchemy Core only (no ORM unit of work on this path). Records go in and come out in their
wire form (`fieldsync.defs.values`): decimals as strings, datetimes as UTC `...Z` strings,
dates as `YYYY-MM-DD`. Every write bumps `version` (optimistic concurrency: a stale expected
version raises `Conflict`), deletes leave tombstones (`deleted = true`) so devices learn of
them, and references are checked here, not by database foreign keys (docs/decisions.md).

Lists use keyset pagination: the cursor is an opaque token holding the last row's sort key
and id, so pages neither repeat nor skip rows while other rows are inserted.
"""

from __future__ import annotations

import base64
import contextlib
import binascii
import datetime as dt
import json
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Iterable, Mapping, Sequence

import sqlalchemy as sa

from fieldsync.defs.query import SYSTEM_QUERY_COLUMNS, operators_for, query_fields, sortable
from fieldsync.defs.access import AccessRule
from fieldsync.defs.query import Filter
from fieldsync.errors import (BadQuery, Conflict, KeyMissing, NotFound, PermissionDenied, Unconvertible,
                              ValidationFailed)
from fieldsync.defs.expr import Expr
from fieldsync.defs.model import Entity, Field, Model
from fieldsync.defs.values import FieldProblem, uuid_text, validate_record
from fieldsync.ids import later_write_time, new_id, utc_now
from fieldsync.store.bulk import insert_many
from fieldsync.store.changelog import ChangeLog
from fieldsync.store.compiled_rows import InsertBuilder, compile_insert
from fieldsync.store.raw_rows import dict_builder, raw_decimal_step, raw_time_step
from fieldsync.store.codec import FieldCodec, PlainJsonCodec, StoredRow, db_step, decrypted, to_db, to_wire, wire_step
from fieldsync.store.engine import write_transaction
from fieldsync.store.expr_sql import compile_expr, python_value
from fieldsync.store.tables import bidx_column, build_metadata
from fieldsync.untrusted import load_json, unstorable_paths


# -- list requests -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RowFilter:
    """The rows a caller reaches: its role's row filter (`expr`, None for none) evaluated for
    `user`, and for a child entity `parent` = (parent entity name, the child's parent field,
    the parent's RowFilter): the row's parent must be live and reached too (docs/access.md)."""

    expr: Expr | None
    user: Mapping[str, Any]
    parent: "tuple[str, str, RowFilter] | None" = None

    @classmethod
    def for_rule(cls, rule: AccessRule, user: Mapping[str, Any]) -> "RowFilter | None":
        """The RowFilter of an effective access rule (None: every live row)."""
        parent = None
        if rule.parent is not None:
            parent_filter = cls.for_rule(rule.parent, user) or RowFilter(None, user)
            parent = (rule.parent.entity.name, rule.entity.parent_field, parent_filter)
        expr = rule.permission.row_filter
        if expr is None and parent is None:
            return None
        return cls(expr, user, parent)


# Which rows of an entity a caller may read, for reference checks: (reads it at all, RowFilter).
Reach = Callable[[Entity], tuple[bool, "RowFilter | None"]]


@dataclass(frozen=True, slots=True)
class Page:
    items: list[dict[str, Any]]
    next_cursor: str | None
    total: int | None = None


def _encode_cursor(sort: str, value: Any, last_id: str) -> str:
    raw = json.dumps({"s": sort, "v": value, "i": last_id}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(token: str) -> tuple[str, Any, str]:
    try:
        data = load_json(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(data, dict) or not isinstance(data.get("s"), str) or not isinstance(data.get("i"), str) \
                or next(unstorable_paths(data), None) is not None:   # text a query cannot carry
            raise ValueError
        return data["s"], data.get("v"), data["i"]
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadQuery("cursor is not one this server issued") from None


@contextlib.contextmanager
def _integrity_as_conflict(entity: Entity):
    # the checks above run first; a unique index can still fire when two writers race
    try:
        yield
    except sa.exc.IntegrityError:
        raise Conflict(f"a concurrent write to {entity.name} conflicts with this one; retry") from None


# -- the repository ----------------------------------------------------------------------------

# (connection, entity, op, record after the write, record before it or None for a create)
WriteHook = Callable[[sa.Connection, Entity, str, dict[str, Any], dict[str, Any] | None], None]


@dataclass
class RecordStore:
    """Records of every entity of `model` in the database behind `engine`.

    `clock` and `id_factory` are injected so tests control time and ids. It is the one write
    path of records — REST, sync apply (`write_rows`) and admin write through it — and with
    `changelog` it logs every write in the write's own transaction (invariant 3). `write_hooks`
    then run in that transaction too, with (connection, entity, op, record, previous record):
    the REST audit trail is one.
    """

    engine: sa.Engine
    model: Model
    clock: Callable[[], dt.datetime] = utc_now
    id_factory: Callable[[dt.datetime], str] = new_id
    codec: FieldCodec = dc_field(default_factory=PlainJsonCodec)
    metadata: sa.MetaData | None = None
    changelog: ChangeLog | None = None
    write_hooks: list[WriteHook] = dc_field(default_factory=list)

    def __post_init__(self) -> None:
        if self.metadata is None:
            self.metadata = build_metadata(self.model)

    # -- helpers ---------------------------------------------------------------------------
    def table(self, entity: Entity) -> sa.Table:
        return self.metadata.tables[entity.name]

    def _entity(self, entity: Entity | str) -> Entity:
        return self.model.entity(entity) if isinstance(entity, str) else entity

    def to_wire_row(self, entity: Entity, row: Mapping[str, Any],
                    known: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`row` in wire form. `known` holds wire values just written for some encrypted fields:
        taken as they are instead of decrypting what was encrypted a moment ago."""
        if not entity.has_encrypted:
            return self.wire_converter(entity)(row)
        if known:
            shown = {k: v for k, v in row.items()}
            for f in entity.fields:
                if f.encrypted and f.name in known:
                    shown[f.name] = None
            out = StoredRow(self.wire_converter(entity)(shown))
            for f in entity.fields:
                if f.encrypted and f.name in known:
                    out[f.name] = known[f.name]
        else:
            out = StoredRow(self.wire_converter(entity)(row))
        out.stored = row
        return out

    def wire_converter(self, entity: Entity) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
        """A function turning a stored row of `entity` into its wire form, built once per entity:
        pull pages convert thousands of rows, and deciding each value's conversion per value
        cost more than converting it."""
        cache = self.__dict__.setdefault("_wire_converters", {})
        converter = cache.get(entity.name)
        if converter is not None:
            return converter
        codec = self.codec
        steps = [(f.name, wire_step(f, entity, codec)) for f in entity.fields if not f.encrypted]
        secret = [f for f in entity.fields if f.encrypted]
        stamp = wire_step(None, entity, codec)

        def convert(row: Mapping[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {"id": row["id"], "version": row["version"],
                                   "created_at": stamp(row["created_at"]), "updated_at": stamp(row["updated_at"]),
                                   "deleted": bool(row["deleted"])}
            for name, step in steps:
                value = row.get(name)
                out[name] = None if value is None else step(value)
            for f in secret:
                value = row.get(f.name)
                out[f.name] = None if value is None else decrypted(codec, entity, f, value, row["id"])
            return out
        cache[entity.name] = convert
        return convert

    def db_converters(self, entity: Entity) -> dict[str, Callable[[Any], Any]]:
        """Per plain field of `entity`, the function `to_db` applies to a non-null wire value,
        built once per entity (a push converts every value of every mutation)."""
        cache = self.__dict__.setdefault("_db_converters", {})
        steps = cache.get(entity.name)
        if steps is None:
            table = self.table(entity)
            steps = {f.name: db_step(table.c[f.name], f, entity, self.codec) for f in entity.fields
                     if not f.encrypted}
            cache[entity.name] = steps
        return steps

    def tuple_converter(self, entity: Entity, columns: tuple[str, ...],
                        out: tuple[str, ...], *, raw_times: bool = False) -> Callable[[tuple], dict[str, Any]]:
        """A function turning a result row of `entity`'s table, a tuple of `columns`, into a dict
        of the `out` names (fields or system columns) in wire form, as `to_wire_row` would give
        them. Built once per shape: a pull page converts a thousand rows. `raw_times`: the
        date-time columns were read as the driver gives them (`raw_time_columns`), so a value
        may be SQLite's text of a datetime instead of a datetime."""
        cache = self.__dict__.setdefault("_tuple_converters", {})
        key = (entity.name, columns, out, raw_times)
        found = cache.get(key)
        if found is not None:
            return found
        fields = {f.name: f for f in entity.fields}
        plan = []
        secret = []
        codec = self.codec
        for name in out:
            if name in ("created_at", "updated_at"):
                step = wire_step(None, entity, codec)
                if raw_times:
                    step = raw_time_step(step)
            elif name == "deleted":
                step = bool
            elif name in ("id", "version"):
                step = None
            elif fields[name].encrypted:
                secret.append((fields[name], columns.index(name)))
                continue
            else:
                step = wire_step(fields[name], entity, codec)
                if fields[name].type not in ("datetime", "date", "decimal"):
                    step = None
                elif fields[name].type == "datetime" and raw_times:
                    step = raw_time_step(step)
                elif fields[name].type == "decimal" and raw_times and fields[name].scale is not None:
                    step = raw_decimal_step(step, fields[name].scale)
            plan.append((name, columns.index(name), step))
        plain = dict_builder(plan)
        id_at = columns.index("id") if secret else -1

        def convert(row: tuple) -> dict[str, Any]:
            result = plain(row)
            for f, i in secret:
                value = row[i]
                result[f.name] = None if value is None else decrypted(codec, entity, f, value, row[id_at])
            return result
        cache[key] = convert if secret else plain
        return cache[key]

    def values_to_db(self, entity: Entity, values: Mapping[str, Any], record_id: str | None = None,
                     subject: Any = None) -> dict[str, Any]:
        """`values` (wire) as stored: encrypted fields encoded for record `record_id` under the
        key of `subject`, with the blind index columns of blind-indexed fields."""
        steps = self.db_converters(entity)
        out = {name: None if v is None else steps[name](v) for name, v in values.items() if name in steps}
        if len(out) != len(values):
            self._row_encoder(entity)(out, values, record_id, subject)
        return out

    def insert_builder(self, entity: Entity) -> InsertBuilder:
        """The function building a new record's stored and wire rows in one pass
        (`fieldsync.store.compiled_rows`), compiled once per entity of this model version."""
        cache = self.__dict__.setdefault("_insert_builders", {})
        builder = cache.get(entity.name)
        if builder is None:
            builder = cache[entity.name] = compile_insert(
                entity, self.table(entity), self.db_converters(entity),
                self._row_encoder(entity) if entity.has_encrypted else None)
        return builder

    def _row_encoder(self, entity: Entity) -> Callable[[dict, Mapping[str, Any], str | None, Any], None]:
        cache = self.__dict__.setdefault("_row_encoders", {})
        encoder = cache.get(entity.name)
        if encoder is None:
            codec = self.codec
            secret = [(f, bidx_column(f) if f.encryption == "blind_index" else None)
                      for f in entity.fields if f.encrypted]

            def encoder(out: dict, values: Mapping[str, Any], record_id: str | None, subject: Any) -> None:
                for f, bidx in secret:
                    if f.name not in values:
                        continue
                    v = values[f.name]
                    if v is None:
                        out[f.name] = None
                        if bidx:
                            out[bidx] = None
                        continue
                    out[f.name] = codec.encode(entity, f, v, record_id, subject)
                    if bidx:
                        out[bidx] = codec.blind_index(entity, f, v)
            cache[entity.name] = encoder
        return encoder

    def encoders(self, entity: Entity) -> dict[str, Callable[[Any], list[Any]]]:
        """Per deterministically encrypted field, a function giving every stored form of a wire
        value (for WHERE clauses compiled from expressions)."""
        return {f.name: (lambda v, f=f: self.codec.lookup_values(entity, f, v))
                for f in entity.fields if f.encryption == "deterministic"}

    def subject_of(self, conn: sa.Connection, entity: Entity, record_id: str) -> Any:
        """The wire value of record `record_id`'s subject field (None without one)."""
        if entity.subject is None:
            return None
        table = self.table(entity)
        stored = conn.execute(sa.select(table.c[entity.subject]).where(table.c.id == record_id)).scalar()
        if stored is None:
            return None
        return to_wire(entity.field(entity.subject), stored, entity, self.codec, record_id)

    def _row_filter(self, entity: Entity, row_filter: RowFilter | None,
                    table: sa.Table | None = None) -> sa.ColumnElement | None:
        """`row_filter` as a WHERE clause on `table` (entity's table by default); a child's
        parent condition is an EXISTS on the parent's table, so every path shares it."""
        if row_filter is None:
            return None
        table = self.table(entity) if table is None else table
        clauses = []
        if row_filter.expr is not None:
            clauses.append(compile_expr(row_filter.expr, table, row_filter.user, encoders=self.encoders(entity)))
        if row_filter.parent is not None:
            parent_name, link, parent_filter = row_filter.parent
            parent = self.model.entity(parent_name)
            parent_table = self.table(parent).alias()
            where = [parent_table.c.id == table.c[link], parent_table.c.deleted == sa.false()]
            inner = self._row_filter(parent, parent_filter, parent_table)
            if inner is not None:
                where.append(inner)
            clauses.append(sa.exists().where(*where))
        if not clauses:
            return None
        return clauses[0] if len(clauses) == 1 else sa.and_(*clauses)

    def _select_live(self, entity: Entity, record_id: str, row_filter: RowFilter | None):
        table = self.table(entity)
        query = sa.select(table).where(table.c.id == record_id, table.c.deleted == sa.false())
        where = self._row_filter(entity, row_filter)
        if where is not None:
            query = query.where(where)
        return query

    def _current_for_write(self, conn: sa.Connection, entity: Entity, record_id: str,
                           row_filter: RowFilter | None, expected_version: int | None):
        """The live row, locked for the write; NotFound when absent or outside the row filter,
        Conflict when the caller's expected version is not the current one."""
        current = conn.execute(self._select_live(entity, record_id, row_filter)
                               .with_for_update()).mappings().first()
        if current is None:
            raise NotFound(f"no {entity.name} with id {record_id}")
        if expected_version is not None and current["version"] != expected_version:
            raise Conflict(f"{entity.name} {record_id} is at version {current['version']}, "
                           f"not {expected_version}")
        return current

    def _written(self, conn: sa.Connection, entity: Entity, op: str, record: dict[str, Any],
                 prev: dict[str, Any] | None = None) -> None:
        """One REST write done on `conn`: log it (origin: the server), then run the hooks."""
        if self.changelog is not None:
            self.changelog.record_changes(conn, [(entity, op, record, prev)])
        for hook in self.write_hooks:
            hook(conn, entity, op, record, prev)

    def write_rows(self, conn: sa.Connection, rows: Iterable[tuple[Entity, dict[str, Any], bool]],
                   changes: Sequence[tuple], *, origin: str | None, seqs: Sequence[int | None]) -> list[int]:
        """Write stored rows that the caller checked and converted (sync apply: a batch of pushed
        mutations, `fieldsync.sync.apply`) and log `changes` (`(entity, op, record, prev)` each,
        from device `origin`, mutation `seqs`) in `conn`'s write transaction; returns the
        changes' positions. `rows` are (entity, stored row, whether the row is in the table
        already): updates one by one, inserts one executemany per entity. Positions are taken
        last, after the rows' locks (invariant 3). The write hooks do not run: the caller audits."""
        inserts: dict[str, tuple[Entity, list[dict[str, Any]]]] = {}
        for entity, row, stored in rows:
            if not stored:
                inserts.setdefault(entity.name, (entity, []))[1].append(row)
                continue
            table = self.table(entity)
            conn.execute(table.update().where(table.c.id == row["id"]).values(
                {k: v for k, v in row.items() if k != "id"}))
        for entity, new_rows in inserts.values():
            insert_many(conn, self.table(entity), new_rows)
        if self.changelog is None:
            raise ValueError("this RecordStore has no change log to record the batch in")
        return self.changelog.record_changes(conn, changes, origin=origin, seqs=seqs)

    # -- checks ----------------------------------------------------------------------------
    def check_references(self, conn: sa.Connection, entity: Entity, values: Mapping[str, Any],
                         prefix: str = "", reach: Reach | None = None) -> list[FieldProblem]:
        """A problem for each ref field naming a record that is missing or deleted, or, with
        `reach` (the caller's read rules), that the caller may not read: the same problem, so
        an answer never tells a hidden record from a missing one."""
        problems: list[FieldProblem] = []
        wanted: dict[str, set[str]] = {}
        for f in entity.fields:
            if f.type == "ref" and values.get(f.name) is not None and not f.encrypted:
                wanted.setdefault(f.ref, set()).add(values[f.name])
        found: dict[str, set[str]] = {}
        for target, ids in sorted(wanted.items()):
            t = self.metadata.tables[target]
            where = [t.c.id.in_(sorted(ids)), t.c.deleted == sa.false()]
            if reach is not None:
                reads, row_filter = reach(self.model.entity(target))
                if not reads:
                    found[target] = set()
                    continue
                clause = self._row_filter(self.model.entity(target), row_filter)
                if clause is not None:
                    where.append(clause)
            rows = conn.execute(sa.select(t.c.id).where(*where))
            found[target] = {r[0] for r in rows}
        for f in entity.fields:
            v = values.get(f.name)
            if f.type == "ref" and v is not None and not f.encrypted and v not in found[f.ref]:
                problems.append(FieldProblem(prefix + f.name, f"refers to a {f.ref} that does not exist ({v})"))
        return problems

    def check_unique(self, conn: sa.Connection, entity: Entity, values: Mapping[str, Any],
                     own_id: str | None = None, prefix: str = "") -> list[FieldProblem]:
        """A problem for each unique field whose value another live record already holds."""
        table = self.table(entity)
        problems = []
        for f in entity.fields:
            if f.unique and values.get(f.name) is not None:
                if f.encrypted:   # deterministic (the loader allows no other mode on a unique field)
                    match = table.c[f.name].in_(self.codec.lookup_values(entity, f, values[f.name]))
                else:
                    match = table.c[f.name] == to_db(table.c[f.name], f, values[f.name], entity, self.codec)
                query = sa.select(table.c.id).where(match, table.c.deleted == sa.false())
                if own_id is not None:
                    query = query.where(table.c.id != own_id)
                if conn.execute(query.limit(1)).first() is not None:
                    problems.append(FieldProblem(prefix + f.name, "must be unique; another record has this value"))
        return problems

    # -- create ----------------------------------------------------------------------------
    def _prepare_create(self, entity: Entity, data: Any, *, writable: tuple[str, ...] | None,
                        server_values: Mapping[str, Any], prefix: str,
                        omit_required: tuple[str, ...] = ()) -> tuple[dict[str, Any], str | None, list[FieldProblem]]:
        if not isinstance(data, dict):
            return {}, None, [FieldProblem(prefix.rstrip("."), "must be a JSON object")]
        body = dict(data)
        given = "id" in body   # "id": null is not a UUID (the schema says string): refused, not ignored
        record_id = body.pop("id", None)
        problems: list[FieldProblem] = []
        if given:
            try:
                record_id = uuid_text(record_id) if isinstance(record_id, str) else None
            except ValueError:
                record_id = None
            if record_id is None:
                problems.append(FieldProblem(prefix + "id", "must be a UUID"))
        clean, found = validate_record(entity, body, partial=False, writable=writable,
                                       server_set=tuple(server_values) + omit_required)
        problems += [FieldProblem(prefix + p.field, p.reason) for p in found]
        clean.update(server_values)
        return clean, record_id, problems

    def create(self, entity: Entity | str, data: Any, *, writable: tuple[str, ...] | None = None,
               server_values: Mapping[str, Any] | None = None,
               children: Mapping[str, list[Any]] | None = None,
               row_filter: RowFilter | None = None, reach: Reach | None = None,
               children_writable: Mapping[str, tuple[str, ...] | None] | None = None) -> dict[str, Any]:
        """Validate and insert a record (and inline children), returning it in wire form.

        `data` may hold an `id` (a UUID the client made). `server_values` are filled by the
        server whatever the body says (the owner). `children` maps a child collection name to
        the child bodies, created in the same transaction with their parent field filled.
        Raises ValidationFailed listing every problem, Conflict when the id exists, and
        PermissionDenied when the record would fall outside `row_filter`. `reach` (the caller's
        read rules) makes a reference to a record the caller may not read a problem
        (`check_references`); `children_writable` limits the fields of each collection's bodies.
        """
        entity = self._entity(entity)
        server_values = dict(server_values or {})
        clean, record_id, problems = self._prepare_create(entity, data, writable=writable,
                                                          server_values=server_values, prefix="")
        child_plans = []
        for collection, bodies in (children or {}).items():
            child = next(self.model.entity(c) for c in entity.children
                         if self.model.entity(c).collection == collection)
            if not isinstance(bodies, list):
                problems.append(FieldProblem(collection, "must be a list of objects"))
                continue
            for i, body in enumerate(bodies):
                prefix = f"{collection}[{i}]."
                if isinstance(body, dict) and child.parent_field in body:
                    problems.append(FieldProblem(prefix + child.parent_field, "is filled from the parent"))
                    continue
                c_clean, c_id, c_problems = self._prepare_create(
                    child, body, writable=(children_writable or {}).get(collection), server_values={}, prefix=prefix,
                    omit_required=(child.parent_field,))
                problems += c_problems
                child_plans.append((child, c_clean, c_id, prefix))
        if problems:
            raise ValidationFailed(problems)
        for attempt in range(3):   # the subject's key shredded between making it and the write: again
            try:
                self.codec.ensure_subjects(entity, [clean.get(entity.subject)] if entity.subject else [])
                for child, c_clean, _c_id, _prefix in child_plans:
                    if child.subject:
                        self.codec.ensure_subjects(child, [c_clean.get(child.subject)])
                now = self.clock()
                record_id = record_id or self.id_factory(now)
                with _integrity_as_conflict(entity), write_transaction(self.engine) as conn:
                    problems = self.check_references(conn, entity, clean, reach=reach) + self.check_unique(
                        conn, entity, clean)
                    if problems:
                        raise ValidationFailed(problems)
                    record = self._insert(conn, entity, record_id, clean, now)
                    if row_filter is not None and conn.execute(self._select_live(entity, record_id, row_filter)).first() is None:
                        raise PermissionDenied("the new record would fall outside the records your role may reach")
                    for child, c_clean, c_id, prefix in child_plans:
                        c_clean[child.parent_field] = record_id
                        problems += self.check_references(conn, child, c_clean, prefix, reach=reach) + self.check_unique(
                            conn, child, c_clean, prefix=prefix)
                        if not problems:
                            c_record = self._insert(conn, child, c_id or self.id_factory(now), c_clean, now)
                            record.setdefault(child.collection, []).append(c_record)
                    if problems:
                        raise ValidationFailed(problems)
                return record
            except KeyMissing:
                if attempt == 2:
                    raise

    def _insert(self, conn: sa.Connection, entity: Entity, record_id: str, clean: Mapping[str, Any],
                now: dt.datetime) -> dict[str, Any]:
        table = self.table(entity)
        if conn.execute(sa.select(table.c.id).where(table.c.id == record_id)).first() is not None:
            raise Conflict(f"a {entity.name} with id {record_id} already exists")
        row = {"id": record_id, "version": 1, "created_at": now, "updated_at": now, "deleted": False}
        row.update(self.values_to_db(entity, clean, record_id, clean.get(entity.subject) if entity.subject else None))
        conn.execute(table.insert().values(row))
        record = self.to_wire_row(entity, row, known=clean)
        self._written(conn, entity, "create", record)
        return record

    # -- read ------------------------------------------------------------------------------
    def get(self, entity: Entity | str, record_id: str, *, row_filter: RowFilter | None = None) -> dict[str, Any]:
        """The live record `record_id` in wire form; NotFound when missing, deleted or filtered out."""
        entity = self._entity(entity)
        with self.engine.connect() as conn:
            row = conn.execute(self._select_live(entity, record_id, row_filter)).mappings().first()
        if row is None:
            raise NotFound(f"no {entity.name} with id {record_id}")
        return self.to_wire_row(entity, row)

    def children_of(self, parent: Entity | str, parent_id: str, collection: str, *,
                    row_filter: RowFilter | None = None) -> list[dict[str, Any]]:
        """The live children of one parent record in one collection, oldest id first."""
        parent = self._entity(parent)
        child = next(self.model.entity(c) for c in parent.children if self.model.entity(c).collection == collection)
        table = self.table(child)
        query = (sa.select(table).where(table.c[child.parent_field] == parent_id, table.c.deleted == sa.false())
                 .order_by(table.c.id))
        where = self._row_filter(child, row_filter)
        if where is not None:
            query = query.where(where)
        with self.engine.connect() as conn:
            return [self.to_wire_row(child, r) for r in conn.execute(query).mappings()]

    # -- update and delete -----------------------------------------------------------------
    def update(self, entity: Entity | str, record_id: str, changes: Any, *,
               expected_version: int | None, writable: tuple[str, ...] | None = None,
               replace: bool = False, row_filter: RowFilter | None = None,
               reach: Reach | None = None) -> dict[str, Any]:
        """Apply `changes` (PATCH) or, with `replace`, set every writable field (PUT: omitted
        fields return to their default or null). Raises NotFound, Conflict when
        `expected_version` is stale, ValidationFailed, PermissionDenied when the result would
        leave `row_filter`."""
        entity = self._entity(entity)
        if replace and isinstance(changes, dict):
            # PUT replaces what the caller may edit; the other fields keep their values
            editable = tuple(f.name for f in entity.fields if (writable is None or f.name in writable)
                             and f.name != entity.owner)
            others = tuple(f.name for f in entity.fields if f.name not in editable)
            clean, problems = validate_record(entity, changes, partial=False, writable=editable,
                                              server_set=others)
            clean = {name: clean.get(name) for name in editable}
        else:
            clean, problems = validate_record(entity, changes, partial=True, writable=writable)
        if problems:
            raise ValidationFailed(problems)
        table = self.table(entity)
        for attempt in range(3):   # the subject's key shredded between making it and the write: again
            try:
                keyed = entity.subject is not None and any(f.encrypted and f.name in clean for f in entity.fields)
                if keyed:   # the subject's key must exist before the write transaction (crypto/keyring.py)
                    if entity.subject in clean:
                        self.codec.ensure_subjects(entity, [clean[entity.subject]])
                    else:
                        with self.engine.connect() as conn:
                            self.codec.ensure_subjects(entity, [self.subject_of(conn, entity, record_id)])
                with _integrity_as_conflict(entity), write_transaction(self.engine) as conn:
                    current = self._current_for_write(conn, entity, record_id, row_filter, expected_version)
                    problems = self.check_references(conn, entity, clean, reach=reach) + self.check_unique(
                        conn, entity, clean, record_id)
                    if problems:
                        raise ValidationFailed(problems)
                    values = self.encrypted_update(conn, entity, record_id, clean, current)
                    values.update(version=current["version"] + 1,
                                  updated_at=later_write_time(self.clock(), current["updated_at"]))
                    result = conn.execute(table.update().where(table.c.id == record_id,
                                                               table.c.version == current["version"]).values(values))
                    if result.rowcount != 1:  # another writer got in between (PostgreSQL read committed)
                        raise Conflict(f"{entity.name} {record_id} changed while it was being updated")
                    if row_filter is not None and conn.execute(self._select_live(entity, record_id, row_filter)).first() is None:
                        raise PermissionDenied("the change would move the record outside the records your role may reach")
                    row = dict(current)
                    row.update(values)
                    record = self.to_wire_row(entity, row, known=clean)
                    self._written(conn, entity, "update", record, self.to_wire_row(entity, current))
                return record
            except KeyMissing:
                if attempt == 2:
                    raise

    def encrypted_update(self, conn: sa.Connection, entity: Entity, record_id: str, clean: Mapping[str, Any],
                         current: Mapping[str, Any]) -> dict[str, Any]:
        """`clean` (wire changes to record `record_id`, whose stored row is `current`) as stored
        values. When the change gives the record another subject, its other encrypted values
        move to the new subject's key too (re-encrypted), so shredding a subject never misses
        a value nor takes another subject's."""
        if entity.subject is None or not entity.has_encrypted:
            return self.values_to_db(entity, clean, record_id)
        stored = current.get(entity.subject)
        old_subject = None if stored is None else to_wire(entity.field(entity.subject), stored, entity, self.codec,
                                                          record_id)
        subject = clean.get(entity.subject, old_subject) if entity.subject in clean else old_subject
        if subject != old_subject:
            moved = dict(clean)
            for f in entity.fields:
                if f.encrypted and f.name not in moved and f.name != entity.subject and current.get(f.name) is not None:
                    moved[f.name] = to_wire(f, current[f.name], entity, self.codec, record_id)
            return self.values_to_db(entity, moved, record_id, subject)
        return self.values_to_db(entity, clean, record_id, subject)

    def delete(self, entity: Entity | str, record_id: str, *, expected_version: int | None = None,
               row_filter: RowFilter | None = None) -> dict[str, Any]:
        """Soft-delete: the row stays as a tombstone (deleted = true, version + 1)."""
        entity = self._entity(entity)
        table = self.table(entity)
        with write_transaction(self.engine) as conn:
            current = self._current_for_write(conn, entity, record_id, row_filter, expected_version)
            values = {"deleted": True, "version": current["version"] + 1,
                      "updated_at": later_write_time(self.clock(), current["updated_at"])}
            result = conn.execute(table.update().where(table.c.id == record_id,
                                                       table.c.version == current["version"]).values(values))
            if result.rowcount != 1:
                raise Conflict(f"{entity.name} {record_id} changed while it was being deleted")
            row = dict(current)
            row.update(values)
            record = self.to_wire_row(entity, row)
            self._written(conn, entity, "delete", record, self.to_wire_row(entity, current))
        return record

    # -- list ------------------------------------------------------------------------------
    def _filter_clause(self, entity: Entity, flt: Filter, allowed: Mapping[str, Field]) -> sa.ColumnElement:
        f = allowed.get(flt.column)
        if f is None:
            raise BadQuery(f"cannot filter on {flt.column!r}")
        if flt.op not in operators_for(f):
            raise BadQuery(f"{flt.column}: the operator {flt.op!r} does not apply to a {f.type} field")
        col = self.table(entity).c[flt.column]
        if f.encrypted:   # equality only: against every stored form (deterministic) or blind index
            values = flt.value if flt.op == "in" else [flt.value]
            if f.encryption == "deterministic":
                forms = [form for v in values for form in self.codec.lookup_values(entity, f, v)]
            else:
                col = self.table(entity).c[bidx_column(f)]
                forms = [form for v in values for form in self.codec.blind_indexes(entity, f, v)]
            return col.in_(sa.bindparam(None, forms, type_=col.type, expanding=True, unique=True))

        def convert(value: Any) -> Any:
            try:
                return python_value(col.type, value)
            except Unconvertible:
                raise BadQuery(f"{flt.column}: {value!r} is not a valid {f.type} value") from None

        if flt.op == "in":
            values = [convert(v) for v in flt.value]
            return col.in_(sa.bindparam(None, values, type_=col.type, expanding=True, unique=True))
        value = convert(flt.value)
        if flt.op == "eq":
            return col == value
        if flt.op == "ne":
            return sa.or_(col != value, col.is_(None))  # "not equal" includes rows without a value
        comparisons = {"gt": col > value, "gte": col >= value, "lt": col < value, "lte": col <= value}
        if flt.op not in comparisons:
            raise BadQuery(f"{flt.column}: unknown filter operator {flt.op!r}")
        return comparisons[flt.op]

    def list(self, entity: Entity | str, *, filters: Iterable[Filter] = (), sort: str = "id",
             limit: int = 50, cursor: str | None = None, total: bool = False,
             row_filter: RowFilter | None = None, columns: Iterable[str] | None = None) -> Page:
        """One page of live records, ordered by `sort` ("field" or "-field", ties by id).

        `columns` limits the columns usable in filters and sort (a role's visible fields);
        BadQuery names what is wrong with a filter, the sort or the cursor.
        """
        entity = self._entity(entity)
        table = self.table(entity)
        allowed = query_fields(entity)
        if columns is not None:
            keep = set(columns) | set(SYSTEM_QUERY_COLUMNS)
            allowed = {k: v for k, v in allowed.items() if k in keep}
        where = [table.c.deleted == sa.false()]
        where += [self._filter_clause(entity, flt, allowed) for flt in filters]
        rf = self._row_filter(entity, row_filter)
        if rf is not None:
            where.append(rf)
        descending = sort.startswith("-")
        key = sort[1:] if descending else sort
        key_field = allowed.get(key)
        if key_field is None or not sortable(key_field):
            raise BadQuery(f"cannot sort by {key!r}")
        col, id_col = table.c[key], table.c.id
        page_where = list(where)
        if cursor is not None:
            c_sort, c_value, c_id = _decode_cursor(cursor)
            if c_sort != sort:
                raise BadQuery("cursor belongs to a different sort order")
            page_where.append(self._after(col, id_col, c_value, c_id, descending, key == "id"))
        if key == "id":
            order = [id_col.desc() if descending else id_col.asc()]
        elif descending:  # nulls first, then values high to low, ties by id (exact reverse of ascending)
            order = [col.is_(None).desc(), col.desc(), id_col.desc()]
        else:
            order = [col.is_(None).asc(), col.asc(), id_col.asc()]
        query = sa.select(table).where(*page_where).order_by(*order).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = list(conn.execute(query).mappings())
            count = conn.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one() \
                if total else None
        more = len(rows) > limit
        rows = rows[:limit]
        items = [self.to_wire_row(entity, r) for r in rows]
        next_cursor = None
        if more and rows:
            last = items[-1]
            next_cursor = _encode_cursor(sort, last[key], last["id"])
        return Page(items, next_cursor, count)

    @staticmethod
    def _after(col: sa.Column, id_col: sa.Column, value: Any, last_id: str, descending: bool,
               by_id: bool) -> sa.ColumnElement:
        """Rows strictly after (value, last_id) in the page order, nulls sorting last ascending."""
        if by_id:
            return id_col < last_id if descending else id_col > last_id
        if value is None:
            if descending:  # nulls come first: the rest of the nulls, then every value
                return sa.or_(sa.and_(col.is_(None), id_col < last_id), col.isnot(None))
            return sa.and_(col.is_(None), id_col > last_id)
        try:
            value = python_value(col.type, value)
        except Unconvertible:
            raise BadQuery("cursor is not one this server issued") from None
        if descending:
            return sa.or_(col < value, sa.and_(col == value, id_col < last_id))
        return sa.or_(col > value, sa.and_(col == value, id_col > last_id), col.is_(None))


def wire_problems(problems: Iterable[FieldProblem]) -> list[dict[str, str]]:
    return [p.as_dict() for p in problems]


__all__ = ["Page", "Reach", "RecordStore", "RowFilter", "wire_problems"]
