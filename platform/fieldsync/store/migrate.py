"""Schema evolution: bring a server database up to the tables the model describes (invariant 9).

    plan = plan_migration(engine, model)           # read-only: what would change
    print(format_plan(plan))                       # `fieldsync migrate --dry-run`
    apply_migration(engine, plan)                  # refuses destructive steps unless allowed
    auto_migrate(engine, model)                    # server start: additive steps only

The plan compares the live database (SQLAlchemy inspection; Alembic's own type comparison)
with `build_metadata(model)` and the record of the last applied model in the platform table
`fs_schema`. Steps are executed with Alembic operations (batch mode on SQLite, which cannot
alter a column in place), inside one transaction: PostgreSQL has transactional DDL, and on
SQLite we open the transaction ourselves (`BEGIN IMMEDIATE`), because the sqlite3 driver would
otherwise run every DDL statement in autocommit mode.

What belongs to fieldsync: entity tables of the model, tables named in an entity's
`renamed_from`, and tables the last applied model recorded in `fs_schema`. Tables prefixed
`fs_` are platform tables owned by other modules; anything else is foreign and never touched.

Safety rules: additive changes (new table, new column, index, widening a type) are applied
automatically; renames only when declared (`renamed_from`); anything that can lose a value
(drop table or column, narrowing or changing a type) is destructive and needs the explicit flag.
"""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field as dc_field

import sqlalchemy as sa
from alembic.operations import Operations, ops
from alembic.runtime.migration import MigrationContext

from fieldsync.defs.model import SYSTEM_COLUMNS, Entity, Model
from fieldsync.errors import MigrationRefused
from fieldsync.store.engine import write_transaction
from fieldsync.store.tables import bidx_column
from fieldsync.store.tables import PLATFORM_PREFIX, blind_index_columns, build_metadata

__all__ = [
    "SCHEMA_TABLE", "MigrationPlan", "Step", "apply_migration", "auto_migrate", "format_plan",
    "plan_migration", "read_schema_record", "schema_table", "upgrade_schema_table",
]

SCHEMA_TABLE = PLATFORM_PREFIX + "schema"
# Serialises migrations of several servers starting at once on PostgreSQL.
_LOCK_KEY = zlib.crc32(b"fieldsync.migrate")

# Steps run in this order: renames first (so later steps see the new names), indexes dropped
# before the columns they cover, new tables and indexes once every column exists, table drops last.
_PHASES = (
    "replace_table", "rename_table", "drop_index", "replace_column", "rename_column", "clear_column",
    "add_column", "alter_column", "create_table", "create_index", "drop_table",
)


def schema_table(metadata: sa.MetaData | None = None) -> sa.Table:
    """The platform table `fs_schema`: one row per applied migration, the newest wins."""
    return sa.Table(
        SCHEMA_TABLE, metadata if metadata is not None else sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        # {table: {"entity": name or null, "columns": {field: column}}}: the tables fieldsync owns
        sa.Column("tables", sa.JSON, nullable=False),
        sa.Column("steps", sa.JSON, nullable=False),     # descriptions of the applied steps
        sa.Column("pending", sa.JSON, nullable=False),   # destructive steps left undone
        # the applied version, kept for history and rollback (fieldsync versions, docs/cli.md):
        # the definitions' YAML texts by relative path (None when applied from a model alone,
        # as a server's start does) and who applied it
        sa.Column("definitions", sa.JSON, nullable=True),
        sa.Column("applied_by", sa.String(200), nullable=True),
    )


# Columns fs_schema gained after it was first created (issue 12): added in place, never dropped.
_ADDED_COLUMNS = ("definitions", "applied_by")


def upgrade_schema_table(conn: sa.Connection) -> None:
    """Create fs_schema, or add the columns a database migrated by an older release lacks."""
    table = schema_table()
    inspector = sa.inspect(conn)
    operations = Operations(MigrationContext.configure(conn))
    if not inspector.has_table(SCHEMA_TABLE):
        operations.invoke(ops.CreateTableOp.from_table(table))
        return
    present = {c["name"] for c in inspector.get_columns(SCHEMA_TABLE)}
    for name in _ADDED_COLUMNS:
        if name not in present:
            operations.invoke(ops.AddColumnOp.from_column_and_tablename(None, SCHEMA_TABLE, table.c[name]._copy()))


@dataclass(frozen=True, slots=True)
class Step:
    """One change to the database.

    kind: create_table, rename_table, drop_table, add_column, rename_column, alter_column,
    drop_column, create_index, drop_index. `table` is the table the step acts on (for a rename:
    the new name; `source` holds the old one). `column` names the column, `index` the index.
    `destructive` steps can lose data and need `allow_destructive`.
    """

    kind: str
    table: str
    column: str | None = None
    detail: str = ""
    destructive: bool = False
    source: str | None = None
    index: str | None = None

    @property
    def key(self) -> tuple:
        """What the step does, without its detail (row counts change between plan and apply)."""
        return (self.kind, self.table, self.column, self.destructive, self.source, self.index)

    def describe(self) -> str:
        """A one-line, human description."""
        k, t, c = self.kind, self.table, self.column
        if k == "create_table":
            text = f"create table {t}"
        elif k == "rename_table":
            text = f"rename table {self.source} to {t} (rows kept)"
        elif k == "drop_table":
            text = f"drop table {t}"
        elif k == "add_column":
            text = f"add column {t}.{c}"
        elif k == "rename_column":
            text = f"rename column {t}.{self.source} to {t}.{c} (values kept)"
        elif k == "alter_column":
            text = f"change the type of {t}.{c}"
        elif k == "drop_column":
            text = f"drop column {t}.{c}"
        elif k == "clear_column":
            text = f"clear the values of {t}.{c}"
        elif k == "create_index":
            text = f"create index {self.index} on {t} ({c})"
        elif k == "drop_index":
            text = f"drop index {self.index} on {t}"
        else:
            text = f"{k} {t}"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(frozen=True, slots=True)
class MigrationPlan:
    """What separates a database from a model (or, returned by apply, what was done).

    `steps`: in execution order. `pending`: destructive steps left undone (auto_migrate).
    `recorded_fingerprint`: the fingerprint in fs_schema when planned (None: never migrated).
    """

    steps: tuple[Step, ...]
    model: Model = dc_field(repr=False, compare=False)
    dialect: str = ""
    recorded_fingerprint: str | None = None
    pending: tuple[Step, ...] = ()

    @property
    def fingerprint(self) -> str:
        """The fingerprint of the model this plan leads to."""
        return self.model.fingerprint()

    @property
    def destructive(self) -> tuple[Step, ...]:
        """The steps that can lose data."""
        return tuple(s for s in self.steps if s.destructive)

    @property
    def is_empty(self) -> bool:
        return not self.steps

    @property
    def up_to_date(self) -> bool:
        """No step to run and the applied model is already recorded."""
        return not self.steps and self.recorded_fingerprint == self.fingerprint


# -- planning -------------------------------------------------------------------------------------

def plan_migration(engine: sa.Engine, model: Model) -> MigrationPlan:
    """Compare the database behind `engine` with `model`; reads only, changes nothing."""
    with engine.connect() as conn:
        plan = _plan(conn, model)
        conn.rollback()
    return plan


def read_schema_record(conn: sa.Connection) -> dict | None:
    """The newest fs_schema row as a dict, or None when the database was never migrated."""
    if not sa.inspect(conn).has_table(SCHEMA_TABLE):
        return None
    table = schema_table()
    columns = [c for c in table.c if c.name not in _ADDED_COLUMNS]   # readable before an upgrade
    row = conn.execute(sa.select(*columns).order_by(table.c.id.desc()).limit(1)).mappings().first()
    return dict(row) if row else None


class _Planner:
    """Builds the steps for one connection; one instance per plan."""

    def __init__(self, conn: sa.Connection, model: Model):
        self.conn = conn
        self.model = model
        self.inspector = sa.inspect(conn)
        self.context = MigrationContext.configure(conn)
        self.existing = set(self.inspector.get_table_names())
        self.record = read_schema_record(conn)
        self.target = build_metadata(model)
        self.phases: dict[str, list[Step]] = {p: [] for p in _PHASES}

    def add(self, phase: str, step: Step) -> None:
        self.phases[phase].append(step)

    def steps(self) -> tuple[Step, ...]:
        return tuple(s for p in _PHASES for s in self.phases[p])

    def count(self, table: str, column: str | None = None) -> int:
        what = sa.func.count(sa.column(column)) if column else sa.func.count()
        return self.conn.execute(sa.select(what).select_from(sa.table(table))).scalar_one()

    def plan(self) -> MigrationPlan:
        claimed: set[str] = set()
        named_old: set[str] = set()
        for entity in self.model.entities:
            named_old.update(entity.renamed_from)
            source = self.plan_table(entity)
            if source is not None:
                claimed.add(source)
                claimed.add(entity.name)
        recorded = set((self.record or {}).get("tables") or {})
        for name in sorted(self.existing - claimed):
            if name.startswith(PLATFORM_PREFIX) or name not in recorded | named_old:
                continue   # a platform table or a foreign one: not ours to drop
            rows = self.count(name)
            self.add("drop_table", Step("drop_table", name, destructive=True,
                                        detail=f"{rows} rows lost" + self._leftover_reason(name)))
        fingerprint = self.record["fingerprint"] if self.record else None
        return MigrationPlan(self.steps(), self.model, self.conn.dialect.name, fingerprint)

    def _leftover_reason(self, name: str) -> str:
        for e in self.model.entities:
            if name in e.renamed_from:
                return f" (named in {e.name}.renamed_from, but {e.name} already holds rows)"
        return " (its entity was removed)"

    def plan_table(self, entity: Entity) -> str | None:
        """Steps for one entity's table; returns the existing table it is built from, if any."""
        table = self.target.tables[entity.name]
        olds = [o for o in entity.renamed_from if o in self.existing]
        if entity.name in self.existing:
            source = entity.name
            if olds and self.count(entity.name) == 0:
                # The new table was created (e.g. by auto_migrate) before the analyst declared
                # the rename; it holds nothing, so replace it by the renamed old table.
                self.add("replace_table", Step("drop_table", entity.name,
                                               detail=f"empty, replaced by the renamed {olds[0]}"))
                source = olds[0]
                self.add("rename_table", Step("rename_table", entity.name, source=source))
        elif olds:
            source = olds[0]
            self.add("rename_table", Step("rename_table", entity.name, source=source))
        else:
            self.add("create_table", Step("create_table", entity.name,
                                          detail=f"{len(table.columns)} columns"))
            for index in sorted(table.indexes, key=lambda i: i.name):
                self.add("create_index", _create_index_step(index))
            return None
        self.plan_columns(entity, table, source)
        return source

    def plan_columns(self, entity: Entity, table: sa.Table, source: str) -> None:
        reflected = {c["name"]: c for c in self.inspector.get_columns(source)}
        renamed: dict[str, str] = {}     # old column -> new column
        replaced: set[str] = set()       # empty columns dropped in favour of a renamed one
        kept = set(SYSTEM_COLUMNS)
        for f in entity.fields:
            target_col = table.c[f.name]
            olds = [o for o in self._old_names(entity, f.name) if o in reflected and o not in kept]
            current = None
            if f.name in reflected:
                current = f.name
                if olds and self.count(source, f.name) == 0:
                    # same recovery as for tables: an empty column added before the rename
                    self.add("replace_column", Step("drop_column", entity.name, f.name,
                                                    detail=f"no values, replaced by the renamed {olds[0]}"))
                    replaced.add(f.name)
                    current = olds[0]
            elif olds:
                current = olds[0]
            if current is None:
                self.add("add_column", Step("add_column", entity.name, f.name,
                                            detail=_type_name(target_col.type, self.conn.dialect)))
                kept.add(f.name)
                continue
            if current != f.name:
                renamed[current] = f.name
                self.add("rename_column", Step("rename_column", entity.name, f.name, source=current))
            kept.update((f.name, current))
            self.plan_encryption(entity, source, current, f)
            self.plan_type(entity.name, source, sa.Column(f.name, reflected[current]["type"]), target_col)
        for column in blind_index_columns(entity):
            if column.name not in reflected:
                self.add("add_column", Step("add_column", entity.name, column.name,
                                            detail=_type_name(column.type, self.conn.dialect)))
            kept.add(column.name)
        for name in reflected:
            if name not in kept and name not in replaced:
                values = self.count(source, name)
                self.add("alter_column", Step("drop_column", entity.name, name, destructive=True,
                                              detail=f"{values} non-null values lost"))
        self.plan_indexes(entity, table, source, renamed, replaced)

    def plan_encryption(self, entity: Entity, source: str, column: str, f) -> None:
        """A field whose encryption mode changed since the recorded model (plain to encrypted,
        or between modes) holds values the new mode cannot read: clearing them is destructive
        and needs the flag (docs/encryption.md: how to change a field's mode and keep data)."""
        recorded = ((self.record or {}).get("tables") or {}).get(source) or {}
        modes = recorded.get("encryption")
        if modes is None or column not in modes or modes[column] == f.encryption:
            return   # recorded before modes were recorded, or unchanged
        values = self.count(source, column)
        if values == 0:
            return
        self.add("clear_column", Step("clear_column", entity.name, f.name, destructive=True, detail=(
            f"{values} values stored {modes[column]} cannot be read as {f.encryption}; they are lost")))

    def _old_names(self, entity: Entity, field: str) -> list[str]:
        olds = list(entity.field(field).renamed_from)
        if entity.parent and field == entity.parent_field:
            # Renaming a parent renames the child's parent column implicitly (<parent>_id).
            olds += [f"{o}_id" for o in self.model.entity(entity.parent).renamed_from]
        return olds

    def plan_type(self, table: str, source: str, current: sa.Column, target: sa.Column) -> None:
        if not self.context.impl.compare_type(current, target):
            return
        dialect = self.conn.dialect
        change = f"{_type_name(current.type, dialect)} -> {_type_name(target.type, dialect)}"
        if _is_widening(current.type, target.type):
            self.add("alter_column", Step("alter_column", table, target.name, detail=f"{change} (widening)"))
        else:
            values = self.count(source, current.name)
            self.add("alter_column", Step("alter_column", table, target.name, destructive=True,
                                          detail=f"{change} (narrowing or another type; "
                                                 f"{values} non-null values at risk)"))

    def plan_indexes(self, entity: Entity, table: sa.Table, source: str,
                     renamed: dict[str, str], replaced: set[str]) -> None:
        wanted = {i.name: i for i in table.indexes}
        matched: set[str] = set()
        for ix in sorted(self.inspector.get_indexes(source), key=lambda i: i["name"] or ""):
            columns = ix["column_names"]
            target = wanted.get(ix["name"])
            same = (
                target is not None and not set(columns) & replaced
                and [renamed.get(c, c) for c in columns] == [c.name for c in target.columns]
                and bool(ix["unique"]) == bool(target.unique)
                and _has_where(ix) == _has_where_target(target)
            )
            if same:
                matched.add(ix["name"])
            else:
                self.add("drop_index", Step("drop_index", entity.name, index=ix["name"],
                                            detail="no longer defined" if target is None else "redefined"))
        for name in sorted(set(wanted) - matched):
            self.add("create_index", _create_index_step(wanted[name]))


def _plan(conn: sa.Connection, model: Model) -> MigrationPlan:
    return _Planner(conn, model).plan()


def _create_index_step(index: sa.Index) -> Step:
    columns = ", ".join(c.name for c in index.columns)
    detail = "unique over live rows" if index.unique else ""
    return Step("create_index", index.table.name, columns, detail=detail, index=index.name)


def _has_where(reflected_index: dict) -> bool:
    options = reflected_index.get("dialect_options") or {}
    return bool(options.get("sqlite_where") is not None or options.get("postgresql_where"))


def _has_where_target(index: sa.Index) -> bool:
    return any(index.dialect_options[d]["where"] is not None for d in ("sqlite", "postgresql"))


def _type_name(type_: sa.types.TypeEngine, dialect: sa.Dialect) -> str:
    try:
        return type_.compile(dialect=dialect)
    except Exception:   # a type the dialect cannot render is still worth naming
        return repr(type_)


def _is_widening(old: sa.types.TypeEngine, new: sa.types.TypeEngine) -> bool:
    """True when every value of `old` fits `new` unchanged (the change cannot lose data)."""
    if isinstance(old, sa.String) and isinstance(new, sa.Text):
        return True
    if isinstance(old, sa.String) and isinstance(new, sa.String) and not isinstance(old, sa.Text):
        if isinstance(new, sa.Text) or new.length is None:
            return True
        return old.length is not None and new.length >= old.length
    if isinstance(old, sa.Integer) and isinstance(new, sa.BigInteger):
        return True
    if (isinstance(old, sa.Numeric) and isinstance(new, sa.Numeric)
            and not isinstance(old, sa.Float) and not isinstance(new, sa.Float)):
        if new.precision is None:
            return True
        if old.precision is None:
            return False
        old_scale, new_scale = old.scale or 0, new.scale or 0
        return new_scale >= old_scale and new.precision - new_scale >= old.precision - old_scale
    return False


# -- applying -------------------------------------------------------------------------------------

def apply_migration(engine: sa.Engine, plan: MigrationPlan, allow_destructive: bool = False, *,
                    now: Callable[[], dt.datetime] | None = None, definitions: dict[str, str] | None = None,
                    applied_by: str | None = None) -> MigrationPlan:
    """Run `plan` in one transaction and record the model in fs_schema, with the definitions'
    texts and who applied them when given (the version running servers swap to).

    Raises MigrationRefused before touching the database when the plan holds destructive steps
    and `allow_destructive` is false, or when the database changed since the plan was made
    (plan again). Returns a plan whose `steps` are the steps applied.
    """
    if plan.destructive and not allow_destructive:
        raise MigrationRefused(plan.destructive, (
            f"{len(plan.destructive)} destructive step(s) can lose data; review them with "
            "`fieldsync migrate --dry-run` and rerun with --allow-destructive"))
    with _migration_transaction(engine) as conn:
        fresh = _plan(conn, plan.model)
        if [s.key for s in fresh.steps] != [s.key for s in plan.steps] and fresh.steps:
            raise MigrationRefused(fresh.steps, "the database changed since the plan was made; plan again")
        _execute(conn, fresh.steps, plan.model)
        _record(conn, fresh, fresh.steps, (), now, definitions=definitions, applied_by=applied_by)
    return MigrationPlan(fresh.steps, plan.model, fresh.dialect, fresh.recorded_fingerprint)


def auto_migrate(engine: sa.Engine, model: Model, *,
                 now: Callable[[], dt.datetime] | None = None) -> MigrationPlan:
    """Apply the non-destructive steps (server start). Destructive ones are left undone and
    returned in `pending` so the caller can warn; `steps` holds what was applied."""
    with _migration_transaction(engine) as conn:
        plan = _plan(conn, model)
        run = tuple(s for s in plan.steps if not s.destructive)
        pending = plan.destructive
        _execute(conn, run, model)
        _record(conn, plan, run, pending, now)
    return MigrationPlan(run, model, plan.dialect, plan.recorded_fingerprint, pending)


@contextmanager
def _migration_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    # write_transaction takes SQLite's write lock up front (BEGIN IMMEDIATE), so two servers
    # starting together migrate one after the other; PostgreSQL gets an advisory lock for that.
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_KEY)))
        yield conn


def _execute(conn: sa.Connection, steps: tuple[Step, ...], model: Model) -> None:
    target = build_metadata(model)
    op = Operations(MigrationContext.configure(conn))
    sqlite = conn.dialect.name == "sqlite"
    i = 0
    while i < len(steps):
        step = steps[i]
        if sqlite and step.kind in ("alter_column", "drop_column"):
            # SQLite cannot alter or (portably) drop a column: batch mode copies the table once
            # for all of its consecutive column changes (indexes are reflected and recreated).
            j = i + 1
            while j < len(steps) and steps[j].kind in ("alter_column", "drop_column") \
                    and steps[j].table == step.table:
                j += 1
            _sqlite_batch(conn, op, steps[i:j], target)
            i = j
            continue
        _execute_step(conn, op, step, target)
        i += 1


def _execute_step(conn: sa.Connection, op: Operations, step: Step, target: sa.MetaData) -> None:
    k = step.kind
    if k == "create_table":
        op.invoke(ops.CreateTableOp.from_table(target.tables[step.table]))
    elif k == "create_index":
        index = next(i for i in target.tables[step.table].indexes if i.name == step.index)
        op.invoke(ops.CreateIndexOp.from_index(index))
    elif k == "drop_index":
        op.drop_index(step.index, table_name=step.table)
    elif k == "rename_table":
        op.rename_table(step.source, step.table)
    elif k == "drop_table":
        op.drop_table(step.table)
    elif k == "add_column":
        column = target.tables[step.table].c[step.column]
        op.invoke(ops.AddColumnOp.from_column_and_tablename(None, step.table, column._copy()))
    elif k == "rename_column":
        op.alter_column(step.table, step.source, new_column_name=step.column)
    elif k == "alter_column":
        existing = _reflected_type(conn, step.table, step.column)
        new = target.tables[step.table].c[step.column].type
        kw = {}
        if conn.dialect.name == "postgresql" and existing._type_affinity is not new._type_affinity:
            # PostgreSQL needs an explicit cast between type families; it fails (and the
            # transaction rolls back) if a value does not convert.
            quoted = conn.dialect.identifier_preparer.quote(step.column)
            kw["postgresql_using"] = f"{quoted}::{new.compile(dialect=conn.dialect)}"
        op.alter_column(step.table, step.column, type_=new, existing_type=existing,
                        existing_nullable=True, **kw)
    elif k == "drop_column":
        op.drop_column(step.table, step.column)
    elif k == "clear_column":
        table = target.tables[step.table]
        values = {step.column: None}
        if bidx_column(step.column) in table.c:
            values[bidx_column(step.column)] = None
        conn.execute(sa.table(step.table, *(sa.column(c) for c in values)).update().values(values))
    else:
        raise ValueError(f"unknown step kind {k!r}")


def _sqlite_batch(conn: sa.Connection, op: Operations, steps: tuple[Step, ...], target: sa.MetaData) -> None:
    table = steps[0].table
    existing = {c["name"]: c["type"] for c in sa.inspect(conn).get_columns(table)}
    with op.batch_alter_table(table, recreate="always") as batch:
        for step in steps:
            if step.kind == "drop_column":
                batch.drop_column(step.column)
            else:
                batch.alter_column(step.column, type_=target.tables[table].c[step.column].type,
                                   existing_type=existing[step.column], existing_nullable=True)


def _reflected_type(conn: sa.Connection, table: str, column: str) -> sa.types.TypeEngine:
    return next(c["type"] for c in sa.inspect(conn).get_columns(table) if c["name"] == column)


def _record(conn: sa.Connection, plan: MigrationPlan, applied: tuple[Step, ...],
            pending: tuple[Step, ...], now: Callable[[], dt.datetime] | None, *,
            definitions: dict[str, str] | None = None, applied_by: str | None = None) -> None:
    """Append the applied model to fs_schema, unless nothing changed (a second run is a no-op).
    Definitions whose storage shape is unchanged (a sync rule, a permission) are a new version
    too when their texts differ from the recorded ones: running servers swap to them."""
    table = schema_table()
    upgrade_schema_table(conn)
    if not applied and plan.recorded_fingerprint == plan.fingerprint:
        if definitions is None or definitions == _recorded_definitions(conn):
            return
    tables: dict[str, dict] = {
        e.name: {"entity": e.name, "columns": {f.name: f.name for f in e.fields},
                 "encryption": {f.name: f.encryption for f in e.fields}}
        for e in plan.model.entities
    }
    # A table whose drop is still pending stays ours, so the next plan still offers to drop it;
    # a field whose values are still stored in its old encryption mode keeps that mode recorded.
    previous = ((read_schema_record(conn) or {}).get("tables") or {})
    for step in pending:
        if step.kind == "drop_table":
            tables[step.table] = {"entity": None, "columns": {}}
        elif step.kind == "clear_column" and step.table in tables:
            old = ((previous.get(step.table) or {}).get("encryption") or {}).get(step.column)
            if old is not None:
                tables[step.table]["encryption"][step.column] = old
    clock = now or (lambda: dt.datetime.now(dt.timezone.utc))
    conn.execute(table.insert().values(
        schema_version=plan.model.schema_version, fingerprint=plan.fingerprint, applied_at=clock(),
        tables=tables, steps=[s.describe() for s in applied], pending=[s.describe() for s in pending],
        definitions=definitions, applied_by=applied_by,
    ))


def _recorded_definitions(conn: sa.Connection) -> dict[str, str] | None:
    table = schema_table()
    return conn.execute(sa.select(table.c.definitions).order_by(table.c.id.desc()).limit(1)).scalar()


# -- presenting -----------------------------------------------------------------------------------

def format_plan(plan: MigrationPlan) -> str:
    """The plan as text for `fieldsync migrate --dry-run` (or the outcome of an apply)."""
    lines = []
    if plan.steps:
        n = len(plan.steps)
        lines.append(f"{n} step{'s' if n != 1 else ''} for the {plan.dialect} database "
                     f"(model fingerprint {plan.fingerprint}):")
        for step in plan.steps:
            mark = "!" if step.destructive else "+"
            lines.append(f"  {mark} {step.describe()}")
    elif plan.recorded_fingerprint == plan.fingerprint:
        lines.append(f"The {plan.dialect} database is up to date (model fingerprint {plan.fingerprint}).")
    else:
        lines.append(f"No table changes; the model (fingerprint {plan.fingerprint}) will be recorded.")
    if plan.destructive:
        lines.append(f"{len(plan.destructive)} destructive step(s) marked '!' can lose data: "
                     "they run only with --allow-destructive.")
    if plan.pending:
        lines.append("Left undone (need --allow-destructive):")
        lines.extend(f"  ! {s.describe()}" for s in plan.pending)
    return "\n".join(lines)
