"""Push ingest: 20,000 visit inserts pushed in batches of 500, from received to applied and
pullable, against raw sqlite3 `executemany` of the same rows (DESIGN.md section 6: >= 50%).

Figures printed:
- end to end: `POST /api/v1/sync/push` of every batch (JSON through the Flask test client,
  durable in the embedded queue) and `state.sync.drain()` applying them all; the clock stops
  when drain returns. A pull then checks the last record is visible (not timed).
- the receive and apply shares of that run;
- apply only: `MutationApplier.apply_batch` called directly on fresh server, no HTTP or queue;
- the cProfile top 15 of the apply path (`--profile`, on by default; `--no-profile` skips it).

Run: `.venv/bin/python bench/push_bench.py [--records N] [--batch N]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
from fieldsync.sync.apply import PushBatch

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
    state.engine.dispose()
    return watch.seconds, text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
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
        seconds, _ = apply_only(tmp / "apply", args.records, args.batch, profile=False)
        info("apply only (apply_batch, no HTTP/queue)",
             f"{args.records / seconds:,.0f} rows/s = {args.records / seconds / baseline:.1%} of raw")
        if args.profile:
            _, text = apply_only(tmp / "profile", args.records // 4, args.batch, profile=True)
            print(f"\n   cProfile of apply_batch ({args.records // 4:,} records), top 15 by cumulative time:")
            print("\n".join("   " + line for line in text.splitlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
