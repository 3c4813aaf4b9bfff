"""device/schema.sql runs in SQLite and gives the sync SDK what it builds on; schema.json
describes exactly the tables the script creates."""

from __future__ import annotations

import json
import sqlite3

import pytest

BOOKKEEPING = {"_version", "_created_at", "_updated_at", "_deleted", "_dirty"}


@pytest.fixture
def device_db(rendered, tmp_path):
    conn = sqlite3.connect(tmp_path / "device.db", isolation_level=None)
    conn.executescript("BEGIN;\n" + rendered["device/schema.sql"] + "COMMIT;\n")
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def description(rendered) -> dict:
    return json.loads(rendered["device/schema.json"])


def _columns(conn, table: str) -> list[tuple[str, str, int, object, int]]:
    return [(r[1], r[2], r[3], r[4], r[5]) for r in conn.execute(f'PRAGMA table_info("{table}")')]


def test_every_entity_has_its_fields_and_the_bookkeeping_columns(device_db, example_model):
    for entity in example_model.entities:
        names = [c[0] for c in _columns(device_db, entity.name)]
        assert names == ["id", *entity.field_names, "_version", "_created_at", "_updated_at",
                         "_deleted", "_dirty"], entity.name
        pk = [c[0] for c in _columns(device_db, entity.name) if c[4]]
        assert pk == ["id"]


def test_platform_tables_and_version_stamps(device_db, example_model):
    tables = {r[0] for r in device_db.execute("select name from sqlite_master where type='table'")}
    assert {"_outbox", "_quarantine", "_sync_state", "_meta"} <= tables
    assert [c[0] for c in _columns(device_db, "_outbox")] == [
        "seq", "entity", "op", "record_id", "base_version", "fields", "client_time", "status",
        "reason", "attempts"]
    assert device_db.execute("PRAGMA user_version").fetchone()[0] == example_model.schema_version
    meta = dict(device_db.execute('select key, value from "_meta"'))
    assert meta == {"app": "field_force", "schema_version": str(example_model.schema_version),
                    "fingerprint": example_model.fingerprint()}


def test_ref_columns_are_indexed(device_db, example_model):
    for entity in example_model.entities:
        indexed = {r[2] for ix in device_db.execute(f'PRAGMA index_list("{entity.name}")')
                   for r in device_db.execute(f'PRAGMA index_info("{ix[1]}")')}
        refs = {f.name for f in entity.fields if f.type == "ref"}
        assert refs <= indexed, entity.name


def test_outbox_sequence_numbers_are_never_reused(device_db):
    # invariant 2: the server deduplicates on (device_id, seq); a reused seq would drop a write.
    insert = ('insert into "_outbox" (entity, op, record_id, fields, client_time) '
              "values ('visit', 'insert', ?, '{}', '2026-03-01T00:00:00.000000Z')")
    device_db.execute(insert, ("a",))
    device_db.execute(insert, ("b",))
    device_db.execute('delete from "_outbox"')
    seq = device_db.execute(insert, ("c",)).lastrowid
    assert seq == 3
    status = device_db.execute('select status, attempts from "_outbox" where seq = 3').fetchone()
    assert status == ("pending", 0)


def test_outbox_rejects_an_unknown_op_or_status(device_db):
    with pytest.raises(sqlite3.IntegrityError):
        device_db.execute('insert into "_outbox" (entity, op, record_id, client_time) '
                          "values ('visit', 'upsert', 'x', 'now')")
    with pytest.raises(sqlite3.IntegrityError):
        device_db.execute('insert into "_outbox" (entity, op, record_id, client_time, status) '
                          "values ('visit', 'insert', 'x', 'now', 'lost')")


def _upsert_sql(entity: dict) -> str:
    """The pull statement the schema is designed for (see the comment in schema.sql)."""
    cols = [c["name"] for c in entity["columns"]] + ["_version", "_created_at", "_updated_at"]
    quoted = ", ".join(f'"{c}"' for c in cols)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in cols if c != "id")
    return (f'INSERT INTO "{entity["name"]}" ({quoted}) VALUES ({", ".join("?" * len(cols))}) '
            f'ON CONFLICT (id) DO UPDATE SET {updates} WHERE "{entity["name"]}"._dirty = 0')


def _device_params(entity: dict, row: dict) -> tuple:
    values = []
    for c in entity["columns"]:
        v = row.get(c["name"])
        if c["storage"] == "json-text" and v is not None:
            v = json.dumps(v, sort_keys=True)
        elif c["storage"] == "integer-0-1" and v is not None:
            v = int(v)
        values.append(v)
    return (*values, row["version"], row["created_at"], row["updated_at"])


def test_a_pull_page_applies_with_executemany_and_spares_dirty_rows(device_db, description,
                                                                     example_model, make_row):
    entity = next(e for e in description["entities"] if e["name"] == "order")
    model_entity = example_model.entity("order")
    rows = [make_row(model_entity, n) for n in range(200)]
    sql = _upsert_sql(entity)
    with device_db:
        device_db.execute("BEGIN")
        device_db.executemany(sql, [_device_params(entity, r) for r in rows])
    assert device_db.execute('select count(*) from "order"').fetchone()[0] == 200
    stored = device_db.execute('select total, _version, _dirty from "order" where id = ?',
                               (rows[5]["id"],)).fetchone()
    assert stored == (rows[5]["total"], 6, 0), "decimals stay exact text"

    # A local edit is dirty until acknowledged: the next page must not overwrite it.
    device_db.execute('update "order" set remarks = ?, _dirty = 1 where id = ?', ("mine", rows[5]["id"]))
    changed = [dict(r, remarks="server", version=r["version"] + 1) for r in rows[:10]]
    device_db.executemany(sql, [_device_params(entity, r) for r in changed])
    assert device_db.execute('select remarks from "order" where id = ?', (rows[5]["id"],)).fetchone() == ("mine",)
    assert device_db.execute('select remarks, _version from "order" where id = ?',
                             (rows[4]["id"],)).fetchone() == ("server", 6)


def test_an_insert_and_its_outbox_entry_commit_or_roll_back_together(device_db):
    def write(record_id: str, fail: bool) -> None:
        device_db.execute("BEGIN")
        try:
            device_db.execute('insert into "visit" (id, purpose, _dirty) values (?, ?, 1)', (record_id, "order"))
            device_db.execute('insert into "_outbox" (entity, op, record_id, fields, client_time) '
                              "values ('visit', 'insert', ?, ?, ?)",
                              (record_id, '{"purpose": "order"}', None if fail else "2026-03-01T00:00:00Z"))
            device_db.execute("COMMIT")
        except sqlite3.IntegrityError:
            device_db.execute("ROLLBACK")

    write("v1", fail=False)
    write("v2", fail=True)   # client_time NOT NULL fails the outbox insert
    assert [r[0] for r in device_db.execute('select id from "visit"')] == ["v1"]
    assert [r[0] for r in device_db.execute('select record_id from "_outbox"')] == ["v1"]


def test_schema_json_describes_the_created_tables(device_db, description, example_model):
    assert description["fingerprint"] == example_model.fingerprint()
    assert [e["name"] for e in description["entities"]] == list(example_model.entity_names)
    for entity in description["entities"]:
        actual = _columns(device_db, entity["name"])
        declared = [(c["name"], c["sqlite_type"]) for c in entity["columns"]]
        declared += [(c["name"], c["sqlite_type"]) for c in entity["bookkeeping_columns"]]
        assert [(c[0], c[1]) for c in actual] == declared, entity["name"]
        actual_ix = {r[1] for r in device_db.execute(f'PRAGMA index_list("{entity["name"]}")')
                     if not r[1].startswith("sqlite_autoindex")}
        assert actual_ix == {ix["name"] for ix in entity["indexes"]}


def test_every_entity_column_can_be_added_to_an_existing_store(device_db, description):
    # Additive device migrations: no column is NOT NULL without a default, so ADD COLUMN works.
    for entity in description["entities"]:
        for c in entity["columns"][1:]:
            assert not c.get("not_null")
        for c in entity["bookkeeping_columns"]:
            assert not c["not_null"] or c["default"] is not None
    device_db.execute('insert into "territory" (id, code) values (?, ?)', ("t1", "N1"))
    device_db.execute('alter table "territory" add column "zone" TEXT')
    assert device_db.execute('select code, zone from "territory"').fetchone() == ("N1", None)


def test_phi_columns_are_marked_for_the_sdk(description, example_model):
    prescription = next(e for e in description["entities"] if e["name"] == "prescription")
    marked = {c["name"] for c in prescription["columns"] if c["phi"]}
    assert marked == {f.name for f in example_model.entity("prescription").phi_fields}
