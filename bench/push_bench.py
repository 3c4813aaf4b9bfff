"""Push ingest: 20,000 visit inserts pushed in batches of 500, from received to applied and
pullable, against raw sqlite3 `executemany` of the same rows (DESIGN.md section 6: >= 50%).

Figures printed:
- end to end: `POST /api/v1/sync/push` of every batch (JSON through the Flask test client,
  durable in the embedded queue) and `state.sync.drain()` applying them all; the clock stops
  when drain returns. A pull then checks the last record is visible (not timed).
- the receive and apply shares of that run;
- apply only: `MutationApplier.apply_batch` called directly on fresh server, no HTTP or queue,
  against the raw baseline of its three writes: `executemany` of the same rows into the visit
  table, the change log (`fs_changes`, each row's JSON text prepared before the clock) and the
  dedupe ledger (`fs_ledger`), same DDL, one transaction (goal >= 25%);
- cost against registered devices: push (HTTP + queue) and apply of `--device-records` visits by
  one device when 1, 100 and 1,000 devices are registered, each other device having pushed 10
  visits before; microseconds per mutation (flat within 2x is the goal);
- the cProfile top 15 of the apply path (`--profile`, on by default; `--no-profile` skips it).

Run: `.venv/bin/python bench/push_bench.py [--records N] [--batch N] [--devices 1,100,1000]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa

from harness import (REP, ROOT, SYNC, Stopwatch, chunks, figure, header, info, make_server, profile_top,
                     raw_executemany, register_device, rep_token, sqlite_ddl, sqlite_value, sync_headers)

from fieldsync.defs.values import format_datetime
from fieldsync.seed import PUNE_CENTRAL, PUNE_RURAL, load_seed
from fieldsync.ids import new_id
from fieldsync.store.changelog import CHANGES_TABLE, changelog_metadata
from fieldsync.store.sync_tables import LEDGER
from fieldsync.sync.apply import PushBatch, mutation_digest

PURPOSES = ("order", "detailing", "collection", "survey")


def seeded_server(data_dir: Path):
    app, state = make_server(data_dir)
    load_seed(state.config, ROOT / "examples" / "seed")
    token = rep_token()
    device_id = register_device(app, token)
    return app, state, token, device_id


def retailers_of(state) -> list[tuple[str, str]]:
    """(retailer id, territory id) of the seed's retailers in the rep's territories."""
    table = state.store.table(state.model.entity("retailer"))
    with state.engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.id, table.c.territory_id)
                            .where(table.c.territory_id.in_([PUNE_CENTRAL, PUNE_RURAL]))).all()
    return [(r.id, r.territory_id) for r in rows]


def visit_mutations(n: int, retailers: list[tuple[str, str]], now: dt.datetime) -> list[dict]:
    """`n` visit inserts as a device sends them (fields of entity_defs/transactions/visit.yaml;
    rep_id is the owner, set by the server)."""
    rng = random.Random(7)
    mutations = []
    for seq in range(1, n + 1):
        retailer_id, territory_id = retailers[seq % len(retailers)]
        visited = now - dt.timedelta(minutes=seq)
        mutations.append({
            "seq": seq, "entity": "visit", "op": "insert", "id": new_id(visited), "base_version": None,
            "client_time": format_datetime(visited),
            "fields": {"retailer_id": retailer_id, "territory_id": territory_id,
                       "visited_at": format_datetime(visited), "purpose": PURPOSES[seq % 4],
                       "notes": f"Discussed the monthly order and two new SKUs; visit {seq}, follow up next week.",
                       "location": {"lat": round(18.5 + rng.random() / 10, 6), "lon": round(73.8 + rng.random() / 10, 6)},
                       "duration_minutes": 5 + seq % 60}})
    return mutations


def baseline_rows(state, mutations: list[dict], now: dt.datetime) -> tuple[list[str], list[tuple]]:
    """The same visits as rows of the server's visit table: every field and system column."""
    table = state.store.table(state.model.entity("visit"))
    columns = [c.name for c in table.columns]
    rows = []
    for m in mutations:
        f = m["fields"]
        values = {"id": m["id"], "version": 1, "created_at": now, "updated_at": now, "deleted": False,
                  "rep_id": REP["user"], "retailer_id": f["retailer_id"], "territory_id": f["territory_id"],
                  "visited_at": dt.datetime.fromisoformat(f["visited_at"].replace("Z", "+00:00")),
                  "purpose": f["purpose"], "notes": f["notes"], "location": f["location"],
                  "duration_minutes": f["duration_minutes"]}
        rows.append(tuple(sqlite_value(values[c]) for c in columns))
    return columns, rows


def pull_sees(app, token: str, device_id: str, record_id: str) -> bool:
    """Pull from the start until the snapshot ends; True when `record_id` arrived."""
    client = app.test_client()
    body = {"device_id": device_id, "schema_version": 1, "cursor": 0, "resume": None, "scope_hash": None,
            "limit": 10000}
    seen = False
    while True:
        page = client.post(f"{SYNC}/pull", headers=sync_headers(token), json=body).get_json()
        seen = seen or any(c.get("id") == record_id for c in page["changes"])
        if not page["has_more"]:
            return seen
        body.update(cursor=page["cursor"], resume=page["resume"], scope_hash=page["scope_hash"])


def push_end_to_end(data_dir: Path, n: int, batch: int) -> dict:
    app, state, token, device_id = seeded_server(data_dir)
    now = dt.datetime.now(dt.timezone.utc)
    mutations = visit_mutations(n, retailers_of(state), now)
    client = app.test_client()
    headers = sync_headers(token)
    bodies = [{"device_id": device_id, "schema_version": 1, "sent_at": format_datetime(now), "mutations": list(part)}
              for part in chunks(mutations, batch)]
    receive, apply = Stopwatch(), Stopwatch()
    with receive.running():
        for body in bodies:
            answer = client.post(f"{SYNC}/push", headers=headers, json=body)
            if answer.status_code != 202:
                raise RuntimeError(f"push refused: {answer.status_code} {answer.get_data(as_text=True)[:300]}")
    with apply.running():
        applied = state.sync.drain()
    if applied != len(bodies):
        raise RuntimeError(f"drain applied {applied} batches, expected {len(bodies)}")
    with state.engine.connect() as conn:
        table = state.store.table(state.model.entity("visit"))
        stored = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    if stored != n:
        raise RuntimeError(f"{stored} visits stored, expected {n} (rejections?)")
    if not pull_sees(app, token, device_id, mutations[-1]["id"]):
        raise RuntimeError("the last pushed visit is not pullable")
    columns, rows = baseline_rows(state, mutations, now)
    ddl = sqlite_ddl(state.store.table(state.model.entity("visit")))
    state.engine.dispose()
    return {"receive": receive.seconds, "apply": apply.seconds, "columns": columns, "rows": rows, "ddl": ddl}


def raw_three_tables(path: Path, state, mutations: list[dict], now: dt.datetime, device_id: str) -> float:
    """The raw baseline of `apply_batch`: the rows it writes, in storage form (prepared before
    the clock), by one `executemany` each into the visit table, the change log and the ledger
    (their DDL, WAL, one transaction). Returns mutations per second."""
    import sqlite3
    import time
    columns, rows = baseline_rows(state, mutations, now)
    stamp = sqlite_value(now)
    changes, ledger = [], []
    for position, (m, row) in enumerate(zip(mutations, rows), start=1):
        wire = {c: (v if c not in ("created_at", "updated_at") else format_datetime(now)) for c, v in zip(columns, row)}
        text = json.dumps(wire, sort_keys=True, separators=(",", ":"))
        changes.append((position, "visit", m["id"], 1, "create", text, None, device_id, m["seq"], stamp))
        ledger.append((device_id, m["seq"], mutation_digest(m), "applied", "visit", m["id"], "insert", position, 1,
                       "changed", None, None, None, None, None, None, stamp))
    tables = [("visit", state.store.table(state.model.entity("visit")), rows),
              (CHANGES_TABLE, changelog_metadata().tables[CHANGES_TABLE], changes), (LEDGER.name, LEDGER, ledger)]
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        statements = []
        for name, table, table_rows in tables:
            for statement in sqlite_ddl(table):
                conn.execute(statement)
            names = [c.name for c in table.columns]
            statements.append((f'INSERT INTO "{name}" ({", ".join(chr(34) + c + chr(34) for c in names)}) '
                               f'VALUES ({", ".join("?" for _ in names)})', table_rows))
        started = time.perf_counter()
        conn.execute("BEGIN")
        for sql, table_rows in statements:
            conn.executemany(sql, table_rows)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return len(mutations) / elapsed


def per_device_cost(data_dir: Path, devices: int, n: int, batch: int) -> float:
    """Microseconds per mutation of one device pushing `n` visits (HTTP test client + queue,
    then drain) while `devices` devices are registered, each other one with 10 visits pushed
    and applied before."""
    app, state, token, device_id = seeded_server(data_dir)
    now = dt.datetime.now(dt.timezone.utc)
    retailers = retailers_of(state)
    applier = state.sync.applier
    for i in range(devices - 1):
        other = register_device(app, token, install_id=f"bench-other-{i}")
        history = visit_mutations(10, retailers, now - dt.timedelta(days=1, minutes=i))
        applier.apply_batch(PushBatch(device_id=other, user_id=REP["user"], role=REP["role"],
                                      attributes=dict(REP["attributes"]), received_at=format_datetime(now),
                                      sent_at=format_datetime(now), schema_version=1, mutations=history))
    mutations = visit_mutations(n, retailers, now)
    client = app.test_client()
    headers = sync_headers(token)
    watch = Stopwatch()
    with watch.running():
        for part in chunks(mutations, batch):
            answer = client.post(f"{SYNC}/push", headers=headers, json={
                "device_id": device_id, "schema_version": 1, "sent_at": format_datetime(now), "mutations": list(part)})
            if answer.status_code != 202:
                raise RuntimeError(f"push refused: {answer.status_code}")
        state.sync.drain()
    with state.engine.connect() as conn:
        applied = conn.execute(sa.select(sa.func.count()).select_from(LEDGER).where(
            LEDGER.c.device_id == device_id, LEDGER.c.status == "applied")).scalar_one()
    if applied != n:
        raise RuntimeError(f"{applied} of {n} applied")
    state.sync.close()
    state.engine.dispose()
    return watch.seconds / n * 1e6


def apply_only(data_dir: Path, n: int, batch: int, profile: bool) -> tuple[float, str | None]:
    """`apply_batch` called directly, batch after batch; returns its seconds (and the profile)."""
    app, state, token, device_id = seeded_server(data_dir)
    now = dt.datetime.now(dt.timezone.utc)
    mutations = visit_mutations(n, retailers_of(state), now)
    batches = [PushBatch(device_id=device_id, user_id=REP["user"], role=REP["role"],
                         attributes=dict(REP["attributes"]), received_at=format_datetime(now),
                         sent_at=format_datetime(now), schema_version=1, mutations=list(part))
               for part in chunks(mutations, batch)]
    applier = state.sync.applier

    def run() -> None:
        for b in batches:
            results = applier.apply_batch(b)
            if any(r["status"] != "applied" for r in results):
                raise RuntimeError(f"rejected: {[r for r in results if r['status'] != 'applied'][:1]}")

    watch = Stopwatch()
    text = None
    if profile:
        _, text = profile_top(run)
    else:
        with watch.running():
            run()
    raw = raw_three_tables(data_dir / "raw3.db", state, mutations, now, device_id) if not profile else None
    state.engine.dispose()
    return watch.seconds, text, raw


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    parser.add_argument("--devices", default="1,100,1000", help="registered device counts of the cost table ('' skips it)")
    parser.add_argument("--device-records", type=int, default=5000)
    args = parser.parse_args(argv)
    header(f"push ingest: {args.records:,} visit inserts in batches of {args.batch}")
    with tempfile.TemporaryDirectory(prefix="fieldsync-push-bench-") as tmp:
        tmp = Path(tmp)
        run = push_end_to_end(tmp / "e2e", args.records, args.batch)
        baseline = raw_executemany(tmp / "raw.db", run["ddl"], "visit", run["columns"], run["rows"])
        total = run["receive"] + run["apply"]
        bare = raw_executemany(tmp / "raw-bare.db", run["ddl"][:1], "visit", run["columns"], run["rows"])
        figure("push, received -> applied and pullable", args.records / total, baseline, 0.50)
        info("raw baseline = the server's visit table (PK + 4 indexes); without its indexes",
             f"{bare:,.0f} rows/s")
        info("of which receive (HTTP + queue)", f"{run['receive']:.2f} s = {args.records / run['receive']:,.0f} rows/s")
        info("of which apply (drain)", f"{run['apply']:.2f} s = {args.records / run['apply']:,.0f} rows/s")
        seconds, _, raw3 = apply_only(tmp / "apply", args.records, args.batch, profile=False)
        figure("apply only (apply_batch, no HTTP/queue), against raw executemany into visit + change log + ledger",
               args.records / seconds, raw3, 0.25, unit="mutations/s")
        info("apply only against the visit table alone", f"{args.records / seconds / baseline:.1%} of raw")
        counts = [int(c) for c in args.devices.split(",") if c.strip()]
        costs = []
        for count in counts:
            costs.append(per_device_cost(tmp / f"devices-{count}", count, args.device_records, args.batch))
            info(f"push + apply with {count:,} registered device(s)",
                 f"{costs[-1]:.0f} us per mutation ({args.device_records:,} visits of one device)")
        if costs:
            info("cost per mutation, most / least", f"{max(costs) / min(costs):.2f}x (goal: within 2x)")
        if args.profile:
            _, text, _ = apply_only(tmp / "profile", args.records // 4, args.batch, profile=True)
            print(f"\n   cProfile of apply_batch ({args.records // 4:,} records), top 15 by cumulative time:")
            print("\n".join("   " + line for line in text.splitlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
