"""A pull page's changes are written in runs (one statement per table and run, §6.3); the store
must end exactly as if each change were applied on its own, in page order. A reference applier
below does that, one change at a time, and random pages (same record twice, deletes of parents
between child upserts, patches that need a refetch, dirty rows, clears) are applied both ways."""

from __future__ import annotations

import datetime as dt
import functools
import json
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import given, settings, strategies as st

from fieldsync.client.apply import Applied, apply_page
from fieldsync.client.schema import DeviceSchema, quote
from fieldsync.client.store import LocalStore

NOW = dt.datetime(2026, 11, 27, 9, tzinfo=dt.timezone.utc)
ORDERS = ["o1", "o2", "o3"]
LINES = {"l1": "o1", "l2": "o1", "l3": "o2", "l4": "o3"}
PRODUCTS = ["p1", "p2", "p3"]
IDS = {"order": ORDERS, "order_line": list(LINES), "product": PRODUCTS}
PATCHABLE = {"order": ["status", "remarks", "total"], "order_line": ["quantity", "order_id", "unit_price"],
             "product": ["name", "active", "unit_price"]}


def reference_apply(store: LocalStore, conn: sqlite3.Connection, changes, outcome: Applied) -> None:
    """§6.3 one change at a time, reading the local row first (the SDK's earlier applier)."""
    for change in changes:
        table = store.table(change["entity"])
        outcome.changes += 1
        if change["kind"] == "clear":
            conn.execute(f"DELETE FROM {quote(table.table)} WHERE _dirty = 0")
            continue
        record_id = change["id"]
        local = store.row(conn, table, record_id)
        if change["kind"] in ("delete", "remove"):
            store.delete_row(conn, table, record_id, only_clean=True)
            continue
        if local is not None and local["_dirty"]:
            continue
        version = change["version"]
        if change["kind"] == "upsert":
            if local is None or local["_version"] < version:
                store.write_server_row(conn, table, record_id, change["row"], version)
        elif local is not None and local["_version"] >= version:
            continue
        elif local is None or local["_version"] != change["from_version"]:
            outcome.refetch.append({"entity": table.name, "id": record_id})
        else:
            fields = {k: v for k, v in change["fields"].items() if k in table.field_names}
            sets = ", ".join([*(f"{quote(k)} = ?" for k in fields), "_version = ?", "_updated_at = ?"])
            conn.execute(f"UPDATE {quote(table.table)} SET {sets} WHERE id = ?",
                         [*(table.column(k).to_storage(v) for k, v in fields.items()), version,
                          change["updated_at"], record_id])


def field_value(entity: str, name: str, draw) -> Any:
    if name == "order_id":
        return draw(st.sampled_from(ORDERS))
    if name == "active":
        return draw(st.sampled_from([True, False, None]))
    if name in ("quantity",):
        return draw(st.integers(0, 9))
    return draw(st.sampled_from(["a", "b", None, "12.50"]))


def server_row(entity: str, record_id: str, version: int, draw) -> dict[str, Any]:
    row = {name: field_value(entity, name, draw) for name in PATCHABLE[entity]
           if draw(st.booleans())}                       # absent fields are cleared
    if entity == "order_line":
        row["order_id"] = draw(st.sampled_from([LINES[record_id], *ORDERS]))
    row.update(created_at="2026-01-01T00:00:00.000000Z", updated_at=f"2026-01-0{version}T00:00:00.000000Z")
    return row


@st.composite
def local_rows(draw) -> list[tuple[str, str, int, int, str | None]]:
    """(entity, id, version, dirty, parent) of the rows the device holds before the page."""
    rows = []
    for entity, ids in IDS.items():
        for record_id in ids:
            if draw(st.integers(0, 3)):
                rows.append((entity, record_id, draw(st.integers(0, 3)), int(draw(st.integers(0, 3)) == 0),
                             LINES.get(record_id)))
    return rows


@st.composite
def changes(draw) -> list[dict[str, Any]]:
    found = []
    for _ in range(draw(st.integers(0, 14))):
        entity = draw(st.sampled_from(list(IDS)))
        kind = draw(st.sampled_from(["upsert", "upsert", "patch", "patch", "delete", "remove", "clear"]))
        if kind == "clear":
            found.append({"kind": "clear", "entity": entity})
            continue
        record_id = draw(st.sampled_from(IDS[entity]))
        version = draw(st.integers(1, 4))
        change = {"kind": kind, "entity": entity, "id": record_id, "position": len(found) + 1, "version": version}
        if kind == "upsert":
            change["row"] = server_row(entity, record_id, version, draw)
        elif kind == "patch":
            names = draw(st.lists(st.sampled_from(PATCHABLE[entity]), unique=True, max_size=2))
            change.update(from_version=draw(st.sampled_from([None, 0, 1, 2, 3])), updated_at="2026-02-01T00:00:00Z",
                          fields={n: field_value(entity, n, draw) for n in names})
            if draw(st.integers(0, 4)) == 0:
                change["fields"]["not_on_this_device"] = 1          # unknown fields are ignored
        found.append(change)
    return found


@functools.cache
def device_schema() -> DeviceSchema:
    return DeviceSchema(json.loads((Path(__file__).resolve().parents[2] / "generated" / "device" / "schema.json")
                                   .read_text()))


def fresh_store(rows) -> LocalStore:
    store = LocalStore(":memory:")
    store.create(device_schema())
    with store.transaction() as conn:
        for entity, record_id, version, dirty, parent in rows:
            table = store.table(entity)
            extra = {"order_id": parent} if parent else {}
            names = ["id", *extra, "name" if entity == "product" else "_deleted", "_version", "_dirty"]
            conn.execute(f"INSERT INTO {quote(table.table)} ({', '.join(quote(n) for n in names)}) "
                         f"VALUES ({', '.join('?' for _ in names)})",
                         [record_id, *extra.values(), "local" if entity == "product" else 0, version, dirty])
    return store


def contents(store: LocalStore) -> dict[str, list[tuple]]:
    return {e: [tuple(r) for r in store.conn.execute(f"SELECT * FROM {quote(store.table(e).table)} ORDER BY id")]
            for e in IDS}


@settings(max_examples=300, deadline=None)
@given(rows=local_rows(), page_changes=changes())
def test_a_page_applied_in_runs_ends_as_if_applied_change_by_change(rows, page_changes):
    batched, reference = fresh_store(rows), fresh_store(rows)
    page = {"cursor": 9, "has_more": False, "changes": page_changes, "results": [], "scope_hash": "s1:aa"}
    with batched.transaction() as conn:
        outcome = apply_page(batched, conn, page, refetch_sent=[], now=NOW)
    expected = Applied()
    with reference.transaction() as conn:
        reference_apply(reference, conn, page_changes, expected)
    assert contents(batched) == contents(reference)
    assert outcome.refetch == expected.refetch and outcome.changes == expected.changes == len(page_changes)


def test_the_runs_of_a_page_keep_its_order():
    """Pinned examples of what the random test covers: a record upserted, deleted and upserted
    again in one page; a child upserted before and after its parent's removal."""
    store = fresh_store([])
    row = lambda **f: {"created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z", **f}
    page = {"cursor": 5, "has_more": False, "results": [], "changes": [
        {"kind": "upsert", "entity": "order", "id": "o1", "version": 1, "row": row(status="draft")},
        {"kind": "upsert", "entity": "order_line", "id": "l1", "version": 1, "row": row(order_id="o1")},
        {"kind": "remove", "entity": "order", "id": "o1", "reason": "scope"},
        {"kind": "upsert", "entity": "order_line", "id": "l2", "version": 1, "row": row(order_id="o1")},
        {"kind": "upsert", "entity": "order", "id": "o1", "version": 2, "row": row(status="submitted")},
        {"kind": "patch", "entity": "order", "id": "o1", "version": 3, "from_version": 2,
         "fields": {"remarks": "Monday"}, "updated_at": "2026-01-03T00:00:00Z"},
        {"kind": "patch", "entity": "order_line", "id": "l1", "version": 2, "from_version": 1,
         "fields": {"quantity": 2}, "updated_at": "2026-01-03T00:00:00Z"}]}
    with store.transaction() as conn:
        outcome = apply_page(store, conn, page, refetch_sent=[], now=NOW)
    order = store.conn.execute('SELECT status, remarks, _version FROM "order"').fetchall()
    assert [tuple(r) for r in order] == [("submitted", "Monday", 3)]
    assert [r[0] for r in store.conn.execute('SELECT id FROM "order_line"')] == ["l2"]
    assert outcome.refetch == [{"entity": "order_line", "id": "l1"}]   # l1 went with its parent


def window_value(draw, floor: dt.datetime) -> Any:
    """A stored window value near the floor, in the forms a store may hold (canonical, other
    offsets, ISO basic and week dates, a date without a time, junk, non-text)."""
    moment = floor + dt.timedelta(hours=draw(st.integers(-24 * 4, 24 * 4)), minutes=draw(st.sampled_from([0, 1, 59])))
    offset = dt.timezone(dt.timedelta(minutes=draw(st.sampled_from([0, 330, -(23 * 60 + 59), 23 * 60 + 59]))))
    local = moment.astimezone(offset)
    year, week, weekday = local.isocalendar()
    return draw(st.sampled_from([
        moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), local.isoformat(), local.strftime("%Y%m%dT%H%M%S") + "Z",
        f"{year}-W{week:02d}-{weekday}T{local:%H:%M:%S}" + local.strftime("%z"), local.strftime("%Y-%m-%d"),
        local.strftime("%Y-%m-%d") + "junk", None, 20260901, "9999", ""]))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_the_window_purge_drops_exactly_the_rows_below_the_floor(data):
    """purge_windows leaves out, in SQL, the rows that surely stay; the others are judged as
    before: a value that does not parse stays, a null or an earlier one goes (§6.6)."""
    from fieldsync.client.apply import purge_windows
    from fieldsync.defs.values import parse_datetime
    from fieldsync.errors import ValueProblem

    floor = dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc) + dt.timedelta(minutes=data.draw(st.integers(0, 2880)))
    visits = {f"v{i}": window_value(data.draw, floor) for i in range(data.draw(st.integers(0, 12)))}
    expenses = {f"e{i}": window_value(data.draw, floor) for i in range(data.draw(st.integers(0, 12)))}
    dirty = set(data.draw(st.lists(st.sampled_from(sorted(visits) or ["-"]), max_size=2)))
    store = fresh_store([])
    with store.transaction() as conn:
        conn.executemany('INSERT INTO "visit" (id, visited_at, _dirty) VALUES (?, ?, ?)',
                         [(k, v, int(k in dirty)) for k, v in visits.items()])
        conn.executemany('INSERT INTO "expense" (id, spent_on) VALUES (?, ?)', expenses.items())
        purge_windows(store, conn, {"visit": floor.strftime("%Y-%m-%dT%H:%M:%SZ"), "expense": f"{floor:%Y-%m-%d}"})

    def kept_visit(value) -> bool:
        try:
            return value is not None and not parse_datetime(value) < floor
        except ValueProblem:
            return True
    assert {r[0] for r in store.conn.execute('SELECT id FROM "visit"')} == \
        {k for k, v in visits.items() if k in dirty or kept_visit(v)}
    assert {r[0] for r in store.conn.execute('SELECT id FROM "expense"')} == \
        {k for k, v in expenses.items() if v is not None and not str(v)[:10] < f"{floor:%Y-%m-%d}"}
