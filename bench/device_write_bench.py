"""Device writes: the SDK's local `insert`/`update` and its batch API against raw sqlite3 writes
of the same rows in the same store layout and durability (WAL, `synchronous=FULL`).

Figures printed:
- one `Client.insert()` of a visit (row + outbox entry, one commit): median and p99 latency,
  against the raw baseline, a sqlite3 transaction writing the same two rows (the visit row and
  its `_outbox` entry, values prepared before timing) into a store made from the same device
  schema. The two alternate write by write, so a busy disk slows both alike. Budget: median
  <= 1.3x the raw transaction.
- one `Client.update()` of a field (row update + entry) against the raw UPDATE + entry INSERT.
- `Client.insert_many()` of N visits in one call, and N `insert()` calls inside one
  `with client.transaction():`, in rows/s, against raw `executemany` of the same rows and
  their outbox entries in one transaction. Budget: insert_many >= 30,000 rows/s.
- with `--profile`: the top functions of the single insert and of one `insert_many()` under cProfile.

Run: `.venv/bin/python bench/device_write_bench.py [--writes N] [--rows N] [--profile]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from harness import ROOT, header, info, profile_top

from fieldsync.client import Client
from fieldsync.client.outbox import check_fields
from fieldsync.client.schema import DeviceSchema, quote
from fieldsync.defs.values import format_datetime
from fieldsync.ids import new_id

OUTBOX_INSERT = ('INSERT INTO "_outbox" (entity, op, record_id, base_version, fields, client_time) '
                 "VALUES (?, ?, ?, ?, ?, ?)")
SINGLE_BUDGET = 1.3          # a single insert/update: at most 1.3x the raw two-row transaction
BATCH_BUDGET = 30_000        # rows/s of insert_many
RETAILER = "2fd6ae15-929b-509f-9c04-01a819382ca2"
TERRITORY = "270707fc-40e4-5205-8dad-51e11ccbfacf"
PURPOSES = ("order", "detailing", "collection", "survey")


class Offline:
    """A transport that is never used: every write here is local."""

    def request(self, *args: Any, **kwargs: Any):
        raise RuntimeError("the device write bench does not sync")


def visit(i: int) -> dict[str, Any]:
    return {"retailer_id": RETAILER, "territory_id": TERRITORY, "visited_at": "2026-11-26T15:00:00Z",
            "purpose": PURPOSES[i % 4], "notes": f"met the owner, visit {i}", "duration_minutes": 10 + i % 50}


class RawStore:
    """The baseline: plain sqlite3 on a store made from the same device schema, same pragmas."""

    def __init__(self, path: Path, schema: DeviceSchema):
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        for statement in schema.create_statements():
            self.conn.execute(statement)
        self.table = schema.entity("visit")

    def prepared(self, fields: dict[str, Any], now: dt.datetime) -> tuple[str, list[Any], tuple]:
        """The two statements' parameters, made before timing (the baseline does no Python work)."""
        clean = check_fields(self.table, fields, partial=False)
        record_id = new_id(now)
        names = ["id", *clean, "_version", "_dirty"]
        sql = (f"INSERT INTO {quote(self.table.table)} ({', '.join(quote(n) for n in names)}) "
               f"VALUES ({', '.join('?' for _ in names)})")
        row = [record_id, *(self.table.column(n).to_storage(v) for n, v in clean.items()), 0, 1]
        return sql, row, ("visit", "insert", record_id, None, json.dumps(clean, sort_keys=True), format_datetime(now))

    def write(self, sql: str, params: list[Any], entry: tuple) -> None:
        """One row written (insert or update) and its outbox entry, in one transaction."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(sql, params)
        conn.execute(OUTBOX_INSERT, entry)
        conn.execute("COMMIT")

    def insert_many(self, sql: str, rows: list[list[Any]], entries: list[tuple]) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows)
        conn.executemany(OUTBOX_INSERT, entries)
        conn.execute("COMMIT")


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def alternate(sdk: Callable[[int], None], raw: Callable[[int], None], indexes: range
              ) -> tuple[list[float], list[float]]:
    """Time `sdk(i)` and `raw(i)` alternately for each i (so other load slows both alike)."""
    sdk_times, raw_times = [], []
    clock = time.perf_counter
    for i in indexes:
        started = clock()
        sdk(i)
        middle = clock()
        raw(i)
        ended = clock()
        sdk_times.append(middle - started)
        raw_times.append(ended - middle)
    return sdk_times, raw_times


def timed(rows: int, call: Callable[[], Any]) -> tuple[float, float]:
    """Rows per second of `call()` by the wall clock and by this process's CPU time (the second
    moves less when other work shares the machine; the fsync waits are in the first only)."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return rows / (time.perf_counter() - wall), rows / max(1e-9, time.process_time() - cpu)


def latency_figure(name: str, sdk_times: list[float], raw_times: list[float]) -> bool:
    sdk_median, raw_median = statistics.median(sdk_times), statistics.median(raw_times)
    ratio = sdk_median / raw_median
    verdict = "ok" if ratio <= SINGLE_BUDGET else "OVER BUDGET"
    print(f"   {name}: median {sdk_median * 1e6:,.0f} µs, p99 {percentile(sdk_times, 0.99) * 1e6:,.0f} µs | "
          f"raw two-row txn median {raw_median * 1e6:,.0f} µs, p99 {percentile(raw_times, 0.99) * 1e6:,.0f} µs | "
          f"ratio {ratio:.2f}x (budget <= {SINGLE_BUDGET}x) {verdict}")
    return ratio <= SINGLE_BUDGET


def work_figure(name: str, sdk_times: list[float], raw_times: list[float]) -> None:
    """The same pair without fsync: what the SDK adds to a write, apart from the disk."""
    sdk_median, raw_median = statistics.median(sdk_times), statistics.median(raw_times)
    info(f"{name} without fsync (diagnostic, synchronous=OFF on both)",
         f"median {sdk_median * 1e6:,.0f} µs against raw {raw_median * 1e6:,.0f} µs: "
         f"+{(sdk_median - raw_median) * 1e6:,.0f} µs of SDK work per write")


def set_synchronous(conns: list[Any], mode: str) -> None:
    for conn in conns:
        conn.execute(f"PRAGMA synchronous = {mode}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=2000, help="single writes timed (each side)")
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the batch figures")
    parser.add_argument("--profile", action="store_true", help="print the single insert's profile")
    args = parser.parse_args(argv)
    document = json.loads((ROOT / "generated" / "device" / "schema.json").read_text())
    schema = DeviceSchema(document)
    now = dt.datetime.now(dt.timezone.utc)
    header("device writes: SDK local writes against raw sqlite3 (WAL, synchronous=FULL)")
    with tempfile.TemporaryDirectory(prefix="fieldsync-device-write-bench-") as tmp:
        directory = Path(tmp)
        client = Client(directory / "device.db", Offline(), "unused", schema=document)
        raw = RawStore(directory / "raw.db", schema)
        try:
            # -- single writes ---------------------------------------------------------------
            warmup = 200
            total = warmup + 2 * args.writes     # the second half: the diagnostic without fsync
            fields = [visit(i) for i in range(total)]
            prepared = [raw.prepared(f, now) for f in fields]
            ids: list[str] = []
            insert_sdk = lambda i: ids.append(client.insert("visit", fields[i]))   # noqa: E731
            insert_raw = lambda i: raw.write(*prepared[i])                          # noqa: E731
            alternate(insert_sdk, insert_raw, range(warmup))
            latency_figure("insert()", *alternate(insert_sdk, insert_raw, range(warmup, warmup + args.writes)))
            conns = [client._store.conn, raw.conn]
            set_synchronous(conns, "OFF")
            work_figure("insert()", *alternate(insert_sdk, insert_raw, range(warmup + args.writes, total)))
            set_synchronous(conns, "FULL")

            raw_ids = [p[1][0] for p in prepared]
            update_sql = 'UPDATE "visit" SET "notes" = ?, _dirty = 1 WHERE id = ?'
            updates = [(update_sql, [f"second visit note {i}", raw_ids[i]],
                        ("visit", "update", raw_ids[i], 0, json.dumps({"notes": f"second visit note {i}"}),
                         format_datetime(now))) for i in range(len(raw_ids))]
            update_sdk = lambda i: client.update("visit", ids[i], {"notes": f"second visit note {i}"})  # noqa: E731
            update_raw = lambda i: raw.write(*updates[i])                                           # noqa: E731
            alternate(update_sdk, update_raw, range(warmup))
            latency_figure("update()", *alternate(update_sdk, update_raw, range(warmup, warmup + args.writes)))
            set_synchronous(conns, "OFF")
            work_figure("update()", *alternate(update_sdk, update_raw, range(warmup + args.writes, total)))
            set_synchronous(conns, "FULL")

            # -- batches ---------------------------------------------------------------------
            rows = [visit(i) for i in range(args.rows)]
            batch = [raw.prepared(f, now) for f in rows]
            raw_rate, raw_cpu = timed(args.rows, lambda: raw.insert_many(
                batch[0][0], [b[1] for b in batch], [b[2] for b in batch]))
            if not hasattr(client, "insert_many"):    # the SDK before the batch API (a before/after run)
                info("insert_many() and transaction()", "not in this SDK version; raw executemany "
                     f"{raw_rate:,.0f} rows/s ({raw_cpu:,.0f} by CPU time)")
                return 0
            many_rate, many_cpu = timed(args.rows, lambda: client.insert_many("visit", rows))
            verdict = "ok" if many_rate >= BATCH_BUDGET else "BELOW BUDGET"
            print(f"   insert_many() of {args.rows:,} visits, one commit: {many_rate:,.0f} rows/s "
                  f"(budget >= {BATCH_BUDGET:,}) {verdict} | raw executemany of the same rows and entries "
                  f"{raw_rate:,.0f} rows/s | ratio {many_rate / raw_rate:.1%}")
            info("  the same by this process's CPU time", f"insert_many {many_cpu:,.0f} rows/s, raw {raw_cpu:,.0f} rows/s")

            def loop() -> None:
                with client.transaction():
                    for fields_i in rows:
                        client.insert("visit", fields_i)
            loop_rate, loop_cpu = timed(args.rows, loop)
            info(f"{args.rows:,} insert() inside one transaction()",
                 f"{loop_rate:,.0f} rows/s ({loop_cpu:,.0f} by CPU time) | ratio to raw executemany "
                 f"{loop_rate / raw_rate:.1%}")

            if args.profile:
                extra = [visit(i) for i in range(1000)]
                _, text = profile_top(lambda: [client.insert("visit", f) for f in extra], limit=20)
                print("   profile of 1,000 single inserts (cumulative):")
                print("\n".join("      " + line for line in text.splitlines() if line.strip()))
                _, text = profile_top(lambda: client.insert_many("visit", rows), limit=15)
                print(f"   profile of one insert_many() of {args.rows:,} visits (cumulative):")
                print("\n".join("      " + line for line in text.splitlines() if line.strip()))
        finally:
            client.close()
            raw.conn.close()
    print("   (the machine's other load moves these figures; the ratios are taken write by write)")
    return 0   # a figure over budget is printed as such; the run itself did not break


if __name__ == "__main__":
    sys.exit(main())
