"""A long-offline outbox: 50,000 visit inserts pushed as one outbox bundle (sealed, uploaded over
tus, committed; docs/protocol.md §4.6) against the same count pushed as plain 1,000-mutation
pushes, by two devices of the same process against one server over loopback HTTP.

Figures printed: wall time of `Client.sync()` until every entry is `received` (the server made
it durable in its queue; the listeners are off, so applying is not timed on either side), for
each path in each round (the paths alternate which goes first), the best of each and their
ratio; and the request body bytes each path put on the wire (pushes are zstd-compressed by the
transport; the bundle is compressed and sealed already).

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


class CountingHttp(HttpTransport):
    """HTTP that adds up the request body bytes it puts on the wire (after compression)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = 0
        self.requests = 0

    def _exchange(self, method, path, headers, body):
        self.sent += len(body or b"")
        self.requests += 1
        return super()._exchange(method, path, headers, body)


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
    parser.add_argument("--rounds", type=int, default=2, help="runs of each path; the best of each is compared")
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
            figures: dict[str, tuple[float, int, int]] = {}
            paths = (("plain pushes", {"bundle_over": None, "bundle_over_bytes": None, "push_batch": 1000}),
                     ("one bundle", {}))
            for round_ in range(args.rounds):
                # alternate which goes first: a neighbour's load spike then hurts both alike
                for name, options in (paths if round_ % 2 == 0 else paths[::-1]):
                    user = f"{REP['user']}-{name.split()[-1]}-{round_}"
                    token = issue_token(SECRET, user, REP["role"], REP["attributes"], ttl=3600)
                    transport = CountingHttp(base)
                    client = Client(folder / f"{user}.db", transport, token, schema=schema, **options)
                    client.sync()   # registered, seed pulled: the timed sync only pushes
                    fill_outbox(client, n)
                    transport.sent = transport.requests = 0
                    seconds = timed_push(client, n)
                    client.close()
                    info(f"{name} (round {round_ + 1})",
                         f"{seconds:.2f} s until all {n:,} received ({n / seconds:,.0f} mutations/s), "
                         f"{transport.sent / 2**20:.1f} MiB of request bodies on the wire "
                         f"in {transport.requests} requests")
                    if name not in figures or seconds < figures[name][0]:
                        figures[name] = (seconds, transport.sent, transport.requests)
            plain, bundle = figures["plain pushes"][0], figures["one bundle"][0]
            info("best of each", f"plain pushes {plain:.2f} s, one bundle {bundle:.2f} s")
            info("ratio", f"the bundle takes {bundle / plain:.2f}x the time of plain pushes "
                          f"({plain / bundle:.2f}x as fast); its request bodies are "
                          f"{figures['one bundle'][1] / figures['plain pushes'][1]:.1%} of theirs")
        finally:
            server.close()
            thread.join(10)
            state.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
