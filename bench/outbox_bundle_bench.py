"""A long-offline outbox: 50,000 visit inserts pushed as one outbox bundle (sealed, uploaded over
tus, committed; docs/protocol.md §4.6) against the same count pushed as plain 1,000-mutation
pushes, by two devices of the same process against one server over loopback HTTP.

Figures printed: wall time of `Client.sync()` until every entry is `received` (the server made
it durable in its queue; the listeners are off, so applying is not timed on either side), for
each path, and their ratio; the bundle's sealed size against the JSON the pushes sent.

The outboxes are filled directly in the device stores (one transaction; not timed): 50,000
SDK writes would take a minute of fsyncs and measure nothing about pushing.

Run: `.venv/bin/python bench/outbox_bundle_bench.py [--mutations N]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from harness import REP, ROOT, SECRET, header, info, make_server

from fieldsync.api.body_limit import make_http_server
from fieldsync.auth import issue_token
from fieldsync.client import Client, HttpTransport
from fieldsync.client.schema import quote
from fieldsync.defs.values import format_datetime
from fieldsync.ids import new_id
from fieldsync.seed import PUNE_CENTRAL, load_seed

SAI = "2fd6ae15-929b-509f-9c04-01a819382ca2"   # a seed retailer of PUNE_CENTRAL
PURPOSES = ("order", "detailing", "collection", "survey")


class Counting:
    """A transport that adds up the request bytes it sends."""

    def __init__(self, inner):
        self.inner = inner
        self.sent = 0
        self.requests = 0

    def request(self, method, path, *, headers, body):
        self.sent += len(body or b"")
        self.requests += 1
        return self.inner.request(method, path, headers=headers, body=body)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def fill_outbox(client: Client, n: int) -> None:
    """`n` visit inserts in the device's store, as `Client.insert` leaves them (row + entry)."""
    store = client._store
    table = store.table("visit")
    now = dt.datetime.now(dt.timezone.utc)
    rows, entries = [], []
    for i in range(n):
        fields = {"retailer_id": SAI, "territory_id": PUNE_CENTRAL, "visited_at": format_datetime(now),
                  "purpose": PURPOSES[i % 4], "notes": f"visit {i}: shelf checked, order taken"}
        record_id = new_id(now)
        rows.append([record_id, *(table.column(k).to_storage(v) for k, v in fields.items()), 0, 1])
        entries.append(("visit", "insert", record_id, None, json.dumps(fields, sort_keys=True), format_datetime(now)))
    names = ["id", *fields, "_version", "_dirty"]
    with store.transaction() as conn:
        conn.executemany(f"INSERT INTO {quote(table.table)} ({', '.join(quote(c) for c in names)}) "
                         f"VALUES ({', '.join('?' for _ in names)})", rows)
        conn.executemany('INSERT INTO "_outbox" (entity, op, record_id, base_version, fields, client_time) '
                         "VALUES (?, ?, ?, ?, ?, ?)", entries)


def timed_push(client: Client, n: int) -> float:
    started = time.perf_counter()
    report = client.sync()
    seconds = time.perf_counter() - started
    status = client.status()
    if report.pushed != n or status.received != n or status.pending or status.sent:
        raise SystemExit(f"not every entry was received: {report} {status}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutations", type=int, default=50_000)
    args = parser.parse_args(argv)
    n = args.mutations
    header(f"outbox of {n:,} mutations: one bundle vs 1,000-mutation pushes (loopback HTTP)")
    schema = json.loads((ROOT / "generated" / "device" / "schema.json").read_text())
    with tempfile.TemporaryDirectory(prefix="fieldsync-outbox-bench-") as tmp:
        folder = Path(tmp)
        app, state = make_server(folder / "server")
        state.config["PUSH_BUNDLE_MAX_MUTATIONS"] = max(n, int(state.config["PUSH_BUNDLE_MAX_MUTATIONS"]))
        load_seed(state.config, ROOT / "examples" / "seed")
        server = make_http_server(app, "127.0.0.1", 0, int(state.config["MAX_BODY_BYTES"]),
                                  transfer_limit=int(state.config["TRANSFER_MAX_BYTES"]), threads=4)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.effective_port}"
        try:
            figures = {}
            for name, options in (("plain pushes", {"bundle_over": None, "bundle_over_bytes": None,
                                                    "push_batch": 1000}),
                                  ("one bundle", {})):
                token = issue_token(SECRET, f"{REP['user']}-{name.split()[-1]}", REP["role"], REP["attributes"],
                                    ttl=3600)
                transport = Counting(HttpTransport(base))
                client = Client(folder / f"{name.replace(' ', '-')}.db", transport, token, schema=schema, **options)
                client.sync()   # registered, seed pulled: the timed sync only pushes
                fill_outbox(client, n)
                transport.sent = transport.requests = 0
                seconds = timed_push(client, n)
                figures[name] = (seconds, transport.sent, transport.requests)
                info(name, f"{seconds:.2f} s until all {n:,} received ({n / seconds:,.0f} mutations/s), "
                           f"{transport.sent / 2**20:.1f} MiB of request bodies (before transport compression) in {transport.requests} requests")
                client.close()
            plain, bundle = figures["plain pushes"][0], figures["one bundle"][0]
            info("ratio", f"the bundle takes {bundle / plain:.2f}x the time of plain pushes "
                          f"({plain / bundle:.2f}x as fast); its request bodies are {figures['one bundle'][1] / figures['plain pushes'][1]:.1%} "
                          f"of theirs")
        finally:
            server.close()
            thread.join(10)
            state.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
