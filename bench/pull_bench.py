"""Pull 100,000 changed rows into a device's SQLite, against raw sqlite3 `executemany` of the same
rows into a fresh device-like table (DESIGN.md section 6: >= 50%).

Figures printed:
- snapshot: a `fieldsync.client.Client` over `WsgiTransport(app)` (the whole server in this
  process, no sockets) syncs from an empty store until caught up; baseline = raw `executemany`
  INSERT of the same rows into the device's product table (same DDL, WAL, one transaction);
- stream: every row then changes on the server (unit_price, one change-log entry each) and the
  client pulls the patches; baseline = raw `executemany` UPDATE of the same rows;
- where the time goes: the server share (inside the WSGI app) vs the client share.

Run: `.venv/bin/python bench/pull_bench.py [--rows N] [--pull-limit N] [--profile]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from catalog import device_product_table, device_rows, insert_products, product_rows, update_products
from harness import Stopwatch, figure, header, info, make_server, profile_top, raw_executemany, rep_token

from fieldsync.client import Client, WsgiTransport


class TimedApp:
    """A WSGI app wrapper that adds up the time spent inside the server."""

    def __init__(self, app):
        self.app = app
        self.watch = Stopwatch()

    def __call__(self, environ, start_response):
        with self.watch.running():
            return list(self.app(environ, start_response))


def raw_update(path: Path, table, rows: list[tuple], updates: list[tuple]) -> float:
    """Raw sqlite3 `executemany` UPDATE of `updates` (unit_price, _version, _updated_at, id)
    in a fresh file already holding `rows` (inserted untimed). Returns rows per second."""
    columns = ["id", *table.field_names, "_version", "_created_at", "_updated_at", "_deleted", "_dirty"]
    raw_executemany(path, table.create_statements(), table.table, columns, rows)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        started = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(f'UPDATE "{table.table}" SET "unit_price" = ?, "_version" = ?, "_updated_at" = ? '
                         "WHERE id = ?", updates)
        conn.execute("COMMIT")
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    return len(updates) / elapsed


def local_count(client: Client) -> int:
    return len(client.query("product"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--pull-limit", type=int, default=1000, help="changes per pull page (the SDK's default)")
    parser.add_argument("--profile", action="store_true", help="profile the snapshot pull (slower)")
    args = parser.parse_args(argv)
    header(f"pull: {args.rows:,} product rows into a device, pages of {args.pull_limit}")
    with tempfile.TemporaryDirectory(prefix="fieldsync-pull-bench-") as tmp:
        tmp = Path(tmp)
        app, state = make_server(tmp / "server")
        now = dt.datetime.now(dt.timezone.utc)
        rows = product_rows(args.rows, now)
        started = time.perf_counter()
        insert_products(state, rows)
        info("server setup (Core executemany + change log)", f"{time.perf_counter() - started:.1f} s")
        timed = TimedApp(app)
        # pull pages, as before bundles: bench/first_sync_bench.py measures first syncs by bundle
        client = Client(tmp / "device.db", WsgiTransport(timed), token=rep_token(), pull_limit=args.pull_limit,
                        bundles=False)
        timed.watch.seconds = 0.0

        # -- snapshot ----------------------------------------------------------------------------
        watch = Stopwatch()
        if args.profile:
            with watch.running():
                report, text = profile_top(client.sync, 25)
        else:
            with watch.running():
                report = client.sync()
        if not report.complete or local_count(client) != args.rows:
            raise RuntimeError(f"snapshot incomplete: {report}, {local_count(client)} rows on the device")
        table = device_product_table(state)
        wire = [state.store.to_wire_row(state.model.entity("product"), r) for r in rows]
        columns, stored = device_rows(table, wire)
        baseline = raw_executemany(tmp / "raw.db", table.create_statements(), table.table, columns, stored)
        figure("snapshot pull into the device", args.rows / watch.seconds, baseline, 0.50)
        info("  pages / time", f"{report.pages} pages, {watch.seconds:.1f} s: server {timed.watch.seconds:.1f} s, "
                               f"client {watch.seconds - timed.watch.seconds:.1f} s")
        if args.profile:
            print("\n   cProfile of client.sync() (snapshot), top 25 by cumulative time:")
            print("\n".join("   " + line for line in text.splitlines()))

        # -- stream (patches) --------------------------------------------------------------------
        later = now + dt.timedelta(seconds=1)
        updated = update_products(state, rows, lambda row, i: {"unit_price": row["unit_price"] + Decimal("1.00")},
                                  later)
        timed.watch.seconds = 0.0
        watch = Stopwatch()
        with watch.running():
            report = client.sync()
        probe = client.get("product", updated[-1]["id"])
        if not report.complete or probe is None or probe["version"] != 2:
            raise RuntimeError(f"stream incomplete: {report}, last row {probe}")
        wire_new = [state.store.to_wire_row(state.model.entity("product"), r) for r in updated]
        updates = [(w["unit_price"], w["version"], w["updated_at"], w["id"]) for w in wire_new]
        baseline = raw_update(tmp / "raw-update.db", table, stored, updates)
        figure("stream pull of patches into the device", args.rows / watch.seconds, baseline, 0.50)
        info("  pages / time", f"{report.pages} pages, {watch.seconds:.1f} s: server {timed.watch.seconds:.1f} s, "
                               f"client {watch.seconds - timed.watch.seconds:.1f} s")
        client.close()
        state.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
