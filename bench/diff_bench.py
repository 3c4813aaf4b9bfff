"""Differential payload: after 1% of 100,000 rows changed (one or two fields each), the pull pages
that bring a synced device up to date, against the full snapshot (DESIGN.md section 6: <= 1.5%).

Bytes are the pull response bodies as the server sent them (the SDK asks `Accept-Encoding:
zstd, gzip`; the server compresses bodies over 1 KiB). The gzip figures recompress each page's
JSON exactly as the server does when a client accepts only gzip (level 6); the identity figures
are the JSON itself. Push and ack requests are not counted (the device has nothing to push).

Run: `.venv/bin/python bench/diff_bench.py [--rows N] [--changed-share F]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import random
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from catalog import insert_products, product_rows, update_products
from harness import header, info, make_server, rep_token

from fieldsync.client import Client, WsgiTransport
from fieldsync.client.transport import decode_body


class MeteredTransport(WsgiTransport):
    """A WsgiTransport that records the size of every pull answer: as sent, as JSON, as gzip."""

    def __init__(self, app):
        super().__init__(app)
        self.pages: list[dict[str, int | str]] = []

    def _exchange(self, method, path, headers, body):
        status, answer_headers, data = super()._exchange(method, path, headers, body)
        if path.endswith("/sync/pull") and status == 200:
            coding = answer_headers.get("content-encoding", "identity")
            plain = decode_body(data, coding)
            as_gzip = gzip.compress(plain, compresslevel=6, mtime=0) if len(plain) > 1024 else plain
            self.pages.append({"sent": len(data), "coding": coding, "json": len(plain), "gzip": len(as_gzip)})
        return status, answer_headers, data

    def take(self) -> dict[str, int | str]:
        """Totals of the pages recorded since the last call."""
        pages, self.pages = self.pages, []
        codings = sorted({str(p["coding"]) for p in pages})
        return {"pages": len(pages), "sent": sum(int(p["sent"]) for p in pages),
                "json": sum(int(p["json"]) for p in pages), "gzip": sum(int(p["gzip"]) for p in pages),
                "codings": "+".join(codings)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--changed-share", type=float, default=0.01)
    args = parser.parse_args(argv)
    changed = int(args.rows * args.changed_share)
    header(f"differential payload: {changed:,} of {args.rows:,} product rows changed")
    with tempfile.TemporaryDirectory(prefix="fieldsync-diff-bench-") as tmp:
        tmp = Path(tmp)
        app, state = make_server(tmp / "server")
        now = dt.datetime.now(dt.timezone.utc)
        rows = product_rows(args.rows, now)
        insert_products(state, rows)
        transport = MeteredTransport(app)
        # the full snapshot as pull pages: the payload the differential one is compared with
        # (a bundle, bench/first_sync_bench.py, is smaller still)
        client = Client(tmp / "device.db", transport, token=rep_token(), bundles=False)
        started = time.perf_counter()
        report = client.sync()
        if not report.complete:
            raise RuntimeError(f"snapshot incomplete: {report}")
        full = transport.take()
        info("full snapshot", f"{full['pages']} pages, {full['json']:,} B JSON -> {full['sent']:,} B sent "
                              f"({full['codings']}), {full['gzip']:,} B gzip ({time.perf_counter() - started:.0f} s)")

        # one or two fields of `changed` rows spread over the table
        picked = sorted(random.Random(5).sample(range(args.rows), changed))
        targets = [rows[i] for i in picked]

        def change(row, i):
            new = {"unit_price": row["unit_price"] + Decimal("0.50")}
            if i % 2:
                new["name"] = row["name"] + " (new pack)"
            return new

        updated = update_products(state, targets, change, now + dt.timedelta(seconds=1))
        report = client.sync()
        probe = client.get("product", updated[-1]["id"])
        if not report.complete or probe is None or probe["version"] != 2 or report.pulled != changed:
            raise RuntimeError(f"the device did not catch up: {report}, last changed row {probe}")
        diff = transport.take()
        info("differential pull", f"{diff['pages']} pages, {report.pulled:,} changes, {diff['json']:,} B JSON -> "
                                  f"{diff['sent']:,} B sent ({diff['codings']}), {diff['gzip']:,} B gzip")
        share = diff["sent"] / full["sent"]
        verdict = "ok" if share <= 0.015 else "OVER BUDGET"
        print(f"   differential / full snapshot, as sent: {share:.2%} (budget <= 1.5%) {verdict}")
        print(f"   differential / full snapshot, gzip: {diff['gzip'] / full['gzip']:.2%}; "
              f"uncompressed JSON: {diff['json'] / full['json']:.2%}")
        client.close()
        state.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
