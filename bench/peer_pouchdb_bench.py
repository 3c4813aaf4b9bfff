"""A first sync of 100,000 products over loopback HTTP into a fresh device, fieldsync against
PouchDB replicating the same documents from a PouchDB server, in one run on one machine.

Figures printed:
- PouchDB: a fresh PouchDB 9 (node, leveldb adapter) runs `PouchDB.replicate(remote, local)`
  from `pouchdb-server` (its leveldb store) until complete, with PouchDB's default batch settings
  (batch_size 100, batches_limit 10) and again with batch_size 1000 (`--batch-size`), its documented
  option for larger batches; the ratios are taken against the faster of the two;
  the clock covers the replicate call only (node's start and opening the empty store are not in it);
- fieldsync: the first sync of a device from a `fieldsync serve` process, cold (the first device of
  its scope: the server builds the snapshot bundle inside that pull) and warm (a second device of
  the same scope takes the bundle already built), measured as bench/first_sync_bench.py does;
- the ratios: PouchDB seconds / fieldsync seconds.

Both sides get the same rows (bench/catalog.py's products: the same generator, ids and values) as
10-field documents, and each server runs alone while its side is measured. Filling the PouchDB
server (`bulkDocs` of 1,000 documents a request) is not timed, nor is filling fieldsync's.

PouchDB and pouchdb-server are npm packages at pinned versions, installed once into .cache/node-bench/
(ignored by git) with `npm install --ignore-scripts`: leveldown loads the prebuilt binary its
package ships, and no install step downloads anything. Without node or npm the bench prints
"skipped: ..." and exits 0.

Run: `.venv/bin/python bench/peer_pouchdb_bench.py [--rows N] [--batch-size N]`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from catalog import insert_products, product_rows
from first_sync_bench import free_port, start_server, sync_device
from harness import ROOT, header, info, make_server, wait_listening

PINS = {"pouchdb": "9.0.0", "pouchdb-server": "4.2.0"}
PREFIX = ROOT / ".cache" / "node-bench"
PEER_JS = ROOT / "bench" / "peer" / "pouchdb_peer.js"
FILL_BATCH = 1000


# -- the npm packages --------------------------------------------------------------------------------

def installed_version(package: str) -> str | None:
    try:
        return json.loads((PREFIX / "node_modules" / package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def install(npm: str) -> None:
    """The pinned packages in PREFIX; nothing to do when they are there."""
    if all(installed_version(p) == v for p, v in PINS.items()):
        return
    PREFIX.mkdir(parents=True, exist_ok=True)
    print(f"   installing {', '.join(f'{p}@{v}' for p, v in PINS.items())} into {PREFIX.relative_to(ROOT)}",
          flush=True)
    # --ignore-scripts: leveldown's prebuilt binary ships in its package; sqlite3's install step
    # (pouchdb-server's unused --sqlite option) would download one from outside the registry.
    done = subprocess.run([npm, "install", "--ignore-scripts", "--save-exact", "--no-audit", "--no-fund",
                           "--prefix", str(PREFIX), *(f"{p}@{v}" for p, v in PINS.items())],
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"npm install failed ({done.returncode}): {done.stderr.strip()[-3000:]}")


# -- the PouchDB side --------------------------------------------------------------------------------

def product_docs(rows: list[dict]) -> list[dict]:
    """catalog.py's product rows as PouchDB documents: the same id and the 10 fields."""
    return [{"_id": r["id"], "sku": r["sku"], "name": r["name"], "description": r["description"],
             "category": r["category"], "unit_price": float(r["unit_price"]), "pack_size": r["pack_size"],
             "active": r["active"], "image": r["image"], "created_at": r["created_at"].isoformat(),
             "updated_at": r["updated_at"].isoformat()} for r in rows]


def run_js(node: str, *args: str, timeout: float = 1800) -> dict:
    done = subprocess.run([node, str(PEER_JS), str(PREFIX), *args], capture_output=True, text=True, timeout=timeout)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not events or "error" in events[-1]:
        raise RuntimeError(f"node {args[0]} failed ({done.returncode}): {events[-1:] or done.stderr[-3000:]}")
    return events[-1]


def start_pouchdb_server(node: str, workdir: Path, port: int) -> subprocess.Popen:
    """pouchdb-server on 127.0.0.1:`port` with its leveldb files, config and log in `workdir`."""
    workdir.mkdir(parents=True)
    binary = PREFIX / "node_modules" / "pouchdb-server" / "bin" / "pouchdb-server"
    process = subprocess.Popen([node, str(binary), "--host", "127.0.0.1", "--port", str(port), "--dir",
                                str(workdir / "db"), "--config", str(workdir / "config.json"), "--no-stdout-logs"],
                               cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return wait_listening(process, f"http://127.0.0.1:{port}/", "pouchdb-server")


def pouchdb_first_syncs(node: str, tmp: Path, rows: list[dict], batch_sizes: list[int | None]) -> list[dict]:
    """Fill a pouchdb-server with the rows, then time one fresh replication per batch setting."""
    tmp.mkdir(parents=True, exist_ok=True)
    docs = tmp / "docs.jsonl"
    with docs.open("w") as out:
        for doc in product_docs(rows):
            out.write(json.dumps(doc) + "\n")
    port = free_port()
    server = start_pouchdb_server(node, tmp / "pouchdb-server", port)
    url = f"http://127.0.0.1:{port}/products"
    try:
        filled = run_js(node, "fill", url, str(docs), str(FILL_BATCH))
        if filled["doc_count"] != len(rows):
            raise RuntimeError(f"the PouchDB server holds {filled['doc_count']} documents, not {len(rows)}")
        results = []
        for i, batch_size in enumerate(batch_sizes):
            result = run_js(node, "replicate", url, str(tmp / f"pouchdb-device-{i}"),
                            *([str(batch_size)] if batch_size else []))
            if result["doc_count"] != len(rows) or result["docs_written"] != len(rows):
                raise RuntimeError(f"PouchDB replicated {result['docs_written']} documents and holds "
                                   f"{result['doc_count']}, not {len(rows)}")
            results.append(result)
        return results
    finally:
        server.terminate()
        server.wait(timeout=30)


# -- the fieldsync side ------------------------------------------------------------------------------

def fieldsync_first_syncs(tmp: Path, rows: list[dict]) -> tuple[float, float]:
    """Seconds of a cold and a warm first sync from `fieldsync serve`, as first_sync_bench.py."""
    app, state = make_server(tmp / "server")
    insert_products(state, rows)
    state.sync.stop()
    state.engine.dispose()
    port = free_port()
    server = start_server(tmp / "server", port)
    url = f"http://127.0.0.1:{port}"
    try:
        seconds = []
        for name in ("cold", "warm"):
            elapsed, report, client = sync_device(tmp / f"{name}.db", url)
            count = len(client.query("product"))
            client.close()
            if report.bundles != 1 or count != len(rows):
                raise RuntimeError(f"{name} first sync: {report.bundles} bundles, {count} products of {len(rows)}")
            seconds.append(elapsed)
        return seconds[0], seconds[1]
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="also replicate with this PouchDB batch_size (its default is 100); 0: defaults only")
    args = parser.parse_args(argv)
    header(f"peers: first sync of {args.rows:,} products over loopback HTTP, fieldsync vs PouchDB")
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        print("   skipped: node and npm are missing (Debian's nodejs and npm packages bring them)")
        return 0
    install(npm)
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    info("peer", f"PouchDB {installed_version('pouchdb')} (node {node_version}, leveldb adapter) replicating "
                 f"from pouchdb-server {installed_version('pouchdb-server')} (leveldb)")
    with tempfile.TemporaryDirectory(prefix="fieldsync-peer-") as tmp:
        tmp = Path(tmp)
        rows = product_rows(args.rows, dt.datetime.now(dt.timezone.utc))
        cold, warm = fieldsync_first_syncs(tmp / "fieldsync", rows)
        between = os.getloadavg()   # the sides run one after the other: each one's load is printed
        settings = [None] + ([args.batch_size] if args.batch_size else [])
        pouch = pouchdb_first_syncs(node, tmp / "pouchdb", rows, settings)
    for result in pouch:
        batch = (f"batch_size {result['batch_size']}, batches_limit 10" if result["batch_size"]
                 else "defaults: batch_size 100, batches_limit 10")
        info(f"PouchDB replicate ({batch})", f"{result['seconds']:.2f} s, {args.rows / result['seconds']:,.0f} docs/s")
    info("fieldsync first sync, cold bundle (built in the pull)", f"{cold:.2f} s, {args.rows / cold:,.0f} rows/s")
    info("fieldsync first sync, warm bundle (2nd device of a scope)", f"{warm:.2f} s, {args.rows / warm:,.0f} rows/s")
    best = min(r["seconds"] for r in pouch)
    info("fieldsync first sync is", f"{best / cold:.1f}x faster than PouchDB replication cold, "
                                    f"{best / warm:.1f}x warm (goal >= 15x; fastest PouchDB figure above)")
    info("load after the fieldsync side", ", ".join(f"{x:.1f}" for x in between))
    info("load after the PouchDB side", ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
