"""A server catalogue of many products, written fast (SQLAlchemy Core `executemany`) and logged in
the change log in the same transaction, as every server-side write must be (invariant 4).

`product` is pulled by every field rep (row filter `active == true`), so a rep's device
receives every row written here. Used by the pull and differential-payload benchmarks.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any, Callable, Sequence

from harness import chunks

from fieldsync.client.schema import DeviceSchema
from fieldsync.codegen.device_schema import device_schema, device_schema_json
from fieldsync.store.engine import write_transaction
from fieldsync.ids import new_id

CATEGORIES = ("pharma", "otc", "agro", "retail")
WRITE_CHUNK = 5000


def product_rows(n: int, now: dt.datetime) -> list[dict[str, Any]]:
    """`n` active products as server table rows (version 1)."""
    rng = random.Random(11)
    rows = []
    for i in range(n):
        rows.append({"id": new_id(now), "version": 1, "created_at": now, "updated_at": now, "deleted": False,
                     "sku": f"SKU-{i:07d}", "name": f"Paracetamol {rng.choice((250, 500, 650))} mg strip #{i}",
                     "description": f"Pack of {rng.choice((10, 15, 30))} tablets; store below 25 C. Batch {i % 997}.",
                     "category": CATEGORIES[i % 4], "unit_price": Decimal(rng.randrange(100, 99999)) / 100,
                     "pack_size": rng.choice((1, 10, 15, 30)), "active": True, "image": None})
    return rows


def insert_products(state, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `rows` into the product table and log a `create` change for each."""
    entity = state.model.entity("product")
    table = state.store.table(entity)
    for part in chunks(rows, WRITE_CHUNK):
        with write_transaction(state.engine) as conn:
            conn.execute(table.insert(), list(part))
            state.changelog.record_changes(conn, [(entity, "create", state.store.to_wire_row(entity, r))
                                                  for r in part])


def update_products(state, rows: list[dict[str, Any]], change: Callable[[dict[str, Any], int], dict[str, Any]],
                    now: dt.datetime) -> list[dict[str, Any]]:
    """Apply `change(row, i)` (the new field values) to each row on the server: one UPDATE per
    row through `executemany`, version + 1, logged as `update` with the row before. Returns the
    new rows."""
    import sqlalchemy as sa

    entity = state.model.entity("product")
    table = state.store.table(entity)
    updated = []
    for part in chunks(list(enumerate(rows)), WRITE_CHUNK):
        new_rows, params, log = [], [], []
        for i, row in part:
            new = {**row, **change(row, i), "version": row["version"] + 1, "updated_at": now}
            new_rows.append(new)
            params.append({"b_id": row["id"], **{k: v for k, v in new.items() if k != "id"}})
            log.append((entity, "update", state.store.to_wire_row(entity, new), state.store.to_wire_row(entity, row)))
        columns = [c for c in new_rows[0] if c != "id"]
        statement = table.update().where(table.c.id == sa.bindparam("b_id")).values(
            {c: sa.bindparam(c) for c in columns})
        with write_transaction(state.engine) as conn:
            conn.execute(statement, params)
            state.changelog.record_changes(conn, log)
        updated += new_rows
    return updated


def device_product_table(state):
    """The device store's product table (`fieldsync.client.schema.EntityTable`)."""
    return DeviceSchema(device_schema_json(device_schema(state.model), "bench")).entity("product")


def device_rows(table, wire_rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[tuple]]:
    """The rows a device stores for `wire_rows`: id, fields in storage form, bookkeeping."""
    columns = ["id", *table.field_names, "_version", "_created_at", "_updated_at", "_deleted", "_dirty"]
    rows = [(w["id"], *(c.to_storage(w.get(c.name)) for c in table.columns), w["version"], w["created_at"],
             w["updated_at"], 0, 0) for w in wire_rows]
    return columns, rows
