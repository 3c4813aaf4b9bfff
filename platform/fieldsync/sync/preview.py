"""What a device would receive, computed without a device: the admin's sync rules preview.

The rules are pull's own: `device_scope` (scope.py) for the user, and `snapshot_query` (pull.py),
the query a first sync sends rows from — counted, and a few rows sampled. Nothing here writes.

For rules not applied yet, `proposed_store` gives a RecordStore of a proposed model over the
live database as it is: an entity or field the database does not have yet reads as empty (no
rows, NULL values), a renamed one (`renamed_from`) reads from its old table or column — what the
migration would start from.
"""

from __future__ import annotations

from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Mapping

import sqlalchemy as sa

from fieldsync.defs.model import Entity, Model
from fieldsync.store.codec import FieldCodec
from fieldsync.store.records import RecordStore
from fieldsync.store.tables import build_metadata
from fieldsync.sync.pull import snapshot_query
from fieldsync.sync.scope import DeviceScope

__all__ = ["EntityPreview", "preview_scope", "proposed_store"]


@dataclass
class EntityPreview:
    """One entity a device pulls: how many rows it would hold, and a sample of them."""

    entity: str
    count: int
    fields: tuple[str, ...]                  # the fields the device receives (the role's visible ones)
    masked: tuple[str, ...]                  # of those, the ones the sample does not show
    sample: list[dict[str, Any]] = dc_field(default_factory=list)   # id plus the shown fields


def preview_scope(conn: sa.Connection, store: RecordStore, scope: DeviceScope, *, sample: int = 3,
                  masked: Callable[[Entity], set[str]] | None = None) -> list[EntityPreview]:
    """Per entity of `scope`, in pull order, the number of rows a device with that scope holds
    after its first sync and the first `sample` of them by id. `masked(entity)` names fields
    to leave out of the sample (they are never read, so never decrypted)."""
    out = []
    for name in scope.order:
        entity_scope = scope.entities[name]
        entity = entity_scope.entity
        query = snapshot_query(store, scope, name)
        count = conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
        hidden = masked(entity) if masked is not None else set()
        shown = tuple(f for f in entity_scope.visible if f not in hidden)
        rows: list[dict[str, Any]] = []
        if sample > 0 and count:
            result = conn.execute(query.limit(sample))
            columns = tuple(result.keys())
            convert = store.tuple_converter(entity, columns, ("id",) + shown)
            rows = [convert(row) for row in result.all()]
        out.append(EntityPreview(name, count, entity_scope.visible,
                                 tuple(f for f in entity_scope.visible if f in hidden), rows))
    return out


@dataclass
class _ProposedStore(RecordStore):
    """A RecordStore whose tables are read-only views of the live tables shaped as the proposed
    model's (for queries only: it must never write)."""

    views: Mapping[str, Any] = dc_field(default_factory=dict)

    def table(self, entity: Entity):
        return self.views[entity.name]


def proposed_store(conn: sa.Connection, model: Model, codec: FieldCodec) -> RecordStore:
    """A RecordStore for reading the live database as `model` (a proposed, not yet applied
    model) would see it; see the module's docstring."""
    metadata = build_metadata(model)
    inspector = sa.inspect(conn)
    present_tables = set(inspector.get_table_names())
    views: dict[str, Any] = {}
    for entity in model.entities:
        table = metadata.tables[entity.name]
        source = next((t for t in (entity.name, *entity.renamed_from) if t in present_tables), None)
        if source == entity.name and _columns(inspector, source) >= {c.name for c in table.c}:
            views[entity.name] = table      # nothing to adapt: the live table itself
            continue
        views[entity.name] = _view(entity, table, source, _columns(inspector, source) if source else set())
    return _ProposedStore(conn.engine, model, codec=codec, metadata=metadata, views=views)


def _columns(inspector, table: str) -> set[str]:
    return {c["name"] for c in inspector.get_columns(table)}


def _view(entity: Entity, table: sa.Table, source: str | None, present: set[str]):
    """`table`'s columns read from the live table `source`: renamed fields from their old column,
    missing ones as typed NULLs; no rows when there is no live table."""
    fields = {f.name: f for f in entity.fields}
    live = sa.table(source, *(sa.column(c) for c in present)) if source else None
    columns = []
    for column in table.c:
        old = [column.name] + list(fields[column.name].renamed_from if column.name in fields else ())
        found = next((c for c in old if c in present), None)
        if live is not None and found is not None:
            columns.append(sa.type_coerce(live.c[found], column.type).label(column.name))
        else:
            columns.append(sa.cast(sa.null(), column.type).label(column.name))
    query = sa.select(*columns)
    query = query.select_from(live) if live is not None else query.where(sa.false())
    return query.subquery(f"preview_{entity.name}")
