"""A page of plainly applied results (a device's own pushes coming back) is settled a few
statements at a time (client/apply.py `_settle_applied`); it must leave the store exactly as
settling the results one by one does (§5.2, §10.4)."""

from __future__ import annotations

import datetime as dt
import shutil
import sqlite3
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from fieldsync.client.apply import Applied, settle_result, settle_results
from fieldsync.client.schema import DeviceSchema
from fieldsync.client.store import LocalStore

NOW = dt.datetime(2026, 11, 27, 9, tzinfo=dt.timezone.utc)
IDS = [f"0192a000-0000-7000-8000-00000000070{i}" for i in range(4)]
RETAILER = "0192a000-0000-7000-8000-000000000301"
TERRITORY = "0192a000-0000-7000-8000-000000000011"


def _row(version: int, notes: str, deleted: bool = False) -> dict:
    return {"id": None, "version": version, "retailer_id": RETAILER, "territory_id": TERRITORY,
            "visited_at": "2026-11-26T15:00:00.000000Z", "purpose": "order", "notes": notes, "deleted": deleted,
            "created_at": "2026-11-26T15:00:00.000000Z", "updated_at": f"2026-11-26T15:00:0{version % 10}.000000Z"}


LOCAL = st.one_of(st.none(), st.tuples(st.booleans(), st.integers(0, 4)))          # (dirty, version) or absent
ROW = st.one_of(st.none(), st.tuples(st.integers(1, 5), st.booleans()))            # (version, tombstone) or null
SCENARIO = st.fixed_dictionaries({
    "local": st.lists(LOCAL, min_size=len(IDS), max_size=len(IDS)),
    "entries": st.lists(st.integers(0, len(IDS) - 1), min_size=1, max_size=8),      # record of each seq 1..n
    "answered": st.lists(st.booleans(), min_size=8, max_size=8),                    # which seqs get a result
    "rows": st.lists(ROW, min_size=8, max_size=8),
    "stray": st.booleans(),                                                        # a result settled before
})


def _dump(path: Path) -> tuple:
    conn = sqlite3.connect(path)
    try:
        visits = sorted(conn.execute('SELECT id, notes, _version, _dirty, _updated_at FROM "visit"'))
        outbox = sorted(conn.execute('SELECT seq, entity, record_id FROM "_outbox"'))
        return visits, outbox
    finally:
        conn.close()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario=SCENARIO)
def test_settling_applied_results_together_equals_one_by_one(schema_document, scenario):
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = LocalStore(tmp / "base.db")
        store.create(DeviceSchema(schema_document))
        table = store.table("visit")
        with store.transaction() as conn:
            for record_id, local in zip(IDS, scenario["local"]):
                if local is not None:
                    row = dict(_row(local[1], "local"), id=record_id)
                    conn.execute(table.server_row_sql, table.server_row_values(record_id, row, local[1]))
                    conn.execute('UPDATE "visit" SET _dirty = ? WHERE id = ?', (int(local[0]), record_id))
            for i in scenario["entries"]:
                conn.execute('INSERT INTO "_outbox" (entity, op, record_id, client_time) VALUES (?, ?, ?, ?)',
                             ("visit", "update", IDS[i], "2026-11-27T09:00:00Z"))
        store.close()
        results = []
        for seq, i in enumerate(scenario["entries"], start=1):
            if scenario["answered"][seq - 1]:
                shape = scenario["rows"][seq - 1]
                row = None if shape is None else dict(_row(shape[0], f"server {seq}", deleted=shape[1]), id=IDS[i])
                results.append({"seq": seq, "status": "applied", "row": row})
        if scenario["stray"]:
            results.append({"seq": 99, "status": "applied", "row": None})
        for name in ("together", "one_by_one"):
            shutil.copy(tmp / "base.db", tmp / f"{name}.db")
        outcomes = []
        for name in ("together", "one_by_one"):
            copy = LocalStore(tmp / f"{name}.db")
            outcome = Applied()
            with copy.transaction() as conn:
                if name == "together":
                    settle_results(copy, conn, list(reversed(results)), NOW, outcome)
                else:
                    for result in sorted(results, key=lambda r: r["seq"]):
                        settle_result(copy, conn, result, NOW, outcome)
            copy.close()
            outcomes.append(outcome.applied)
        assert outcomes[0] == outcomes[1]
        assert _dump(tmp / "together.db") == _dump(tmp / "one_by_one.db")
