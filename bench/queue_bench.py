"""Embedded queue throughput: claim + ack in batches of 10 (DESIGN.md §6: >= 50k messages/s).

    python bench/queue_bench.py [--messages 100000] [--batch 10] [--body-bytes 256]

Fills a fresh SqliteQueue, then times `receive(batch)` + `ack(receipts)` until it is drained.
The baseline, measured in the same run and directory, is raw sqlite3 doing the least a durable
queue must: insert the same rows and delete them again, `batch` rows per transaction, with the
same journal (WAL) and the same `synchronous` setting the queue uses for claims and acks.
Each rate is printed in wall-clock time (the budget's) and in CPU time of this process
(`time.process_time`), which other work on a shared machine moves much less.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

from fieldsync.queue.embedded import SqliteQueue

BUDGET = 50_000  # messages/s


def queue_rate(directory: Path, bodies: list[bytes], batch: int) -> tuple[float, float, float]:
    """(send rate in batches of 1000, claim+ack rate in batches of `batch`, the same per CPU
    second), messages/s."""
    queue = SqliteQueue(directory / "queue.db")
    try:
        started = time.perf_counter()
        for start in range(0, len(bodies), 1000):
            queue.send_batch([(body, None) for body in bodies[start:start + 1000]])
        send_rate = len(bodies) / (time.perf_counter() - started)
        done = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        while True:
            messages = queue.receive(batch, visibility_timeout=60.0)
            if not messages:
                break
            queue.ack([message.receipt for message in messages])
            done += len(messages)
        claim_rate = done / (time.perf_counter() - started)
        claim_cpu_rate = done / (time.process_time() - cpu_started)
        if done != len(bodies) or queue.pending() != 0:
            raise SystemExit(f"the queue delivered {done} of {len(bodies)} messages")
        return send_rate, claim_rate, claim_cpu_rate
    finally:
        queue.close()


def raw_rate(directory: Path, bodies: list[bytes], batch: int) -> tuple[float, float]:
    """Raw sqlite3 insert + delete of the same rows, `batch` per transaction; rows/s in wall-clock
    and in CPU time."""
    conn = sqlite3.connect(directory / "raw.db", isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE raw (seq INTEGER PRIMARY KEY, id TEXT, grp TEXT, body BLOB, "
                     "enqueued_at REAL)")
        now = time.time()
        rows = [(seq, uuid.uuid4().hex, None, body, now) for seq, body in enumerate(bodies, 1)]
        started, cpu_started = time.perf_counter(), time.process_time()
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch]
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO raw VALUES (?, ?, ?, ?, ?)", chunk)
            conn.execute("COMMIT")
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("DELETE FROM raw WHERE seq = ?", [(row[0],) for row in chunk])
            conn.execute("COMMIT")
        return (len(rows) / (time.perf_counter() - started),
                len(rows) / (time.process_time() - cpu_started))
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--body-bytes", type=int, default=256)
    args = parser.parse_args(argv)
    bodies = [bytes([i % 251]) * args.body_bytes for i in range(args.messages)]
    with tempfile.TemporaryDirectory(prefix="fieldsync-queue-bench-") as tmp:
        directory = Path(tmp)
        raw, raw_cpu = raw_rate(directory, bodies, args.batch)
        send, claim, claim_cpu = queue_rate(directory, bodies, args.batch)
    verdict = "ok" if claim >= BUDGET else "BELOW BUDGET"
    print(f"messages: {args.messages}, body {args.body_bytes} bytes, batches of {args.batch}")
    print(f"send (batches of 1000, synchronous=FULL): {send:,.0f} messages/s")
    print(f"claim+ack: {claim:,.0f} messages/s (budget >= {BUDGET:,}: {verdict})")
    print(f"raw sqlite3 insert+delete of the same rows: {raw:,.0f} rows/s")
    print(f"ratio claim+ack / raw: {claim / raw:.2f}")
    print(f"per CPU second: claim+ack {claim_cpu:,.0f} messages, raw {raw_cpu:,.0f} rows, "
          f"ratio {claim_cpu / raw_cpu:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
