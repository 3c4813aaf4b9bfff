"""The device schema: the generated `device/schema.json`, read into what the SDK needs (pure).

From the JSON the SDK renders the DDL of a fresh store, plans additive migrations (new tables,
new columns, new indexes; never a drop: invariant 9), rebuilds each entity's fields so local
writes are checked by `fieldsync.defs.values.validate_record` like every other write path, and
converts values between their wire form and their SQLite storage (`storage` of each column).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from typing import Any, Callable, Iterable, Mapping

from fieldsync.defs.model import Entity, Field, SyncRule

# Platform tables. The generated device/schema.sql has the same tables; `_quarantine` also keeps
# the server's field errors (`errors`), which the SDK shows next to the reason.
PLATFORM_DDL = (
    """CREATE TABLE "_outbox" (
    "seq" INTEGER PRIMARY KEY AUTOINCREMENT,
    "entity" TEXT NOT NULL,
    "op" TEXT NOT NULL CHECK ("op" IN ('insert', 'update', 'delete')),
    "record_id" TEXT NOT NULL,
    "base_version" INTEGER,
    "fields" TEXT NOT NULL DEFAULT '{}',
    "client_time" TEXT NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'pending' CHECK ("status" IN ('pending', 'sent', 'received')),
    "reason" TEXT,
    "attempts" INTEGER NOT NULL DEFAULT 0
)""",
    'CREATE INDEX "ix__outbox_status" ON "_outbox" ("status", "seq")',
    'CREATE INDEX "ix__outbox_record" ON "_outbox" ("entity", "record_id")',
    """CREATE TABLE "_quarantine" (
    "seq" INTEGER PRIMARY KEY,
    "entity" TEXT NOT NULL,
    "op" TEXT NOT NULL,
    "record_id" TEXT NOT NULL,
    "base_version" INTEGER,
    "fields" TEXT NOT NULL DEFAULT '{}',
    "client_time" TEXT NOT NULL,
    "reason" TEXT NOT NULL,
    "code" TEXT,
    "quarantined_at" TEXT NOT NULL,
    "errors" TEXT NOT NULL DEFAULT '[]'
)""",
    'CREATE INDEX "ix__quarantine_record" ON "_quarantine" ("entity", "record_id")',
    'CREATE TABLE "_sync_state" ("key" TEXT PRIMARY KEY NOT NULL, "value" TEXT) WITHOUT ROWID',
    'CREATE TABLE "_meta" ("key" TEXT PRIMARY KEY NOT NULL, "value" TEXT NOT NULL) WITHOUT ROWID',
)

BOOKKEEPING = ("_version", "_created_at", "_updated_at", "_deleted", "_dirty")

# A wire value -> its stored value; `None` where they are the same (most columns).
StorageConverter = Callable[[Any], Any] | None
# (record id, the server's row, version) -> the parameters of `EntityTable.server_row_sql`.
ServerRowValues = Callable[[str, Mapping[str, Any], int], list[Any]]

# Field constraints copied into the rebuilt Field when the JSON carries them.
_CONSTRAINTS = ("max_length", "min_length", "pattern", "minimum", "maximum")


def quote(name: str) -> str:
    """A SQLite identifier, always quoted: entity names such as `order` are keywords."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Column:
    name: str
    sqlite_type: str
    type: str
    storage: str

    def to_storage(self, value: Any) -> Any:
        """Wire value -> what the column stores."""
        if value is None:
            return None
        convert = self.storage_converter
        return value if convert is None else convert(value)

    @property
    def storage_converter(self) -> StorageConverter:
        """The function `to_storage` applies to a value that is not None (None: none needed)."""
        if self.storage == "integer-0-1":
            return _to_0_1
        if self.storage == "json-text":
            return _to_json_text
        return None

    def from_storage(self, value: Any) -> Any:
        """Stored value -> wire value."""
        if value is None:
            return None
        if self.storage == "integer-0-1":
            return bool(value)
        if self.storage == "json-text":
            return json.loads(value)
        return value


def _to_0_1(value: Any) -> int:
    return 1 if value else 0


def _to_json_text(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class EntityTable:
    """One entity of the device schema: its table, columns, model entity and sync rule."""

    name: str
    columns: tuple[Column, ...]           # field columns, without `id`
    raw: Mapping[str, Any]
    entity: Entity                        # rebuilt for validate_record

    @property
    def table(self) -> str:
        return self.raw.get("table") or self.name

    @property
    def direction(self) -> str:
        return self.raw["sync"]["direction"]

    @property
    def owner(self) -> str | None:
        return self.raw.get("owner")

    @property
    def parent(self) -> str | None:
        return self.raw.get("parent")

    @property
    def parent_field(self) -> str | None:
        return self.raw.get("parent_field")

    @property
    def window_field(self) -> str | None:
        """The column a window floor applies to (schema.json does not carry it yet; see the
        pull's `windows`: without it the device cannot purge and keeps old rows)."""
        sync = self.raw.get("sync") or {}
        return sync.get("window_field") or self.raw.get("window_field")

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    # -- the SQL of pulled rows, rendered once per table (cached on the frozen instance) ----------

    @cached_property
    def server_row_columns(self) -> tuple[str, ...]:
        """The columns a server row sets, in the order of `server_row_values`."""
        return ("id", *self.field_names, *BOOKKEEPING)

    @cached_property
    def server_row_sql(self) -> str:
        """Put a server row in place unconditionally (a settled result may overwrite a dirty row)."""
        names = self.server_row_columns
        return (f"INSERT OR REPLACE INTO {quote(self.table)} ({', '.join(quote(n) for n in names)}) "
                f"VALUES ({', '.join('?' for _ in names)})")

    @cached_property
    def pulled_row_sql(self) -> str:
        """A pulled `upsert` (§6.3): insert the row, or replace a local one that is clean and older.

        A dirty row keeps its local values (its outbox entry's result will put it right) and the
        version guard keeps an older change from overwriting a newer row, both in SQL, so a page
        is applied without reading the local rows first. Every column is set, so a field absent
        from the row (hidden from the role) is cleared, as `INSERT OR REPLACE` would.
        """
        names = self.server_row_columns
        table = quote(self.table)
        updates = ", ".join(f"{quote(n)} = excluded.{quote(n)}" for n in names[1:])
        return (f"INSERT INTO {table} ({', '.join(quote(n) for n in names)}) "
                f"VALUES ({', '.join('?' for _ in names)}) ON CONFLICT(id) DO UPDATE SET {updates} "
                f"WHERE {table}._dirty = 0 AND {table}._version < excluded._version")

    @cached_property
    def server_row_values(self) -> ServerRowValues:
        """A converter from the server's row to the parameters of `server_row_sql` and
        `pulled_row_sql`, built once: fields in storage form (absent ones NULL), version,
        server times, not deleted, clean."""
        names = self.field_names
        converted = tuple((i, c.storage_converter) for i, c in enumerate(self.columns, start=1)
                          if c.storage_converter is not None)

        def values(record_id: str, row: Mapping[str, Any], version: int) -> list[Any]:
            get = row.get
            out = [record_id, *map(get, names), version, get("created_at"), get("updated_at"), 0, 0]
            for i, convert in converted:
                if out[i] is not None:
                    out[i] = convert(out[i])
            return out
        return values

    def patch_sql(self, fields: tuple[str, ...]) -> str:
        """A pulled `patch` of `fields` (§6.3), applied only to a clean row at `from_version`
        and older than the patch; parameters: the field values, version, updated_at, then id,
        from_version, version."""
        sql = self._patch_sql.get(fields)
        if sql is None:
            assignments = ", ".join([*(f"{quote(k)} = ?" for k in fields), "_version = ?", "_updated_at = ?"])
            sql = self._patch_sql[fields] = (f"UPDATE {quote(self.table)} SET {assignments} "
                                             "WHERE id = ? AND _dirty = 0 AND _version = ? AND _version < ?")
        return sql

    @cached_property
    def _patch_sql(self) -> dict[tuple[str, ...], str]:
        return {}

    @cached_property
    def converters(self) -> dict[str, StorageConverter]:
        """Each field's storage converter, by name."""
        return {c.name: c.storage_converter for c in self.columns}

    def create_statements(self) -> list[str]:
        lines = ['"id" TEXT PRIMARY KEY NOT NULL']
        lines += [f"{quote(c.name)} {c.sqlite_type}" for c in self.columns]
        lines += [_bookkeeping_sql(b) for b in self.raw.get("bookkeeping_columns", ())]
        statements = [f"CREATE TABLE {quote(self.table)} (\n    " + ",\n    ".join(lines) + "\n)"]
        statements += self.index_statements()
        return statements

    def index_statements(self) -> list[str]:
        return [f"CREATE INDEX IF NOT EXISTS {quote(ix['name'])} ON {quote(self.table)} "
                f"({', '.join(quote(c) for c in ix['columns'])})"
                for ix in self.raw.get("indexes", ())]


def _bookkeeping_sql(b: Mapping[str, Any]) -> str:
    sql = f"{quote(b['name'])} {b['sqlite_type']}"
    if b.get("not_null"):
        sql += " NOT NULL"
    if b.get("default") is not None:
        sql += f" DEFAULT {b['default']}"
    return sql


def _field(column: Mapping[str, Any]) -> Field:
    extra = {k: column[k] for k in _CONSTRAINTS if column.get(k) is not None}
    for key in ("minimum", "maximum"):  # decimal bounds travel as strings, exactly
        if isinstance(extra.get(key), str):
            extra[key] = Decimal(extra[key])
    return Field(
        name=column["name"], type=column["type"], label=column.get("label", ""),
        required=bool(column.get("required")), has_default="default" in column,
        default=column.get("default"), precision=column.get("precision"), scale=column.get("scale"),
        values=tuple(column.get("values") or ()), ref=column.get("ref"), **extra)


def _entity_table(raw: Mapping[str, Any]) -> EntityTable:
    field_columns = [c for c in raw["columns"] if not c.get("primary_key")]
    sync = raw.get("sync") or {}
    entity = Entity(
        name=raw["name"], kind=raw.get("kind", "transaction"),
        fields=tuple(_field(c) for c in field_columns), label=raw.get("label", ""),
        parent=raw.get("parent"), parent_field=raw.get("parent_field"), owner=raw.get("owner"),
        sync=SyncRule(direction=sync.get("direction", "both"), conflict=sync.get("conflict", "last_write_wins"),
                      priority=sync.get("priority", 100)))
    columns = tuple(Column(c["name"], c["sqlite_type"], c["type"], c.get("storage", "text"))
                    for c in field_columns)
    return EntityTable(raw["name"], columns, raw, entity)


class DeviceSchema:
    """The parsed device schema JSON."""

    def __init__(self, document: Mapping[str, Any]):
        if not isinstance(document, Mapping) or "entities" not in document or "schema_version" not in document:
            raise ValueError("not a device schema document (generated/device/schema.json)")
        self.document = dict(document)
        self.app: str = document.get("app", "")
        self.version: int = int(document["schema_version"])
        self.fingerprint: str = document.get("fingerprint", "")
        self.entities: dict[str, EntityTable] = {}
        for raw in document["entities"]:
            table = _entity_table(raw)
            self.entities[table.name] = table

    def entity(self, name: str) -> EntityTable:
        try:
            return self.entities[name]
        except KeyError:
            raise KeyError(f"no entity {name!r} in the device schema") from None

    def children_of(self, name: str) -> list[EntityTable]:
        return [t for t in self.entities.values() if t.parent == name]

    def to_json(self) -> str:
        return json.dumps(self.document, sort_keys=True)

    def create_statements(self) -> list[str]:
        """DDL of a fresh store: entity tables and indexes, then the platform tables."""
        statements: list[str] = []
        for table in self.entities.values():
            statements += table.create_statements()
        statements += list(PLATFORM_DDL)
        return statements

    def migration_statements(self, existing: Mapping[str, Iterable[str]]) -> list[str]:
        """The additive steps from a store whose tables have `existing` columns to this schema.

        New tables are created, missing columns added (every column is nullable or has a
        default, so `ADD COLUMN` always works), missing indexes created. Nothing is dropped or
        renamed: a local column the schema no longer names is simply left alone.
        """
        statements: list[str] = []
        for table in self.entities.values():
            have = set(existing.get(table.table, ()))
            if not have:
                statements += table.create_statements()
                continue
            for c in table.columns:
                if c.name not in have:
                    statements.append(f"ALTER TABLE {quote(table.table)} ADD COLUMN {quote(c.name)} {c.sqlite_type}")
            for b in table.raw.get("bookkeeping_columns", ()):
                if b["name"] not in have:
                    statements.append(f"ALTER TABLE {quote(table.table)} ADD COLUMN {_bookkeeping_sql(b)}")
            statements += table.index_statements()
        return statements
