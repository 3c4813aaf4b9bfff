"""Push end to end over loopback HTTP until applied: an SDK device with 20,000 visit inserts in its
outbox syncs with a `fieldsync serve` process (2 listener threads, embedded queue), on SQLite and
on PostgreSQL, beside PouchDB 9 replicating 20,000 documents from a local PouchDB to a PouchDB
server (DESIGN.md section 6: >= 5x PouchDB, >= 10,000 records/s on this machine).

Figures printed, each in records/s:
- fieldsync, per database, per layout and per way of pushing. Layouts: `serve` (2 listener
  threads in `fieldsync serve`, the embedded defaults) and `worker` (`fieldsync serve` with none
  beside a `fieldsync worker` process with 2). Ways: `plain` (the SDK pushing batches of
  `--push-batch` mutations, outbox bundles off) and `bundle` (the SDK's defaults: an outbox of
  2,000 entries or more goes as one sealed outbox bundle over tus, protocol §4.7). The clock
  starts at `Client.sync()` and stops when the server's dedupe ledger holds a row for every
  mutation (every one applied; the bench fails if any was rejected), polled by a thread while
  `sync()` runs;
- of which every push was answered, and when `sync()` returned (after the pushes it pulls until
  caught up: the results of mutations applied by then come with it, later ones with the next
  sync);
- PouchDB: `PouchDB.replicate(local, remote)` of the same count of visit documents from a local
  PouchDB 9 (node, leveldb) to `pouchdb-server` 4.2.0, with its defaults and with `batch_size`
  1000; the ratio is taken against the faster;
- the raw baseline: sqlite3 `executemany` of the same visits into the server's visit table
  DDL in this process (bench/harness.py), and the ratio to it.

The device's outbox is filled directly in its store, one transaction, not timed (as
bench/outbox_bundle_bench.py does). PostgreSQL runs in a schema of its own in the database at
`--pg-url` (dropped after); without a server there the line says it was not measured. Without
node and npm the PouchDB side says skipped.

Run: `.venv/bin/python bench/push_e2e_bench.py [--records N] [--push-batch N] [--no-pouchdb] [--no-postgres]`.
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
import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from harness import REP, ROOT, SECRET, header, info, make_server, raw_executemany, rep_token, sqlite_ddl, \
    sqlite_value, wait_listening

from push_bench import retailers_of

from fieldsync.client import Client, HttpTransport
from fieldsync.client.schema import quote
from fieldsync.defs.values import format_datetime
from fieldsync.ids import new_id
from fieldsync.seed import PUNE_CENTRAL, load_seed
from fieldsync.store.sync_tables import LEDGER, RECEIVED

PURPOSES = ("order", "detailing", "collection", "survey")
PG_URL = os.environ.get("FIELDSYNC_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def visit_fields(i: int, retailers: list[tuple[str, str]], now: dt.datetime) -> dict:
    """The fields of visit `i` as the app writes them (entity_defs/transactions/visit.yaml)."""
    retailer_id, territory_id = retailers[i % len(retailers)]
    return {"retailer_id": retailer_id, "territory_id": territory_id,
            "visited_at": format_datetime(now - dt.timedelta(seconds=i)), "purpose": PURPOSES[i % 4],
            "notes": f"Discussed the monthly order and two new SKUs; visit {i}, follow up next week.",
            "location": {"lat": 18.5 + (i % 1000) / 10000, "lon": 73.8 + (i % 997) / 10000},
            "duration_minutes": 5 + i % 60}


def fill_outbox(client: Client, visits: list[tuple[str, dict]], now: dt.datetime) -> None:
    """The visits in the device's store as `Client.insert` leaves them (row + outbox entry)."""
    store = client._store
    table = store.table("visit")
    names = ["id", *visits[0][1], "_version", "_dirty"]
    rows = [[record_id, *(table.column(k).to_storage(v) for k, v in fields.items()), 0, 1]
            for record_id, fields in visits]
    stamp = format_datetime(now)
    entries = [("visit", "insert", record_id, None, json.dumps(fields, sort_keys=True), stamp)
               for record_id, fields in visits]
    with store.transaction() as conn:
        conn.executemany(f"INSERT INTO {quote(table.table)} ({', '.join(quote(c) for c in names)}) "
                         f"VALUES ({', '.join('?' for _ in names)})", rows)
        conn.executemany('INSERT INTO "_outbox" (entity, op, record_id, base_version, fields, client_time) '
                         "VALUES (?, ?, ?, ?, ?, ?)", entries)


def start_server(data_dir: Path, port: int, database_url: str | None, *, worker: bool = False) -> list[subprocess.Popen]:
    """`fieldsync serve` with 2 listener threads; with `worker`, `fieldsync serve` with none and a
    `fieldsync worker` process with 2 (docs/workers.md): apply then runs on the other core."""
    env = {**os.environ, "FIELDSYNC_SECRET_KEY": SECRET, "FIELDSYNC_SYNC_LISTENERS": "0" if worker else "2"}
    tool = str(Path(sys.executable).with_name("fieldsync"))
    where = ["--data-dir", str(data_dir), "--defs", str(ROOT / "entity_defs")]
    if database_url:
        where += ["--database-url", database_url]
        env["FIELDSYNC_KEYS_DIR"] = str(data_dir.parent.parent / "postgresql-keys")   # as _server_on
    process = subprocess.Popen([tool, "serve", *where, "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, cwd=ROOT)
    processes = [wait_listening(process, f"http://127.0.0.1:{port}/api/v1/sync/capabilities", "fieldsync serve")]
    if worker:
        processes.append(subprocess.Popen([tool, "worker", *where, "--threads", "2"], env=env,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT))
    return processes


def pg_schema_url(admin_url: str) -> tuple[str, sa.Engine, str] | None:
    """A schema of its own in the PostgreSQL database at `admin_url` (as the tests do), or None
    when no server answers."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    schema = f"push_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError:
        admin.dispose()
        return None
    return f"{admin_url}?options=-csearch_path%3D{schema}", admin, schema


def fieldsync_push(tmp: Path, n: int, *, database_url: str | None, mode: str, push_batch: int,
                   worker: bool = False) -> dict:
    """Seconds from `Client.sync()` until every visit is in the ledger, and until sync returned."""
    app, state = make_server(tmp / "server") if database_url is None else _server_on(tmp / "server", database_url)
    load_seed(state.config, ROOT / "examples" / "seed")
    visit = state.store.table(state.model.entity("visit"))
    retailers = retailers_of(state)
    ddl = sqlite_ddl(visit)
    state.sync.close()
    state.engine.dispose()
    port = free_port()
    processes = start_server(tmp / "server", port, database_url, worker=worker)
    engine = sa.create_engine(database_url) if database_url else \
        sa.create_engine(f"sqlite:///{tmp / 'server' / 'fieldsync.db'}")
    try:
        if worker:
            _wait_for_worker(engine, processes[1])
        options = {"bundle_over": None, "bundle_over_bytes": None, "push_batch": push_batch} if mode == "plain" else {}
        client = Client(tmp / "device.db", HttpTransport(f"http://127.0.0.1:{port}", timeout=(5, 300)), rep_token(),
                        schema=json.loads((ROOT / "generated" / "device" / "schema.json").read_text()), **options)
        client.sync()   # registered, seed pulled: the timed sync pushes
        device_id = client._store.state("device_id")
        now = dt.datetime.now(dt.timezone.utc)
        visits = [(new_id(now), visit_fields(i, retailers, now)) for i in range(n)]
        fill_outbox(client, visits, now)
        pushed_at: list[float] = []
        push_all = client._engine.push_all

        def timed_push_all(report):   # when the pushes end and the pulls begin
            push_all(report)
            pushed_at.append(time.perf_counter())
        client._engine.push_all = timed_push_all
        applied_at: list[float] = []
        stop = threading.Event()

        def watch_ledger():   # the listeners apply in the server process: done when the ledger holds all
            with engine.connect() as conn:
                while not stop.is_set():
                    done = conn.execute(sa.select(sa.func.count()).select_from(LEDGER)
                                        .where(LEDGER.c.device_id == device_id)).scalar_one()
                    conn.rollback()
                    if done >= n:
                        applied_at.append(time.perf_counter())
                        return
                    stop.wait(0.01)   # polling another process's database: nothing to wait on here
        watcher = threading.Thread(target=watch_ledger, name="ledger-watch", daemon=True)
        cpu_before = sum(_cpu_seconds(p.pid) for p in processes)
        started = time.perf_counter()
        watcher.start()
        report = client.sync()
        received = time.perf_counter() - started
        watcher.join(timeout=900)
        stop.set()
        if not applied_at:
            raise RuntimeError(f"not every one of {n} mutations was applied after 900 s")
        applied = applied_at[0] - started
        server_cpu = sum(_cpu_seconds(p.pid) for p in processes) - cpu_before
        with engine.connect() as conn:
            rejected = conn.execute(sa.select(sa.func.count()).select_from(LEDGER)
                                    .where(LEDGER.c.device_id == device_id, LEDGER.c.status != "applied")).scalar_one()
            left = conn.execute(sa.select(sa.func.count()).select_from(RECEIVED)).scalar_one()
            stored = conn.execute(sa.select(sa.func.count()).select_from(sa.table("visit"))).scalar_one()
        if rejected or left or stored < n or report.pushed != n:
            raise RuntimeError(f"{rejected} rejected, {left} unsettled, {stored} visits stored, "
                               f"{report.pushed} pushed of {n}")
        client.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        engine.dispose()
    rows = [tuple(sqlite_value(v) for v in _visit_row(record_id, fields, now)) for record_id, fields in visits]
    return {"received": received, "applied": applied, "pushed": pushed_at[0] - started, "server_cpu": server_cpu, "ddl": ddl, "columns": [c.name for c in visit.columns],
            "rows": rows}


def _wait_for_worker(engine: sa.Engine, worker: subprocess.Popen) -> None:
    """Until the worker process has its listeners up (its first heartbeat row): its start-up is
    not part of the timed push."""
    from fieldsync.workers.fleet import WORKERS
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"fieldsync worker exited with {worker.returncode}")
        try:
            with engine.connect() as conn:
                if conn.execute(sa.select(WORKERS.c.threads).where(WORKERS.c.pid == worker.pid)).first():
                    return
        except sa.exc.OperationalError:
            pass   # the table is made by the worker's start
        time.sleep(0.05)   # another process starting: nothing in this one to wait on
    raise RuntimeError("fieldsync worker did not start within 60 s")


def _cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_on(data_dir: Path, database_url: str):
    from fieldsync.api import create_app
    # one key directory for every run on this database: the second run finds the first run's
    # data keys in the schema, wrapped under that master key
    app = create_app({"DATA_DIR": str(data_dir), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                      "DATABASE_URL": database_url, "DEFS_DIR": str(ROOT / "entity_defs"),
                      "KEYS_DIR": str(data_dir.parent.parent / "postgresql-keys")})
    return app, app.extensions["fieldsync"]


def _visit_row(record_id: str, f: dict, now: dt.datetime) -> list:
    """A visit as a row of the server's visit table, columns in table order."""
    visited = dt.datetime.fromisoformat(f["visited_at"].replace("Z", "+00:00"))
    return [record_id, 1, now, now, False, REP["user"], f["retailer_id"], f["territory_id"], visited,
            f["purpose"], f["notes"], f["location"], f["duration_minutes"]]


# -- the PouchDB side --------------------------------------------------------------------------------

def pouchdb_pushes(tmp: Path, n: int, batch_sizes: list[int | None]) -> list[dict] | str:
    """PouchDB.replicate(local, remote) of `n` visit documents, once per batch setting; a
    sentence instead when node or npm is missing."""
    import peer_pouchdb_bench as peer
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return "skipped: node and npm are missing (Debian's nodejs and npm packages bring them)"
    peer.install(npm)
    tmp.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    retailers = [(str(uuid.UUID(int=i)), PUNE_CENTRAL) for i in range(1, 40)]
    docs = tmp / "visits.jsonl"
    with docs.open("w") as out:
        for i in range(n):
            out.write(json.dumps({"_id": new_id(now), "rep_id": REP["user"], **visit_fields(i, retailers, now)}) + "\n")
    results = []
    for i, batch_size in enumerate(batch_sizes):
        port = free_port()
        server = peer.start_pouchdb_server(node, tmp / f"pouchdb-server-{i}", port)
        try:
            result = peer.run_js(node, "push", f"http://127.0.0.1:{port}/visits", str(tmp / f"pouchdb-device-{i}"),
                                 str(docs), *([str(batch_size)] if batch_size else []))
        finally:
            server.terminate()
            server.wait(timeout=30)
        if result["docs_written"] != n or result["remote_doc_count"] != n:
            raise RuntimeError(f"PouchDB pushed {result['docs_written']} documents; the server holds "
                               f"{result['remote_doc_count']}, not {n}")
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--push-batch", type=int, default=1000, help="mutations per push of the plain mode")
    parser.add_argument("--modes", default="plain,bundle", help="plain, bundle or both (comma-separated)")
    parser.add_argument("--layouts", default="serve,worker",
                        help="serve (listeners in the server), worker (in a fieldsync worker process) or both")
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--no-postgres", dest="postgres", action="store_false")
    parser.add_argument("--no-pouchdb", dest="pouchdb", action="store_false")
    args = parser.parse_args(argv)
    n = args.records
    header(f"push end to end: {n:,} visits from an SDK outbox over loopback HTTP until applied "
           "(fieldsync serve, 2 listeners, embedded queue)")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    layouts = [m.strip() for m in args.layouts.split(",") if m.strip()]
    rates: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fieldsync-push-e2e-") as tmp:
        tmp = Path(tmp)
        databases: list[tuple[str, str | None]] = [("sqlite", None)]
        pg = pg_schema_url(args.pg_url) if args.postgres else None
        if pg is not None:
            databases.append(("postgresql", pg[0]))
        elif args.postgres:
            info("postgresql", f"not measured (no server at {args.pg_url})")
        baseline = None
        try:
            for db_name, url in databases:
                for layout in layouts:
                    for mode in modes:
                        run = fieldsync_push(tmp / f"{db_name}-{layout}-{mode}", n, database_url=url, mode=mode,
                                             push_batch=args.push_batch, worker=layout == "worker")
                        if baseline is None:
                            baseline = raw_executemany(tmp / "raw.db", run["ddl"], "visit", run["columns"], run["rows"])
                        rate = n / run["applied"]
                        if db_name == "sqlite":
                            rates.append(rate)
                        what = f"pushes of {args.push_batch}" if mode == "plain" else "SDK defaults: one outbox bundle"
                        where = ("2 listeners in fieldsync serve" if layout == "serve"
                                 else "fieldsync serve + a fieldsync worker process with 2 listeners")
                        info(f"fieldsync on {db_name}, {where}, {what}",
                             f"{rate:,.0f} records/s ({run['applied']:.2f} s until applied; every push answered at "
                             f"{run['pushed']:.2f} s, sync() returned at {run['received']:.2f} s; "
                             f"server CPU {run['server_cpu'] / n * 1e6:.0f} us per record) | raw baseline "
                             f"{baseline:,.0f} rows/s | ratio {rate / baseline:.1%}")
        finally:
            if pg is not None:
                with pg[1].connect() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{pg[2]}" CASCADE'))
                pg[1].dispose()
        if args.pouchdb:
            between = os.getloadavg()
            pouch = pouchdb_pushes(tmp / "pouchdb", n, [None, 1000])
            if isinstance(pouch, str):
                info("PouchDB", pouch)
            else:
                for result in pouch:
                    batch = (f"batch_size {result['batch_size']}" if result["batch_size"]
                             else "defaults: batch_size 100, batches_limit 10")
                    info(f"PouchDB 9 replicate local -> pouchdb-server ({batch})",
                         f"{n / result['seconds']:,.0f} docs/s ({result['seconds']:.2f} s)")
                best = min(r["seconds"] for r in pouch)
                fieldsync_sqlite = max(rates)
                verdict = "ok" if fieldsync_sqlite >= 5 * n / best and fieldsync_sqlite >= 10_000 else "below"
                info("fieldsync (SQLite, faster mode) / PouchDB (faster setting)",
                     f"{fieldsync_sqlite / (n / best):.1f}x (goal >= 5x and >= 10,000 records/s: {verdict})")
                info("load after the fieldsync side", ", ".join(f"{x:.1f}" for x in between))
                info("load after the PouchDB side", ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
