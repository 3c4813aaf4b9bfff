"""Schema evolution (invariant 9): definitions evolve without data loss, on SQLite and PostgreSQL.

Each test migrates a database to the example model, inserts rows with plain SQLAlchemy Core,
edits the YAML of a copy of the definitions, migrates again and checks that every row and
value survived (or, for destructive changes, that nothing happens without the flag).
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from fieldsync.defs import build_model, load_model
from fieldsync.errors import MigrationRefused
from fieldsync.store.migrate import (
    SCHEMA_TABLE, MigrationPlan, Step, apply_migration, auto_migrate, format_plan, plan_migration,
    schema_table,
)
from fieldsync.store.tables import build_metadata

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def engine(db_url):
    eng = sa.create_engine(db_url)
    yield eng
    eng.dispose()


def edit(defs, relpath: str, old: str, new: str) -> None:
    """Replace `old` (which must occur) by `new` in one definition file."""
    path = defs / relpath
    text = path.read_text()
    assert old in text, f"{old!r} not in {relpath}"
    path.write_text(text.replace(old, new))


def rename_file(defs, old: str, new: str) -> None:
    (defs / old).rename(defs / new)


def snapshot(engine) -> dict:
    """Every table, its columns with types, and its indexes: to prove nothing changed."""
    insp = sa.inspect(engine)
    return {
        t: ([(c["name"], str(c["type"])) for c in insp.get_columns(t)],
            sorted((i["name"], tuple(i["column_names"])) for i in insp.get_indexes(t)))
        for t in sorted(insp.get_table_names())
    }


def all_rows(engine, table: str) -> list[dict]:
    t = sa.Table(table, sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(t).order_by(t.c.id)).mappings()]


def system(i: int) -> dict:
    return {"id": f"{i:08d}-0000-7000-8000-000000000000", "version": 1, "created_at": NOW,
            "updated_at": NOW, "deleted": False}


def insert_products(engine, model, n: int = 12) -> list[dict]:
    table = build_metadata(model).tables["product"]
    rows = [system(i) | {"sku": f"SKU-{i}", "name": f"Product {i}", "description": "d" * i,
                         "category": "otc", "unit_price": Decimal(f"{i}.25"), "pack_size": i,
                         "active": i % 2 == 0} for i in range(n)]
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    return all_rows(engine, "product")


def insert_expenses(engine, model, n: int = 9) -> list[dict]:
    table = build_metadata(model).tables["expense"]
    rows = [system(i) | {"rep_id": f"rep-{i % 3}", "spent_on": dt.date(2024, 1, 1 + i), "category": "meals",
                         "amount": Decimal("10.50") * i, "currency": "INR", "approved": i % 2 == 1,
                         "details": {"km": i}} for i in range(n)]
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
    return all_rows(engine, "expense")


def insert_price_lists(engine, model) -> list[dict]:
    tables = build_metadata(model).tables
    with engine.begin() as conn:
        conn.execute(tables["price_list"].insert(), [
            system(1) | {"name": "Pune 2024", "territory_id": str(uuid.uuid4()), "valid_from": dt.date(2024, 1, 1)}])
        conn.execute(tables["price_list_item"].insert(), [
            system(10 + i) | {"price_list_id": system(1)["id"], "product_id": str(uuid.uuid4()),
                              "price": Decimal("3.10"), "min_quantity": i} for i in range(1, 5)])
    return all_rows(engine, "price_list_item")


@pytest.fixture
def migrated(engine, example_model):
    """A database migrated to the example model (the same definitions as `defs_copy` holds)."""
    apply_migration(engine, plan_migration(engine, example_model), now=lambda: NOW)
    return example_model


def test_fresh_database_gets_every_table_and_index(engine, example_model):
    plan = plan_migration(engine, example_model)
    assert plan.recorded_fingerprint is None
    assert not plan.destructive
    created = [s.table for s in plan.steps if s.kind == "create_table"]
    assert created == list(example_model.entity_names)

    done = apply_migration(engine, plan, now=lambda: NOW)
    assert [s.key for s in done.steps] == [s.key for s in plan.steps]
    insp = sa.inspect(engine)
    assert set(insp.get_table_names()) == set(example_model.entity_names) | {SCHEMA_TABLE}
    target = build_metadata(example_model)
    for name, table in target.tables.items():
        assert [c["name"] for c in insp.get_columns(name)] == [c.name for c in table.columns]
        assert {i["name"] for i in insp.get_indexes(name)} == {i.name for i in table.indexes}
    with engine.connect() as conn:
        record = conn.execute(sa.select(schema_table())).mappings().one()
    assert record["fingerprint"] == example_model.fingerprint()
    assert record["tables"]["product"]["columns"]["sku"] == "sku"
    assert len(record["steps"]) == len(plan.steps)


def test_second_run_is_a_noop(engine, migrated):
    before = snapshot(engine)
    plan = plan_migration(engine, migrated)
    assert plan.steps == () and plan.up_to_date
    assert "up to date" in format_plan(plan)
    assert auto_migrate(engine, migrated).steps == ()
    apply_migration(engine, plan)
    assert snapshot(engine) == before
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema_table())).scalar_one() == 1


def test_adding_a_field_keeps_every_row(engine, migrated, defs_copy):
    before = insert_products(engine, migrated)
    edit(defs_copy, "masters/product.yaml", "  image:\n", "  colour:\n    type: string\n    max_length: 20\n  image:\n")
    model = load_model(defs_copy)
    plan = plan_migration(engine, model)
    assert [(s.kind, s.table, s.column, s.destructive) for s in plan.steps] == [
        ("add_column", "product", "colour", False)]
    done = auto_migrate(engine, model)
    assert [s.key for s in done.steps] == [s.key for s in plan.steps] and done.pending == ()
    after = all_rows(engine, "product")
    assert [{k: v for k, v in r.items() if k != "colour"} for r in after] == before
    assert all(r["colour"] is None for r in after)
    assert plan_migration(engine, model).up_to_date


def test_renaming_a_field_and_an_entity_keeps_every_row_and_value(engine, migrated, defs_copy):
    before = insert_expenses(engine, migrated)
    rename_file(defs_copy, "transactions/expense.yaml", "transactions/claim.yaml")
    edit(defs_copy, "transactions/claim.yaml", "entity: expense\n", "entity: claim\nrenamed_from: expense\n")
    edit(defs_copy, "transactions/claim.yaml", "  details:\n", "  extra:\n    renamed_from: details\n")
    edit(defs_copy, "transactions/claim.yaml", "receipt, details]", "receipt, extra]")
    model = load_model(defs_copy)
    plan = plan_migration(engine, model)
    assert not plan.destructive
    kinds = [(s.kind, s.table, s.source, s.column) for s in plan.steps if "index" not in s.kind]
    assert kinds == [("rename_table", "claim", "expense", None), ("rename_column", "claim", "details", "extra")]
    assert "rename table expense to claim" in format_plan(plan)

    auto_migrate(engine, model)
    tables = set(sa.inspect(engine).get_table_names())
    assert "claim" in tables and "expense" not in tables
    after = all_rows(engine, "claim")
    assert [{("details" if k == "extra" else k): v for k, v in r.items()} for r in after] == before
    # index names follow the table name, so the sync cursor index still exists under its new name
    assert {i.name for i in build_metadata(model).tables["claim"].indexes} == {
        i["name"] for i in sa.inspect(engine).get_indexes("claim")}
    # renamed_from stays in the YAML; the rename is not applied again
    assert plan_migration(engine, model).up_to_date
    assert auto_migrate(engine, model).steps == ()


def test_renaming_a_parent_renames_the_childs_parent_column(engine, migrated, defs_copy):
    before = insert_price_lists(engine, migrated)
    rename_file(defs_copy, "masters/price_list.yaml", "masters/tariff.yaml")
    edit(defs_copy, "masters/tariff.yaml", "entity: price_list\n", "entity: tariff\nrenamed_from: price_list\n")
    model = load_model(defs_copy)
    plan = plan_migration(engine, model)
    assert not plan.destructive
    assert ("rename_column", "price_list_item", "price_list_id", "tariff_id") in [
        (s.kind, s.table, s.source, s.column) for s in plan.steps]
    apply_migration(engine, plan)
    after = all_rows(engine, "price_list_item")
    assert [{("price_list_id" if k == "tariff_id" else k): v for k, v in r.items()} for r in after] == before
    assert len(all_rows(engine, "tariff")) == 1
    for table in ("tariff", "price_list_item"):   # indexes renamed with their table and column
        assert {i.name for i in build_metadata(model).tables[table].indexes} == {
            i["name"] for i in sa.inspect(engine).get_indexes(table)}
    assert plan_migration(engine, model).up_to_date


def test_removing_a_field_is_refused_without_the_flag(engine, migrated, defs_copy):
    before_rows = insert_expenses(engine, migrated)
    edit(defs_copy, "transactions/expense.yaml", "  approved:\n    type: boolean\n    default: false\n", "")
    edit(defs_copy, "transactions/expense.yaml", "editable: [approved]", "editable: [spent_on]")
    model = load_model(defs_copy)
    plan = plan_migration(engine, model)
    assert [(s.kind, s.column, s.destructive) for s in plan.steps] == [("drop_column", "approved", True)]
    assert "9 non-null values lost" in plan.steps[0].describe()
    before = snapshot(engine)

    with pytest.raises(MigrationRefused) as refused:
        apply_migration(engine, plan)
    assert [s.column for s in refused.value.steps] == ["approved"]
    assert snapshot(engine) == before and all_rows(engine, "expense") == before_rows

    # the server start applies nothing destructive and reports what is pending
    started = auto_migrate(engine, model)
    assert started.steps == () and [s.column for s in started.pending] == ["approved"]
    assert "Left undone" in format_plan(started)
    assert snapshot(engine) == before

    apply_migration(engine, plan, allow_destructive=True)
    after = all_rows(engine, "expense")
    assert "approved" not in after[0]
    assert [{k: v for k, v in r.items() if k != "approved"} for r in before_rows] == after
    assert plan_migration(engine, model).up_to_date


def test_removing_an_entity_drops_its_table_only_with_the_flag(engine, migrated, defs_copy):
    insert_expenses(engine, migrated)
    with engine.begin() as conn:    # a table fieldsync does not own is never touched
        conn.execute(sa.text("CREATE TABLE legacy_notes (id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("CREATE TABLE fs_queue_probe (id INTEGER PRIMARY KEY)"))
    (defs_copy / "transactions/expense.yaml").unlink()
    model = load_model(defs_copy)
    started = auto_migrate(engine, model)
    assert [(s.kind, s.table) for s in started.pending] == [("drop_table", "expense")]
    assert "expense" in sa.inspect(engine).get_table_names()
    # still pending on the next start: the record keeps the table as fieldsync's
    plan = plan_migration(engine, model)
    assert [(s.kind, s.table, s.destructive) for s in plan.steps] == [("drop_table", "expense", True)]
    apply_migration(engine, plan, allow_destructive=True)
    tables = set(sa.inspect(engine).get_table_names())
    assert "expense" not in tables and {"legacy_notes", "fs_queue_probe"} <= tables
    assert plan_migration(engine, model).up_to_date


def test_dry_run_changes_nothing(engine, migrated, defs_copy):
    insert_products(engine, migrated)
    edit(defs_copy, "masters/product.yaml", "  image:\n", "  colour:\n    type: string\n    unique: true\n  image:\n")
    edit(defs_copy, "masters/product.yaml", "    max_length: 200\n", "    max_length: 50\n")
    before = snapshot(engine)
    plan = plan_migration(engine, load_model(defs_copy))
    text = format_plan(plan)
    assert "+ add column product.colour" in text
    assert "! change the type of product.name" in text and "--allow-destructive" in text
    assert snapshot(engine) == before


def test_dry_run_on_an_empty_database_creates_nothing(engine, example_model):
    plan_migration(engine, example_model)
    assert sa.inspect(engine).get_table_names() == []


def test_widening_is_additive_and_narrowing_is_destructive(engine, migrated, defs_copy):
    before = insert_products(engine, migrated)
    edit(defs_copy, "masters/product.yaml", "    max_length: 200\n", "    max_length: 300\n")
    edit(defs_copy, "masters/product.yaml", "    precision: 12\n", "    precision: 16\n")
    model = load_model(defs_copy)
    plan = plan_migration(engine, model)
    assert [(s.kind, s.column, s.destructive) for s in plan.steps] == [
        ("alter_column", "name", False), ("alter_column", "unit_price", False)]
    assert "(widening)" in plan.steps[0].describe()
    auto_migrate(engine, model)
    assert all_rows(engine, "product") == before
    types = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns("product")}
    assert types["name"].length == 300 and types["unit_price"].precision == 16
    # the partial unique index survived the table copy SQLite needs for a type change
    sku = next(i for i in sa.inspect(engine).get_indexes("product") if i["name"] == "uq_product_sku")
    assert sku["unique"] and (sku["dialect_options"].get("sqlite_where") is not None
                              or sku["dialect_options"].get("postgresql_where"))

    edit(defs_copy, "masters/product.yaml", "    max_length: 300\n", "    max_length: 100\n")
    narrowed_model = load_model(defs_copy)
    narrowed = plan_migration(engine, narrowed_model)
    assert [(s.kind, s.column, s.destructive) for s in narrowed.steps] == [("alter_column", "name", True)]
    assert auto_migrate(engine, narrowed_model).steps == ()
    apply_migration(engine, narrowed, allow_destructive=True)
    assert all_rows(engine, "product") == before


def test_changing_a_type_is_destructive_and_converts_values(engine, migrated, defs_copy):
    before = insert_products(engine, migrated, n=4)
    edit(defs_copy, "masters/product.yaml", "  pack_size:\n    type: integer\n    minimum: 1\n    default: 1\n",
         "  pack_size:\n    type: string\n    max_length: 10\n")
    model = load_model(defs_copy)
    plan = plan_migration(engine, model)
    assert [(s.kind, s.column, s.destructive) for s in plan.steps] == [("alter_column", "pack_size", True)]
    assert "4 non-null values at risk" in plan.steps[0].describe()
    with pytest.raises(MigrationRefused):
        apply_migration(engine, plan)
    apply_migration(engine, plan, allow_destructive=True)
    after = all_rows(engine, "product")
    assert [r["pack_size"] for r in after] == [str(r["pack_size"]) for r in before]
    assert [{k: v for k, v in r.items() if k != "pack_size"} for r in after] == [
        {k: v for k, v in r.items() if k != "pack_size"} for r in before]
    assert plan_migration(engine, model).up_to_date


def test_a_new_unique_field_gets_its_live_rows_index(engine, migrated, defs_copy):
    insert_products(engine, migrated, n=3)
    edit(defs_copy, "masters/product.yaml", "  image:\n", "  barcode:\n    type: string\n    unique: true\n"
                                                           "    max_length: 40\n  image:\n")
    model = load_model(defs_copy)
    plan = plan_migration(engine, model)
    assert [(s.kind, s.column, s.index) for s in plan.steps] == [
        ("add_column", "barcode", None), ("create_index", "barcode", "uq_product_barcode")]
    auto_migrate(engine, model)
    table = build_metadata(model).tables["product"]
    row = system(100) | {"sku": "B-1", "name": "x", "category": "otc", "unit_price": 1, "barcode": "123"}
    with engine.begin() as conn:
        conn.execute(table.insert(), [row, system(101) | {**row, "id": system(101)["id"], "sku": "B-2",
                                                          "deleted": True}])
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(table.insert(), [system(102) | {**row, "id": system(102)["id"], "sku": "B-3"}])


def test_a_rename_declared_after_the_new_table_was_created_recovers_the_old_rows(engine, migrated, defs_copy):
    before = insert_expenses(engine, migrated)
    rename_file(defs_copy, "transactions/expense.yaml", "transactions/claim.yaml")
    edit(defs_copy, "transactions/claim.yaml", "entity: expense\n", "entity: claim\n")
    auto_migrate(engine, load_model(defs_copy))     # forgot renamed_from: an empty claim table appears
    assert all_rows(engine, "claim") == [] and len(all_rows(engine, "expense")) == 9

    edit(defs_copy, "transactions/claim.yaml", "entity: claim\n", "entity: claim\nrenamed_from: expense\n")
    model = load_model(defs_copy)
    plan = plan_migration(engine, model)
    assert not plan.destructive
    assert [(s.kind, s.table) for s in plan.steps[:2]] == [("drop_table", "claim"), ("rename_table", "claim")]
    auto_migrate(engine, model)
    assert all_rows(engine, "claim") == before
    assert "expense" not in sa.inspect(engine).get_table_names()


def test_a_failing_step_rolls_everything_back(engine, migrated, defs_copy):
    insert_products(engine, migrated)
    with engine.begin() as conn:   # live rows share a name, which the new unique index forbids
        conn.execute(sa.text("UPDATE product SET name = 'same'"))
    edit(defs_copy, "masters/product.yaml", "    max_length: 200\n", "    max_length: 200\n    unique: true\n")
    edit(defs_copy, "masters/product.yaml", "  image:\n", "  colour:\n    type: string\n  image:\n")
    model = load_model(defs_copy)
    before = snapshot(engine)
    with pytest.raises(sa.exc.IntegrityError):
        auto_migrate(engine, model)
    assert snapshot(engine) == before
    assert plan_migration(engine, model).recorded_fingerprint == migrated.fingerprint()


def test_servers_starting_together_migrate_once(engine, example_model):
    # the PostgreSQL advisory lock / SQLite write lock makes the second starter re-plan after
    # the first commits, instead of failing on "table already exists"
    barrier, results, errors = threading.Barrier(2), [], []

    def start():
        barrier.wait()
        try:
            results.append(auto_migrate(engine, example_model))
        except Exception as exc:   # collected: an exception in a thread would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r.steps) for r in results)[0] == 0   # one of them found nothing to do
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema_table())).scalar_one() == 1


def test_a_stale_plan_is_refused(engine, migrated, defs_copy):
    edit(defs_copy, "masters/product.yaml", "  image:\n", "  colour:\n    type: string\n  image:\n")
    model = load_model(defs_copy)
    stale = MigrationPlan((Step("add_column", "product", "other"),), model, engine.dialect.name)
    with pytest.raises(MigrationRefused, match="plan again"):
        apply_migration(engine, stale)
    assert "colour" not in {c["name"] for c in sa.inspect(engine).get_columns("product")}


def test_step_descriptions_are_one_line(engine, example_model):
    plan = plan_migration(engine, example_model)
    assert all("\n" not in s.describe() and s.describe() for s in plan.steps)
    assert format_plan(plan).splitlines()[0].startswith(f"{len(plan.steps)} steps for the")


# -- random additive edits never lose a row ------------------------------------------------------

BASE = {
    "app.yaml": "app: prop\nschema_version: 1\n",
    "roles.yaml": "roles:\n  admin:\n    description: Everything.\n",
    "masters/shop.yaml": "entity: shop\nkind: master\nfields:\n  name:\n    type: string\n    max_length: 40\n"
                         "permissions:\n  admin:\n    actions: [read, create, update, delete]\n",
}
FIELD_SPECS = st.sampled_from([
    "type: string\n    max_length: 30", "type: text", "type: integer", "type: boolean", "type: date",
    "type: datetime", "type: decimal\n    precision: 10\n    scale: 3", "type: json", "type: uuid",
    "type: enum\n    values: [a, bb]", "type: string\n    unique: true\n    max_length: 12",
    "type: ref\n    to: shop",
])
EDITS = st.lists(st.tuples(st.sampled_from(["shop", "stall"]), FIELD_SPECS), min_size=1, max_size=4)


def _sources(fields: dict[str, list[str]]) -> dict[str, str]:
    sources = dict(BASE)
    for entity, specs in fields.items():
        if entity == "stall" and not specs:
            continue
        text = BASE["masters/shop.yaml"].replace("shop", entity)
        extra = "".join(f"  f{i}:\n    {spec}\n" for i, spec in enumerate(specs))
        sources[f"masters/{entity}.yaml"] = text.replace("permissions:", extra + "permissions:")
    return sources


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS, rows_per_step=st.integers(min_value=1, max_value=5))
def test_random_additive_edits_never_lose_a_row(engine, edits, rows_per_step):
    with engine.begin() as conn:   # every example starts from an empty database
        reflected = sa.MetaData()
        reflected.reflect(conn)
        reflected.drop_all(conn)
    fields: dict[str, list[str]] = {"shop": [], "stall": []}
    expected: dict[str, list[dict]] = {}
    serial = 0
    for step in range(len(edits) + 1):
        if step:
            entity, spec = edits[step - 1]
            fields[entity].append(spec)
        model = build_model(_sources(fields))
        done = auto_migrate(engine, model)
        assert done.pending == () and not any(s.destructive for s in done.steps)
        for name, rows in expected.items():    # every earlier row, every earlier value
            got = all_rows(engine, name)
            assert [{k: r[k] for k in rows[0]} for r in got] == rows
        with engine.begin() as conn:
            for entity in model.entities:
                table = build_metadata(model).tables[entity.name]
                new = []
                for _ in range(rows_per_step):
                    serial += 1
                    new.append(system(serial) | {"name": f"n{serial}"})
                conn.execute(table.insert(), new)
        for entity in model.entities:
            expected[entity.name] = [{k: r[k] for k in ("id", "name", "version")}
                                     for r in all_rows(engine, entity.name)]
    assert plan_migration(engine, model).up_to_date



def test_encrypting_a_field_that_holds_values_is_destructive(engine, migrated, defs_copy):
    """fs_schema records each field's encryption mode: values written plain cannot be read as
    ciphertext, so a mode change over existing values is refused without the flag, left pending
    by the server start, and with the flag clears them (never a plaintext read as "encrypted")."""
    before_rows = insert_products(engine, migrated)
    path = defs_copy / "masters" / "product.yaml"
    path.write_text(path.read_text() + "encryption:\n  fields:\n    description:\n      mode: encrypt\n")
    model = load_model(defs_copy)
    plan = plan_migration(engine, model)
    assert [(s.kind, s.column, s.destructive) for s in plan.steps] == [("clear_column", "description", True)]
    assert "12 values stored plain cannot be read as encrypt" in plan.steps[0].describe()
    started = auto_migrate(engine, model)
    assert started.steps == () and [s.column for s in started.pending] == ["description"]
    assert all_rows(engine, "product") == before_rows
    apply_migration(engine, plan_migration(engine, model), allow_destructive=True)
    after = all_rows(engine, "product")
    assert [r["description"] for r in after] == [None] * 12
    assert [{k: v for k, v in r.items() if k != "description"} for r in after] == \
           [{k: v for k, v in r.items() if k != "description"} for r in before_rows]
    assert plan_migration(engine, model).up_to_date
