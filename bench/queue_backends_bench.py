"""Push end to end through each queue backend: records/s and messages/s from the first push
to the last record applied by the server's listener threads, beside the raw sqlite3 baseline of
the same rows (DESIGN.md section 6).

Backends: the embedded SQLite queue; Amazon SQS through moto's server in this process (moto,
not SQS, sets that ceiling); ActiveMQ over STOMP on 127.0.0.1:61613 when it answers
(`bash ci/activemq.sh` starts it), else the line says it was not measured.

    .venv/bin/python bench/queue_backends_bench.py [--records 4000] [--batch 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import SYNC, header, raw_executemany, sqlite_ddl, sync_headers  # noqa: E402
from push_bench import baseline_rows, retailers_of, visit_mutations  # noqa: E402

from fieldsync.api import create_app  # noqa: E402
from fieldsync.auth import issue_token  # noqa: E402
from fieldsync.defs.values import format_datetime  # noqa: E402
from fieldsync.seed import load_seed  # noqa: E402
from fieldsync.store.sync_tables import RECEIVED  # noqa: E402

from harness import REP, ROOT, SECRET  # noqa: E402


def sqs_url() -> str:
    import logging
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # moto logs every request
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    token = uuid.uuid4().hex[:10]
    return (f"sqs+fifo://fsb-{token}.fifo?region=eu-west-1&endpoint_url=http://{host}:{port}&create=1"
            f"&dlq=fsb-{token}-dlq.fifo&s3_bucket=fsb-{token}")


def stomp_url() -> str | None:
    try:
        with socket.create_connection(("127.0.0.1", 61613), timeout=1):
            pass
    except OSError:
        return None
    return f"stomp://127.0.0.1:61613/fieldsync-bench-{uuid.uuid4().hex[:8]}"


def run(url: str, data_dir: Path, n: int, batch: int) -> dict:
    app = create_app({"DATA_DIR": str(data_dir), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 2, "QUEUE_URL": url,
                      "DEFS_DIR": str(ROOT / "entity_defs")})
    state = app.extensions["fieldsync"]
    load_seed(state.config, ROOT / "examples" / "seed")
    token = issue_token(SECRET, REP["user"], REP["role"], REP["attributes"], ttl=3600)
    client = app.test_client()
    device = client.post(f"{SYNC}/devices", headers=sync_headers(token),
                         json={"install_id": "bench", "schema_version": 1}).get_json()["device_id"]
    now = dt.datetime.now(dt.timezone.utc)
    mutations = visit_mutations(n, retailers_of(state), now)
    bodies = [{"device_id": device, "schema_version": 1, "sent_at": format_datetime(now),
               "mutations": mutations[i:i + batch]} for i in range(0, n, batch)]
    started = time.perf_counter()
    for body in bodies:
        answer = client.post(f"{SYNC}/push", headers=sync_headers(token), json=body)
        if answer.status_code != 202:
            raise RuntimeError(f"push refused: {answer.status_code} {answer.get_data(as_text=True)[:200]}")
    received = time.perf_counter() - started
    deadline = started + 600
    while True:   # done when every received seq is processed (fs_received is empty)
        with state.engine.connect() as conn:
            left = conn.execute(sa.select(sa.func.count()).select_from(RECEIVED)).scalar_one()
        if left == 0:
            break
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{left} mutations still unprocessed after 600 s")
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    with state.engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.count()).select_from(
            state.store.table(state.model.entity("visit")))).scalar_one()
    if stored != n:
        raise RuntimeError(f"{stored} visits stored, expected {n}")
    columns, rows = baseline_rows(state, mutations, now)
    ddl = sqlite_ddl(state.store.table(state.model.entity("visit")))
    state.sync.close()
    state.engine.dispose()
    return {"seconds": elapsed, "received": received, "messages": len(bodies), "columns": columns,
            "rows": rows, "ddl": ddl}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()
    header(f"queue backends: {args.records:,} visits pushed in batches of {args.batch}, "
           "applied by 2 listener threads")
    with tempfile.TemporaryDirectory(prefix="fieldsync-bench-") as tmp:
        tmp_path = Path(tmp)
        backends = [("embedded sqlite", f"sqlite:///{tmp_path / 'q' / 'queue.db'}")]
        try:
            backends.append(("sqs (moto server)", sqs_url()))
        except ImportError:
            print("   sqs (moto server): not measured (moto[server] is not installed)")
        stomp = stomp_url()
        if stomp is None:
            print("   activemq stomp: not measured (no broker on 127.0.0.1:61613; bash ci/activemq.sh)")
        else:
            backends.append(("activemq stomp", stomp))
        for i, (name, url) in enumerate(backends):
            result = run(url, tmp_path / f"server-{i}", args.records, args.batch)
            raw = raw_executemany(tmp_path / f"raw-{i}.db", result["ddl"], "visit", result["columns"], result["rows"])
            rate = args.records / result["seconds"]
            print(f"   {name:<18}: {rate:,.0f} records/s, {result['messages'] / result['seconds']:,.1f} messages/s "
                  f"end to end (received in {result['received']:.2f} s) | raw baseline {raw:,.0f} rows/s | "
                  f"ratio {rate / raw:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
