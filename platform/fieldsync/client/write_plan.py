"""How a local write of one entity is checked and stored, prepared once per table of the
device schema (docs/benchmarks.md "Device writes"): the field checks in entity order with their
normalisers bound, each column's storage converter, the INSERT statement per set of columns
(one text, so sqlite3 reuses its prepared statement) and the outbox entry's JSON encoder.

A `WritePlan` is pure: it never opens the store. `plan_for(table)` builds it on first use and
keeps it on the (frozen, per-schema) `EntityTable`, so a migrated schema gets new plans.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, Callable, Mapping

import orjson

from fieldsync.client.schema import EntityTable, quote
from fieldsync.defs.model import Field
from fieldsync.defs.values import DEFAULT_STRING_MAX, FieldProblem, ValueProblem, field_map, normalize_value
from fieldsync.errors import ValidationError

_json_fields = json.JSONEncoder(sort_keys=True).encode


def encode_fields(fields: Mapping[str, Any]) -> str:
    """The outbox entry's `fields` as JSON text, keys sorted (orjson: a tenth of `json.dumps`;
    what it cannot write, an integer past 64 bits in a JSON field, goes through `json`)."""
    try:
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:   # orjson.JSONEncodeError
        return _json_fields(fields)


OUTBOX_INSERT = ('INSERT INTO "_outbox" (entity, op, record_id, base_version, fields, client_time) '
                 "VALUES (?, ?, ?, ?, ?, ?)")

_MISSING = object()


class WritePlan:
    """The write path of one entity table, built once (see the module docstring)."""

    def __init__(self, table: EntityTable):
        self.table = table
        self.name = table.name
        self.read_only = table.direction in ("pull", "none")
        self.owner = table.owner
        entity = table.entity
        self._known = field_map(entity)
        # (name, normaliser, required, has_default, default) in entity order: validate_record's walk
        self._fields = tuple((f.name, normaliser(f), f.required, f.has_default, f.default) for f in entity.fields)
        self._server_set = (self.owner,) if self.owner else ()
        self.converters = table.converters
        # JSON columns are compared decoded (`1` and `1.0` are one value); the rest in storage form
        self._decoders = {c.name: c.from_storage for c in table.columns if c.storage == "json-text"}
        self._insert_sql: dict[tuple[str, ...], str] = {}
        quoted = quote(table.table)
        self.delete_sql = f"UPDATE {quoted} SET _deleted = 1, _dirty = 1 WHERE id = ?"
        self._read_sql: dict[tuple[str, ...], str] = {}
        self._update_sql: dict[tuple[str, ...], str] = {}

    # -- checks -------------------------------------------------------------------------------

    def refuse_read_only(self) -> None:
        if self.read_only:
            raise ValidationError(self.name, [FieldProblem("", f"{self.name} comes from the server "
                                                               "and cannot be changed on the device")])

    def check(self, fields: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
        """`outbox.check_fields`: the values in wire form, or ValidationError naming every
        problem (field and reason). The same checks, in the same order, with the same words as
        `fieldsync.defs.values.validate_record`, which the server runs; only the walk over the
        fields is prepared once."""
        problems = self.problems(fields, partial=partial)
        if isinstance(problems, list):
            raise ValidationError(self.name, problems)
        return problems

    def problems(self, fields: Any, *, partial: bool) -> dict[str, Any] | list[FieldProblem]:
        """The clean values, or the list of problems when there is any."""
        if self.read_only:
            self.refuse_read_only()
        problems: list[FieldProblem] = []
        owner = self.owner
        if type(fields) is not dict:
            if owner and isinstance(fields, Mapping) and owner in fields:
                problems.append(FieldProblem(owner, "is set by the server from the signed-in user"))
                fields = {k: v for k, v in fields.items() if k != owner}
            if not isinstance(fields, dict):
                problems.append(FieldProblem("", "the body must be a JSON object"))
                return problems
        elif owner and owner in fields:
            problems.append(FieldProblem(owner, "is set by the server from the signed-in user"))
            fields = {k: v for k, v in fields.items() if k != owner}
        known = self._known
        for name in fields:
            if name not in known:
                problems.append(FieldProblem(name, f"is not a field of {self.name}"))
        clean: dict[str, Any] = {}
        get = fields.get
        server_set = self._server_set
        for name, normalise, required, has_default, default in self._fields:
            value = get(name, _MISSING)
            if value is not _MISSING:
                if value is None:
                    if required:
                        problems.append(FieldProblem(name, "is required and may not be null"))
                        continue
                    clean[name] = None
                    continue
                try:
                    clean[name] = normalise(value)
                except ValueProblem as exc:
                    problems.append(FieldProblem(name, str(exc)))
            elif not partial:
                if has_default:
                    clean[name] = default
                elif required and name not in server_set:
                    problems.append(FieldProblem(name, "is required"))
        return problems if problems else clean

    # -- statements and values ------------------------------------------------------------------

    def insert_sql(self, names: tuple[str, ...]) -> str:
        """INSERT of a new local row setting `names` (fields), `_version = 0` and `_dirty = 1`."""
        sql = self._insert_sql.get(names)
        if sql is None:
            columns = ", ".join(quote(n) for n in ("id", *names, "_version", "_dirty"))
            marks = ", ".join("?" for _ in range(len(names) + 1))
            sql = self._insert_sql[names] = (f"INSERT INTO {quote(self.table.table)} ({columns}) "
                                             f"VALUES ({marks}, 0, 1)")
        return sql

    def read_sql(self, names: tuple[str, ...]) -> str:
        """SELECT of what a write needs of the local row: `_version`, `_deleted` and `names`."""
        sql = self._read_sql.get(names)
        if sql is None:
            columns = ", ".join(quote(n) for n in ("_version", "_deleted", *names))
            sql = self._read_sql[names] = f"SELECT {columns} FROM {quote(self.table.table)} WHERE id = ?"
        return sql

    def update_sql(self, names: tuple[str, ...]) -> str:
        """UPDATE of `names` of a local row, marking it dirty; parameters: values, then id."""
        sql = self._update_sql.get(names)
        if sql is None:
            assignments = ", ".join(f"{quote(k)} = ?" for k in names)
            sql = self._update_sql[names] = (f"UPDATE {quote(self.table.table)} SET {assignments}, _dirty = 1 "
                                             "WHERE id = ?")
        return sql

    def changed_fields(self, row: Any, clean: Mapping[str, Any]) -> dict[str, Any]:
        """The values of `clean` that differ from the stored `row` as the app reads it."""
        converters, decoders = self.converters, self._decoders
        changed: dict[str, Any] = {}
        for name, value in clean.items():
            stored = row[name]
            if value is None or stored is None:
                differs = value is not stored
            elif name in decoders:
                differs = decoders[name](stored) != value
            else:
                convert = converters[name]
                differs = (value if convert is None else convert(value)) != stored
            if differs:
                changed[name] = value
        return changed

    def storage_values(self, record_id: str | None, clean: Mapping[str, Any]) -> list[Any]:
        """[record_id, the values of `clean` in storage form] (record_id None: left out)."""
        converters = self.converters
        out: list[Any] = [] if record_id is None else [record_id]
        append = out.append
        for name, value in clean.items():
            convert = converters[name]
            append(value if value is None or convert is None else convert(value))
        return out


def plan_for(table: EntityTable) -> WritePlan:
    """The table's write plan, built on first use and kept on the table."""
    plan = table.__dict__.get("_write_plan")
    if plan is None:
        plan = WritePlan(table)
        object.__setattr__(table, "_write_plan", plan)   # EntityTable is frozen; a cache, like cached_property
    return plan


# -- normalisers: `normalize_value(f, value)` with the common, already canonical values taken
# without the general path; anything else (and every refusal) goes through normalize_value, so
# the result and the reason are always the ones the server gives --------------------------------

_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch
# an ISO date-time in UTC with `Z`, seconds, and no or six fraction digits; a year before 1000 is
# written differently (format_datetime), so it takes the general path
_UTC_DATETIME = re.compile(r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?Z").fullmatch
_INT64 = 2**63 - 1


def normaliser(f: Field) -> Callable[[Any], Any]:
    """`value -> normalize_value(f, value)` for one field, built once."""
    def general(value: Any) -> Any:
        return normalize_value(f, value)

    t = f.type
    if t in ("uuid", "ref"):
        def uuid_value(value: Any) -> Any:
            if type(value) is str and _CANONICAL_UUID(value):
                return value
            return normalize_value(f, value)
        return uuid_value
    if t in ("string", "text"):
        limit = f.max_length if f.max_length is not None else (DEFAULT_STRING_MAX if t == "string" else None)
        if f.min_length is not None or f.pattern is not None:
            return general

        def text_value(value: Any) -> Any:
            # ASCII without NUL has nothing text_problem refuses
            if type(value) is str and value.isascii() and "\x00" not in value \
                    and (limit is None or len(value) <= limit):
                return value
            return normalize_value(f, value)
        return text_value
    if t == "enum":
        allowed = frozenset(v for v in f.values if isinstance(v, str))

        def enum_value(value: Any) -> Any:
            if type(value) is str and value in allowed:
                return value
            return normalize_value(f, value)
        return enum_value
    if t == "integer":
        low = -_INT64 if f.minimum is None else max(-_INT64, f.minimum)
        high = _INT64 if f.maximum is None else min(_INT64, f.maximum)

        def integer_value(value: Any) -> Any:
            if type(value) is int and low <= value <= high:
                return value
            return normalize_value(f, value)
        return integer_value
    if t == "boolean":
        def boolean_value(value: Any) -> Any:
            return value if type(value) is bool else normalize_value(f, value)
        return boolean_value
    if t == "datetime":
        def datetime_value(value: Any) -> Any:
            if type(value) is str:
                match = _UTC_DATETIME(value)
                if match:
                    try:
                        dt.datetime.fromisoformat(value)   # a real date and time (no 30 February)
                    except ValueError:
                        return normalize_value(f, value)
                    return value if match.group(1) else value[:-1] + ".000000Z"
            return normalize_value(f, value)
        return datetime_value
    return general
