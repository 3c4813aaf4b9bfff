"""Concurrent appenders give one valid chain, on SQLite and on PostgreSQL (the head row's lock)."""

from __future__ import annotations

import threading

import sqlalchemy as sa

from audit_support import sample_event
from fieldsync.audit.chain import ENTRIES
from fieldsync.store.engine import write_transaction

THREADS = 6
APPENDS = 15


def test_concurrent_appenders_make_one_chain(make_log):
    log = make_log(checkpoint_every=7)
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    seqs: list[int] = []
    lock = threading.Lock()

    def appender(t: int) -> None:
        try:
            start.wait()
            for i in range(APPENDS):
                if i % 3 == 0:   # some inside a caller's transaction, some in batches of two
                    with write_transaction(log.engine) as conn:
                        got = log.append_all(conn, [sample_event(t * 100 + i), sample_event(t * 100 + i + 50)])
                else:
                    got = [log.record(sample_event(t * 100 + i))]
                with lock:
                    seqs.extend(got)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    total = THREADS * (APPENDS + APPENDS // 3)
    assert sorted(seqs) == list(range(1, total + 1))        # no seq handed out twice, none skipped
    with log.engine.connect() as conn:
        rows = list(conn.execute(sa.select(ENTRIES.c.seq, ENTRIES.c.prev_hash, ENTRIES.c.entry_hash)
                                 .order_by(ENTRIES.c.seq)))
        assert len(log.checkpoints(conn)) == total // 7
    assert len({r.prev_hash for r in rows}) == total        # no fork: every hash is followed once
    report = log.verify()
    assert report.ok, report.problems
    assert report.entries == total and report.checkpoints_verified == total // 7
