"""Cost grows with the work, not the data: a stream pull's time per change against the size of
the table (and of the change log) it comes from (issue 14; DESIGN.md section 6).

For each size N (10k, 100k, 1M rows by default) a fresh server and device are built with a raw
fixture, untimed: the device syncs an empty catalogue first (it then holds a scope and streams
from the log), then raw sqlite3 `executemany` writes N products into the server's table, N
`create` entries into its change log (the counter moved to N) and the same N rows into the
device's table, whose cursor is set to N, as if it had pulled them. Then K rows (2,000 by
default) spread over the table change on the server through the ordinary write path and the
timed part runs: `client.sync()` pulls the K patches.

Printed per size: microseconds per pulled change (wall clock, and the CPU time of this process,
which a busy machine disturbs less); the raw baseline (sqlite3 `executemany` UPDATE
of the same K rows into the device's table, in the same file, right after); their ratio; and
each figure's growth against the smallest size. The CPU figure must stay within 2x; the raw
baseline's growth shows what SQLite itself pays for a bigger table (deeper B-trees, a page
cache that no longer holds the table).

Run: `.venv/bin/python bench/scale_bench.py [--sizes 10000,100000,1000000] [--changes 2000]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import random
import sqlite3
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from catalog import device_product_table, device_rows, product_rows, update_products
from harness import header, info, make_server, rep_token, sqlite_value

from fieldsync.client import Client, WsgiTransport

FILL_CHUNK = 50_000
FLAT_WITHIN = 2.0


def raw_fill(state, client: Client, server_db: Path, n: int, k: int, now: dt.datetime) -> list[dict]:
    """Write `n` products to the server's table and change log and to the device, raw; return
    `k` of them spread evenly (the rows the timed part changes). The rows are copies of one
    product with their own id and sku: what matters here is how many there are."""
    entity = state.model.entity("product")
    table = state.store.table(entity)
    device_table = device_product_table(state)
    proto = product_rows(1, now)[0]
    proto_wire = state.store.to_wire_row(entity, proto)
    server_columns = [c.name for c in table.columns]
    server_proto = [sqlite_value(proto.get(c)) for c in server_columns]
    device_columns, (device_proto,) = device_rows(device_table, [proto_wire])
    device_proto = list(device_proto)
    text = json.dumps({**proto_wire, "id": "@ID@", "sku": "@SKU@"}, sort_keys=True, separators=(",", ":"))
    server_at = (server_columns.index("id"), server_columns.index("sku"))
    device_at = (device_columns.index("id"), device_columns.index("sku"))
    insert_row = (f'INSERT INTO "{table.name}" ({", ".join(chr(34) + c + chr(34) for c in server_columns)}) '
                  f'VALUES ({", ".join("?" for _ in server_columns)})')
    insert_change = ("INSERT INTO fs_changes (position, entity, record_id, version, op, row, prev, origin, seq, "
                     "changed_at) VALUES (?, 'product', ?, 1, 'create', ?, NULL, NULL, NULL, ?)")
    insert_device = (f'INSERT INTO "{device_table.table}" ({", ".join(device_columns)}) '
                     f'VALUES ({", ".join("?" for _ in device_columns)})')
    stamp = sqlite_value(now)
    step = max(n // k, 1)
    millis = int(now.timestamp() * 1000)
    picked: list[dict] = []
    server = sqlite3.connect(server_db, isolation_level=None)
    try:
        server.execute("PRAGMA journal_mode = WAL")
        for start in range(0, n, FILL_CHUNK):
            rows, changes, device = [], [], []
            for position in range(start + 1, min(start + FILL_CHUNK, n) + 1):
                record_id, sku = _record_id(millis, position), f"SKU-{position:07d}"
                server_proto[server_at[0]], server_proto[server_at[1]] = record_id, sku
                device_proto[device_at[0]], device_proto[device_at[1]] = record_id, sku
                rows.append(tuple(server_proto))
                device.append(tuple(device_proto))
                changes.append((position, record_id, text.replace("@ID@", record_id).replace("@SKU@", sku), stamp))
                if (position - 1) % step == 0 and len(picked) < k:
                    picked.append({**proto, "id": record_id, "sku": sku})
            server.execute("BEGIN IMMEDIATE")
            server.executemany(insert_row, rows)
            server.executemany(insert_change, changes)
            server.execute("COMMIT")
            with client._store.transaction() as conn:
                conn.executemany(insert_device, device)
        server.execute("BEGIN IMMEDIATE")
        server.execute("UPDATE fs_position SET pos = ?", (n,))
        server.execute("COMMIT")
    finally:
        server.close()
    with client._store.transaction() as conn:
        client._store.set_state(conn, cursor=n, head=n)
    return picked


def _record_id(millis: int, position: int) -> str:
    """A UUIDv7-shaped id, ascending with `position` like ids made one after another."""
    return (f"{millis >> 16:08x}-{millis & 0xFFFF:04x}-7{(position >> 48) & 0xFFF:03x}-"
            f"{0x8000 | ((position >> 36) & 0x3FFF):04x}-{position & 0xFFFFFFFFFFFF:012x}")


def raw_update_rate(client: Client, table, updates: list[tuple]) -> float:
    """sqlite3 `executemany` UPDATE of `updates` in the device's own file, one transaction
    (then rolled back), best of three: on a busy machine one run of a few ms is noise."""
    best = float("inf")
    for _ in range(3):
        conn = client._store.conn
        conn.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()
        conn.executemany(f'UPDATE "{table.table}" SET "unit_price" = ?, "_version" = ?, "_updated_at" = ? '
                         "WHERE id = ?", updates)
        conn.execute("COMMIT")
        best = min(best, time.perf_counter() - started)
    return len(updates) / best


def measure(n: int, k: int, tmp: Path) -> tuple[float, float, float]:
    """(µs per pulled change, of which CPU µs, raw µs per updated row) at table size `n`."""
    app, state = make_server(tmp / "server")
    client = Client(tmp / "device.db", WsgiTransport(app), token=rep_token(), pull_limit=1000, bundles=False)
    try:
        first = client.sync()
        if not first.complete or client._store.state("scope_hash") is None:
            raise RuntimeError(f"the empty first sync did not finish: {first}")
        now = dt.datetime.now(dt.timezone.utc)
        started = time.perf_counter()
        picked = raw_fill(state, client, tmp / "server" / "fieldsync.db", n, k, now)
        later = now + dt.timedelta(seconds=1)
        updated = update_products(state, picked, lambda row, i: {"unit_price": row["unit_price"] + Decimal("1.00")},
                                  later)
        info(f"{n:>9,} rows: fixture", f"{time.perf_counter() - started:.1f} s")
        gc.collect()   # the fixture's garbage is not the pull's cost
        started, cpu = time.perf_counter(), time.process_time()
        report = client.sync()
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        probe = client.get("product", updated[-1]["id"])
        if not report.complete or report.pulled != len(updated) or probe is None or probe["version"] != 2:
            raise RuntimeError(f"the stream pull is incomplete: {report}, last row {probe}")
        table = device_product_table(state)
        entity = state.model.entity("product")
        wire = [state.store.to_wire_row(entity, r) for r in updated]
        rng = random.Random(n)
        raw = raw_update_rate(client, table, [(w["unit_price"], w["version"] + 1, w["updated_at"], w["id"])
                                              for w in rng.sample(wire, len(wire))])
        return elapsed / len(updated) * 1e6, cpu / len(updated) * 1e6, 1e6 / raw
    finally:
        client.close()
        state.engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="table sizes, comma-separated")
    parser.add_argument("--changes", type=int, default=2000, help="rows changed and pulled per size")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    header(f"scale: stream pull of {args.changes:,} changes against table sizes {', '.join(f'{s:,}' for s in sizes)}")
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="fieldsync-scale-bench-") as tmp:
            results.append((n, *measure(n, args.changes, Path(tmp))))
    smallest = results[0][1]
    smallest_cpu, smallest_raw = results[0][2], results[0][3]
    print(f"   {'table rows':>12} | {'pull µs/change':>14} | {'of it CPU':>9} | {'raw µs/row':>10} | {'ratio':>6} | "
          "growth: wall / CPU / raw")
    flat = True
    for n, per_change, cpu, raw in results:
        # judged on CPU time: on a shared machine the wall clock of a one-second pull is mostly
        # the other processes
        flat = flat and cpu / smallest_cpu <= FLAT_WITHIN
        print(f"   {n:>12,} | {per_change:>14.1f} | {cpu:>9.1f} | {raw:>10.1f} | {raw / per_change:>6.1%} | "
              f"{per_change / smallest:.2f}x / {cpu / smallest_cpu:.2f}x / {raw / smallest_raw:.2f}x")
    info("per-change CPU cost flat within 2x", "ok" if flat else "NO (grows with the data)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
