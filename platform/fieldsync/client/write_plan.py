"""How a local write of one entity is checked and stored, prepared once per table of the
device schema (docs/benchmarks.md "Device writes"): the field checks in entity order with their
normalisers bound, each column's storage converter, the INSERT statement per set of columns
(one text, so sqlite3 reuses its prepared statement) and the outbox entry's JSON encoder.

The checks of a write that has no problem run as Python source generated from the entity and
compiled once per plan (`compile_checks`): one function per entity that walks its fields
unrolled, with the common types' canonical-value tests inline, and makes the clean values and
their storage row in one pass. At the first problem it gives up (None) and the general walk,
`WritePlan.problems`, names every problem; a property test holds both to the server's
`validate_record` (tests/client/test_write_plan.py).

A `WritePlan` is pure: it never opens the store. `plan_for(table)` builds it on first use and
keeps it on the (frozen, per-schema) `EntityTable`, so a migrated schema gets new plans.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, Callable, Mapping

import orjson

from fieldsync.client.schema import EntityTable, _to_0_1, quote
from fieldsync.defs.model import Field
from fieldsync.defs.values import DEFAULT_STRING_MAX, FieldProblem, ValueProblem, normalize_value, validate_record
from fieldsync.errors import ValidationError

_json_fields = json.JSONEncoder(sort_keys=True).encode


def encode_fields(fields: Mapping[str, Any]) -> str:
    """The outbox entry's `fields` as JSON text, keys sorted (orjson: a tenth of `json.dumps`;
    what it cannot write, an integer past 64 bits in a JSON field, goes through `json`)."""
    try:
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:   # orjson.JSONEncodeError
        return _json_fields(fields)


def encode_many(records: list[Mapping[str, Any]]) -> list[str]:
    """`encode_fields` of each of `records`."""
    dumps, option = orjson.dumps, orjson.OPT_SORT_KEYS
    try:
        return [dumps(fields, option=option).decode() for fields in records]
    except TypeError:   # orjson.JSONEncodeError: one of them needs `json`
        return [encode_fields(fields) for fields in records]


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
        self._server_set = (self.owner,) if self.owner else ()
        self.converters = table.converters
        # JSON columns are compared decoded (`1` and `1.0` are one value); the rest in storage form
        self._decoders = {c.name: c.from_storage for c in table.columns if c.storage == "json-text"}
        self._insert_sql: dict[tuple[str, ...], str] = {}
        quoted = quote(table.table)
        self.delete_sql = f"UPDATE {quoted} SET _deleted = 1, _dirty = 1 WHERE id = ?"
        self._read_sql: dict[tuple[str, ...], str] = {}
        self._update_sql: dict[tuple[str, ...], str] = {}
        # fields -> (clean, [None, *storage values]) or None; fields -> clean or None (partial)
        self.insert_values, self.update_values = compile_checks(self)

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

    def insert_row(self, fields: Any) -> tuple[dict[str, Any], list[Any]]:
        """`check(fields, partial=False)` and the INSERT's parameters for the columns
        `tuple(clean)`, a None in the id's place (`insert_values`); ValidationError as `check`."""
        if self.read_only:
            self.refuse_read_only()
        made = self.insert_values(fields)
        if made is None:
            clean = self.check(fields, partial=False)
            made = clean, [None, *self.storage_values(None, clean)]
        return made

    def problems(self, fields: Any, *, partial: bool) -> dict[str, Any] | list[FieldProblem]:
        """The clean values, or the list of problems when there is any."""
        if self.read_only:
            self.refuse_read_only()
        if partial:
            clean = self.update_values(fields)
            if clean is not None:
                return clean
        else:
            made = self.insert_values(fields)
            if made is not None:
                return made[0]
        return self.all_problems(fields, partial=partial)

    def all_problems(self, fields: Any, *, partial: bool) -> dict[str, Any] | list[FieldProblem]:
        """`problems` by the server's own general walk (`validate_record`), without the compiled
        checks: the one that names every problem. The owner is the server's to set."""
        if self.read_only:
            self.refuse_read_only()
        problems: list[FieldProblem] = []
        owner = self.owner
        if owner and isinstance(fields, Mapping) and owner in fields:
            problems.append(FieldProblem(owner, "is set by the server from the signed-in user"))
            fields = {k: v for k, v in fields.items() if k != owner}
        clean, more = validate_record(self.table.entity, fields, partial=partial, server_set=self._server_set)
        problems += more
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


# -- the compiled checks -----------------------------------------------------------------------

def compile_checks(plan: WritePlan) -> tuple[Callable[[Any], tuple[dict[str, Any], list[Any]] | None],
                                             Callable[[Any], dict[str, Any] | None]]:
    """The plan's checks as two functions generated from the entity, compiled once:

    - `insert_values(fields)`: for a write with no problem, `(clean, row)`: the clean values
      exactly as `WritePlan.all_problems(fields, partial=False)` makes them, and `row`, the
      INSERT's parameters for the columns `tuple(clean)`: a None in the id's place, then each
      value in storage form (`storage_values`);
    - `update_values(fields)`: the clean values of `all_problems(fields, partial=True)`;

    and None, at the first problem, for the general walk to name every one. Each non-null value
    is either taken as it is by the same canonical-value test the field's normaliser starts
    with, or passed to that normaliser; so the values are the normalisers' (the server's)."""
    entity = plan.table.entity
    names = {"MISSING": _MISSING, "ValueProblem": ValueProblem, "dict": dict, "type": type, "str": str,
             "int": int, "bool": bool, "UUID": _CANONICAL_UUID,
             "KNOWN": frozenset(f.name for f in entity.fields if f.name != plan.owner)}
    server_set = plan._server_set
    insert_lines = ["def insert_values(fields):",
                    "    if type(fields) is not dict or not fields.keys() <= KNOWN:",
                    "        return None",
                    "    get = fields.get",
                    "    clean = {}",
                    "    row = [None]",
                    "    append = row.append"]
    update_lines = ["def update_values(fields):",
                    "    if type(fields) is not dict or not fields.keys() <= KNOWN:",
                    "        return None",
                    "    get = fields.get",
                    "    clean = {}"]
    for i, f in enumerate(entity.fields):
        key = repr(f.name)
        convert = plan.converters[f.name]
        names[f"N{i}"] = normaliser(f)
        if convert is _to_0_1:
            stored = "(1 if v else 0)"
        elif convert is None:
            stored = "v"
        else:
            names[f"C{i}"] = convert
            stored = f"C{i}(v)"
        accept = _canonical_test(f, i, names)
        body = [f"    v = get({key}, MISSING)"]

        if f.has_default:
            names[f"D{i}"] = f.default
            names[f"S{i}"] = f.default if f.default is None or convert is None else convert(f.default)
            missing = [f"        clean[{key}] = D{i}", f"        append(S{i})"]
        elif f.required and f.name not in server_set:
            missing = ["        return None"]
        else:
            missing = ["        pass"]
        insert_lines += [*body, "    if v is MISSING:", *missing, *_present(f, i, accept, stored)]
        update_lines += [*body, "    if v is MISSING:", "        pass", *_present(f, i, accept, None)]
    insert_lines.append("    return clean, row")
    update_lines.append("    return clean")
    source = "\n".join(insert_lines + [""] + update_lines) + "\n"
    exec(compile(source, f"<write plan of {entity.name}>", "exec"), names)
    return names["insert_values"], names["update_values"]


def _present(f: Field, i: int, accept: str | None, stored: str | None) -> list[str]:
    """The branches of a field present in the write (`v`): null, canonical, normalised; each
    value kept in `clean` and, unless `stored` is None, its storage form (`stored`) in `row`."""
    key = repr(f.name)
    keep = [f"        clean[{key}] = v"] + ([f"        append({stored})"] if stored else [])
    lines = ["    elif v is None:"]
    lines += (["        return None"] if f.required else
              [f"        clean[{key}] = None"] + (["        append(None)"] if stored else []))
    if accept:
        lines += [f"    elif {accept}:", *keep]
    return [*lines, "    else:", "        try:", f"            v = N{i}(v)", "        except ValueProblem:",
            "            return None", *keep]


def _canonical_test(f: Field, i: int, names: dict[str, Any]) -> str | None:
    """The expression (of `v`) true for a value the field's normaliser returns as it is, or None
    (the normaliser decides every value): the same tests `normaliser(f)` starts with."""
    t = f.type
    if t in ("uuid", "ref"):
        return "type(v) is str and UUID(v)"
    if t in ("string", "text") and f.min_length is None and f.pattern is None:
        limit = f.max_length if f.max_length is not None else (DEFAULT_STRING_MAX if t == "string" else None)
        test = "type(v) is str and v.isascii() and '\\x00' not in v"
        return test if limit is None else f"{test} and len(v) <= {int(limit)}"
    if t == "enum":
        names[f"E{i}"] = frozenset(v for v in f.values if isinstance(v, str))
        return f"type(v) is str and v in E{i}"
    if t == "integer":
        low = -_INT64 if f.minimum is None else max(-_INT64, f.minimum)
        high = _INT64 if f.maximum is None else min(_INT64, f.maximum)
        names[f"L{i}"], names[f"H{i}"] = low, high
        return f"type(v) is int and L{i} <= v <= H{i}"
    if t == "boolean":
        return "type(v) is bool"
    return None
