"""The record repository on SQLite and PostgreSQL: versions, tombstones, refs, keyset pages."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
import json

import pytest
from hypothesis import given, settings, strategies as st
import sqlalchemy as sa

from fieldsync.defs import expr as ex
from fieldsync.errors import BadQuery, Conflict, NotFound, PermissionDenied, ValidationFailed
from fieldsync.store.engine import make_engine
from fieldsync.store.records import RecordStore, RowFilter
from fieldsync.defs.query import Filter
from fieldsync.ids import new_id


class StepClock:
    """A clock that moves one second per reading, so ordering by time is deterministic."""

    def __init__(self):
        self.now = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


@pytest.fixture
def store(db_url, example_model):
    engine = make_engine(db_url)
    s = RecordStore(engine, example_model, clock=StepClock())
    s.metadata.create_all(engine)
    yield s
    engine.dispose()


def _territory(store, code="MH-01", region="west"):
    return store.create("territory", {"code": code, "name": code.title(), "region": region})


def _product(store, sku, price="10.00", active=True, category="pharma", image=None):
    return store.create("product", {"sku": sku, "name": sku, "category": category, "unit_price": price,
                                    "active": active, "image": image})


def test_create_get_update_delete_lifecycle(store):
    t = _territory(store)
    assert t["version"] == 1 and t["deleted"] is False
    assert t["created_at"] == "2026-03-01T09:00:01.000000Z" == t["updated_at"]
    assert store.get("territory", t["id"]) == t
    updated = store.update("territory", t["id"], {"name": "Pune"}, expected_version=1)
    assert updated["version"] == 2 and updated["name"] == "Pune"
    assert updated["updated_at"] > updated["created_at"]
    with pytest.raises(Conflict):
        store.update("territory", t["id"], {"name": "Stale"}, expected_version=1)
    tomb = store.delete("territory", t["id"], expected_version=2)
    assert tomb["deleted"] is True and tomb["version"] == 3
    with pytest.raises(NotFound):
        store.get("territory", t["id"])
    with store.engine.connect() as conn:  # the tombstone stays for devices to learn of the delete
        row = conn.execute(sa.select(store.table(store.model.entity("territory")))).mappings().one()
    assert row["deleted"] and row["version"] == 3


def test_ids_are_time_ordered_uuid7():
    early = new_id(dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
    late = new_id(dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc))
    assert early < late and early[14] == "7" and late[19] in "89ab"


def test_client_id_is_kept_and_duplicate_is_conflict(store):
    rid = "0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d"
    t = store.create("territory", {"id": rid, "code": "A", "name": "A", "region": "north"})
    assert t["id"] == rid
    with pytest.raises(Conflict):
        store.create("territory", {"id": rid, "code": "B", "name": "B", "region": "north"})


def test_wire_forms_round_trip(store):
    t = _territory(store)
    r = store.create("retailer", {"name": "Shop", "territory_id": t["id"], "credit_limit": 12.5,
                                  "location": {"lat": 18.5, "lon": 73.8}})
    got = store.get("retailer", r["id"])
    assert got["credit_limit"] == "12.50" and got["location"] == {"lat": 18.5, "lon": 73.8}
    v = store.create("visit", {"retailer_id": r["id"], "territory_id": t["id"], "purpose": "order",
                               "visited_at": "2026-03-01T15:00:00+05:30"}, server_values={"rep_id": "u1"})
    assert store.get("visit", v["id"])["visited_at"] == "2026-03-01T09:30:00.000000Z"


def test_every_problem_is_reported_including_refs(store):
    with pytest.raises(ValidationFailed) as info:
        store.create("retailer", {"name": "", "territory_id": "0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d",
                                  "credit_limit": "1.234", "phone": "x"})
    # value problems come first; refs are checked once the values are sound
    assert {p.field for p in info.value.problems} == {"credit_limit", "phone"}
    with pytest.raises(ValidationFailed) as info:
        store.create("retailer", {"name": "S", "territory_id": "0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d"})
    assert [p.field for p in info.value.problems] == ["territory_id"]


def test_ref_to_deleted_record_is_refused(store):
    t = _territory(store)
    store.delete("territory", t["id"])
    with pytest.raises(ValidationFailed) as info:
        store.create("retailer", {"name": "S", "territory_id": t["id"]})
    assert "does not exist" in info.value.problems[0].reason


def test_unique_field_checked_over_live_rows(store):
    t = _territory(store, "DUP")
    with pytest.raises(ValidationFailed) as info:
        _territory(store, "DUP")
    assert info.value.problems[0].field == "code"
    store.delete("territory", t["id"])
    assert _territory(store, "DUP")["code"] == "DUP"  # a tombstone frees the value


def test_encrypted_fields_use_the_codec(store):
    t = _territory(store)
    r = store.create("retailer", {"name": "Clinic", "territory_id": t["id"]})
    p = _product(store, "RX")
    rx = store.create("prescription", {
        "retailer_id": r["id"], "territory_id": t["id"], "patient_id": "0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d",
        "patient_name": "Asha", "patient_dob": "1990-02-03", "diagnosis": "flu", "product_id": p["id"],
        "prescribed_at": "2026-03-01T10:00:00Z"}, server_values={"rep_id": "u1"})
    table = store.table(store.model.entity("prescription"))
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(table.c.patient_dob, table.c.diagnosis)).one()
    assert stored == (json.dumps("1990-02-03"), json.dumps("flu"))
    assert store.get("prescription", rx["id"])["patient_dob"] == "1990-02-03"


def test_filters_sort_and_total(store):
    for i, (price, active) in enumerate([("5.00", True), ("10.00", False), ("15.00", True), ("20.00", True)]):
        _product(store, f"S{i}", price, active)
    page = store.list("product", filters=[Filter("unit_price", "gte", "10"), Filter("active", "eq", True)],
                      sort="-unit_price", total=True)
    assert [p["sku"] for p in page.items] == ["S3", "S2"] and page.total == 2
    page = store.list("product", filters=[Filter("sku", "in", ["S0", "S1"])], sort="sku")
    assert [p["sku"] for p in page.items] == ["S0", "S1"]
    page = store.list("product", filters=[Filter("sku", "ne", "S0")])
    assert {p["sku"] for p in page.items} == {"S1", "S2", "S3"}
    with pytest.raises(BadQuery):
        store.list("product", filters=[Filter("unit_price", "eq", "ten")])
    with pytest.raises(BadQuery):
        store.list("product", sort="nonexistent")
    with pytest.raises(BadQuery):
        store.list("product", filters=[Filter("active", "gte", True)])


def test_row_filter_on_get_list_update_and_create(store, example_model):
    _product(store, "ON", active=True)
    off = _product(store, "OFF", active=False)
    only_active = RowFilter(example_model.entity("product").permission("field_rep").row_filter, {"id": "u"})
    assert [p["sku"] for p in store.list("product", row_filter=only_active).items] == ["ON"]
    with pytest.raises(NotFound):
        store.get("product", off["id"], row_filter=only_active)
    with pytest.raises(NotFound):
        store.update("product", off["id"], {"name": "x"}, expected_version=1, row_filter=only_active)
    with pytest.raises(PermissionDenied):
        store.create("product", {"sku": "NEW", "name": "n", "category": "otc", "unit_price": "1",
                                 "active": False}, row_filter=only_active)
    assert store.list("product", filters=[Filter("sku", "eq", "NEW")]).items == []  # rolled back


@pytest.mark.parametrize("sort", ["id", "-id", "unit_price", "-unit_price", "category", "image", "-image"])
def test_keyset_pages_neither_repeat_nor_skip_while_rows_are_inserted(store, sort):
    prices = itertools.cycle(["1.00", "2.00", "2.00", "3.00"])
    for i in range(16):
        _product(store, f"P{i:02d}", next(prices), category=["pharma", "otc"][i % 2],
                 image=[None, "img/a", "img/b"][i % 3])  # nulls in the sort column too
    original = {p["id"] for p in store.list("product", limit=1000).items}
    seen: list[str] = []
    cursor = None
    extra = 0
    while True:
        page = store.list("product", sort=sort, limit=5, cursor=cursor)
        seen += [p["id"] for p in page.items]
        # a writer adds rows between page reads, some sorting before the cursor, some after
        _product(store, f"N{extra:02d}", ["0.50", "9.00"][extra % 2], image=[None, "img/0", "img/z"][extra % 3])
        extra += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "a row appeared on two pages"
    assert original <= set(seen), "a row that existed throughout was skipped"


def test_cursor_is_checked(store):
    for i in range(3):
        _product(store, f"C{i}")
    page = store.list("product", sort="sku", limit=1)
    with pytest.raises(BadQuery):
        store.list("product", sort="-sku", cursor=page.next_cursor)
    with pytest.raises(BadQuery):
        store.list("product", sort="sku", cursor="not-a-cursor!")


def test_inline_children_in_one_transaction(store):
    t = _territory(store)
    p = _product(store, "L1")
    pl = store.create("price_list", {"name": "Q1", "territory_id": t["id"], "valid_from": "2026-01-01"},
                      children={"items": [{"product_id": p["id"], "price": "9.50"}]})
    assert pl["items"][0]["price_list_id"] == pl["id"]
    assert store.children_of("price_list", pl["id"], "items")[0]["price"] == "9.50"
    with pytest.raises(ValidationFailed) as info:
        store.create("price_list", {"name": "Q2", "territory_id": t["id"], "valid_from": "2026-01-01"},
                     children={"items": [{"product_id": p["id"], "price": "1"},
                                         {"product_id": "0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d", "price": "1"}]})
    assert [x.field for x in info.value.problems] == ["items[1].product_id"]
    assert [x["name"] for x in store.list("price_list").items] == ["Q1"]  # the parent was rolled back too


def test_replace_resets_omitted_fields(store):
    t = _territory(store)
    r = store.create("retailer", {"name": "S", "territory_id": t["id"], "phone": "+91 12345678"})
    replaced = store.update("retailer", r["id"], {"name": "S2", "territory_id": t["id"]},
                            expected_version=1, replace=True)
    assert replaced["phone"] is None and replaced["credit_limit"] == "0.00" and replaced["name"] == "S2"


def test_expression_row_filter_with_user_list(store, example_model):
    a, b = _territory(store, "A"), _territory(store, "B")
    rf = RowFilter(example_model.entity("territory").permission("field_rep").row_filter,
                   {"id": "u", "territory_ids": [a["id"]]})
    assert [t["code"] for t in store.list("territory", row_filter=rf).items] == ["A"]
    empty = RowFilter(rf.expr, {"id": "u", "territory_ids": []})
    assert store.list("territory", row_filter=empty).items == []
    assert isinstance(rf.expr, ex.Compare) and b["id"]


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
                       st.integers(min_value=-10 ** 12, max_value=10 ** 12),
                       st.decimals(allow_nan=False, allow_infinity=False, places=2,
                                   min_value=-10 ** 9, max_value=10 ** 9)),
       scale=st.integers(min_value=0, max_value=6))
def test_raw_decimals_read_as_through_a_decimal(value, scale):
    """Snapshot pages read scaled decimals as SQLite stores them (`raw_time_columns`) and format
    them at once: the text is the one SQLAlchemy's Decimal and the wire step give. PostgreSQL
    gives Decimals, which no processor touches: those go through the wire step as before."""
    from sqlalchemy.dialects import sqlite as sqlite_dialect
    from fieldsync.defs.model import Entity, Field
    from fieldsync.store.codec import PlainJsonCodec, wire_step
    from fieldsync.store.raw_rows import raw_decimal_step

    field = Field(name="amount", type="decimal", precision=18, scale=scale)
    step = wire_step(field, Entity(name="thing", kind="master", fields=(field,)), PlainJsonCodec())
    through_decimal = sa.Numeric(18, scale, asdecimal=True).result_processor(sqlite_dialect.dialect(), None)
    expected = step(value) if isinstance(value, Decimal) else step(through_decimal(value))
    assert raw_decimal_step(step, scale)(value) == expected
