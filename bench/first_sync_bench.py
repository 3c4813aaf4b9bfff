"""A first sync of 100,000 products from a `fieldsync serve` process over loopback HTTP into fresh
device stores, against the raw insert rate into that store (DESIGN.md section 6: >= 50%).

Figures printed:
- first sync, cold: the first device of its scope; the server builds the snapshot bundle inside
  that first pull (compress, seal, sign), so the figure includes the build;
- first sync, warm: a second device of the same scope takes the bundle already built (what
  every rep of a territory after the first one gets);
- first sync by pull pages (`bundles=False`): the protocol before bundles, same server;
- raw baseline: sqlite3 `executemany` INSERT of the same rows into the device's product table
  (same DDL, WAL, one transaction), measured in this process;
- resume after a cut at 90% of the bundle's bytes: the bytes fetched again;
- sealing and opening overhead per MiB of rows (zstd level 3, AES-256-GCM), on this machine.

Run: `.venv/bin/python bench/first_sync_bench.py [--rows N]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from catalog import device_product_table, device_rows, insert_products, product_rows
from harness import (ROOT, SECRET, Stopwatch, figure, header, info, make_server, raw_executemany, rep_token,
                     wait_listening)

from fieldsync.client import Client, HttpTransport, TransportError
from fieldsync.transfer.chunks import Manifest, new_key, write_payload


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "FIELDSYNC_SECRET_KEY": SECRET, "FIELDSYNC_SYNC_LISTENERS": "1"}
    process = subprocess.Popen([str(Path(sys.executable).with_name("fieldsync")), "serve", "--data-dir", str(data_dir),
                                "--defs", str(ROOT / "entity_defs"), "--port", str(port)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    return wait_listening(process, f"http://127.0.0.1:{port}/api/v1/sync/capabilities", "fieldsync serve")


class CutAt:
    """A transport that drops the connection once `limit` bytes of bundle chunks have arrived:
    the chunk answer in flight is lost as a real cut loses it."""

    def __init__(self, inner, limit: int | None):
        self.inner, self.limit, self.received, self.lost = inner, limit, 0, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def request(self, method, path, *, headers, body):
        status, answer_headers, data = self.inner.request(method, path, headers=headers, body=body)
        if "Range" in headers:
            if self.limit is not None and self.received + len(data) > self.limit:
                self.lost += self.limit - self.received     # what arrived of it before the cut
                self.received = self.limit
                self.limit = None
                raise TransportError("connection dropped (bench)")
            self.received += len(data)
        return status, answer_headers, data


def sync_device(path: Path, url: str, **kwargs) -> tuple[float, object, Client]:
    client = Client(path, HttpTransport(url, timeout=(5, 300)), token=rep_token(), **kwargs)
    watch = Stopwatch()
    with watch.running():
        report = client.sync()
    return watch.seconds, report, client


def sealing_overhead(rows: list) -> tuple[float, float, float]:
    """MiB/s of sealing (zstd + AES-GCM) and opening 8 MiB of frames like a bundle's, and the
    compression ratio."""
    frames, size = [], 0
    for start in range(0, len(rows), 2000):
        frame = json.dumps({"entity": "product", "rows": rows[start:start + 2000]}, default=str).encode()
        frames.append(frame)
        size += len(frame)
        if size > 8 * 1024 * 1024:
            break
    key, out = new_key(), io.BytesIO()
    started = time.perf_counter()
    manifest = write_payload(out, [(f, 1, "product") for f in frames], key=key, bundle_id="b", kind="snapshot")
    seal = time.perf_counter() - started
    data, at = out.getvalue(), 0
    opener = Manifest.from_dict(manifest.to_dict()).opener(key)
    started = time.perf_counter()
    for i, chunk in enumerate(manifest.chunks):
        manifest.open_chunk(opener, i, data[at:at + chunk.size])
        at += chunk.size
    opened = time.perf_counter() - started
    mib = size / 2 ** 20
    return mib / seal, mib / opened, size / len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    header(f"first sync: {args.rows:,} products from `fieldsync serve` over loopback HTTP")
    with tempfile.TemporaryDirectory(prefix="fieldsync-first-sync-") as tmp:
        tmp = Path(tmp)
        app, state = make_server(tmp / "server")
        now = dt.datetime.now(dt.timezone.utc)
        rows = product_rows(args.rows, now)
        insert_products(state, rows)
        table = device_product_table(state)
        wire = [state.store.to_wire_row(state.model.entity("product"), r) for r in rows]
        columns, stored = device_rows(table, wire)
        state.sync.stop()
        state.engine.dispose()
        port = free_port()
        server = start_server(tmp / "server", port)
        url = f"http://127.0.0.1:{port}"
        try:
            cold, report, client = sync_device(tmp / "cold.db", url)
            assert report.bundles == 1 and len(client.query("product")) == args.rows, report
            size = report.bundle_bytes
            client.close()
            warm, report, client = sync_device(tmp / "warm.db", url)
            assert report.bundles == 1 and len(client.query("product")) == args.rows, report
            client.close()
            paged, report, client = sync_device(tmp / "paged.db", url, bundles=False)
            assert report.bundles == 0 and len(client.query("product")) == args.rows, report
            client.close()
            baseline = raw_executemany(tmp / "raw.db", table.create_statements(), table.table, columns, stored)
            figure("first sync, warm bundle (2nd device of a scope)", args.rows / warm, baseline, 0.50)
            figure("first sync, cold bundle (built in the pull)", args.rows / cold, baseline, 0.50)
            figure("first sync by pull pages (no bundles)", args.rows / paged, baseline, 0.50)
            info("  seconds", f"warm {warm:.2f} s, cold {cold:.2f} s, pages {paged:.2f} s; "
                              f"bundle {size / 2 ** 20:.1f} MiB; raw insert {args.rows / baseline:.2f} s")

            # -- a cut at 90% of the bundle's bytes, then the next sync --------------------------
            transport = CutAt(HttpTransport(url, timeout=(5, 300)), int(size * 0.9))
            client = Client(tmp / "cut.db", transport, token=rep_token())
            try:
                client.sync()
                raise RuntimeError("the cut did not happen")
            except TransportError:
                pass
            report = client.sync()
            assert report.bundles == 1 and len(client.query("product")) == args.rows, report
            resent = transport.received - size   # every chunk byte that arrived, the lost part included
            info("resume after a cut at 90%", f"{transport.lost:,} bytes of the chunk in flight lost and "
                                              f"{resent:,} bytes fetched again (largest chunk "
                                              f"{max(c['size'] for c in json.loads(_manifest(tmp))['chunks']):,} bytes)")
            client.close()
        finally:
            server.terminate()
            server.wait(timeout=30)
        seal, opened, ratio = sealing_overhead([list(r) for r in stored])
        info("sealing (zstd 3 + AES-256-GCM)", f"{seal:.0f} MiB/s sealed, {opened:.0f} MiB/s opened, "
                                               f"compression {ratio:.1f}x")
    return 0


def _manifest(tmp: Path) -> str:
    import sqlite3
    conn = sqlite3.connect(tmp / "server" / "fieldsync.db")
    try:
        return conn.execute("SELECT manifest FROM fs_bundles ORDER BY created_at LIMIT 1").fetchone()[0]
    finally:
        conn.close()


if __name__ == "__main__":
    sys.exit(main())
