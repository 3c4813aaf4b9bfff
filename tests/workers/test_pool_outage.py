"""The listener pool during a dependency outage (workers/pool.py): a batch whose handler failed
on an outage is released, the thread gives back the rest of its claim and claims nothing until
its probe says the dependency is back; a batch's own failure is retried as before, without a
probe. Pauses are shortened here; the real ones are 1 s doubling to 15 s."""

from __future__ import annotations

import sqlite3
import threading

import pytest
import sqlalchemy as sa

import fieldsync.workers.pool as pool_module
from fieldsync.backoff import Backoff
from fieldsync.queue.embedded import SqliteQueue
from fieldsync.workers.pool import ListenerPool


@pytest.fixture(autouse=True)
def short_pauses(monkeypatch):
    monkeypatch.setattr(pool_module, "_OUTAGE_PAUSE", Backoff(base=0.01, cap=0.05))
    monkeypatch.setattr(pool_module, "retry_delay", lambda receive_count: 0.0)


def _outage() -> sa.exc.OperationalError:
    return sa.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))


def test_an_outage_pauses_the_pool_until_its_probe_answers(tmp_path):
    queue = SqliteQueue(tmp_path / "queue.db")
    for n in range(5):
        queue.send(f"batch {n}".encode(), group=f"device-{n}")
    down = threading.Event()
    down.set()
    calls, probes, applied = [], [], []
    lock = threading.Lock()

    def handler(message):
        with lock:
            calls.append(message.body)
            if down.is_set():
                raise _outage()
            applied.append(message.body)

    def probe():
        probes.append(1)
        if len(probes) >= 3:
            down.clear()      # the dependency is back at the third probe
        return not down.is_set()

    pool = ListenerPool(queue, handler, threads=1, batch_size=5, wait_seconds=0.05, probe=probe)
    pool.start()
    try:
        assert pool.wait_idle(20)
    finally:
        pool.stop()
        queue.close()
    assert sorted(applied) == [f"batch {n}".encode() for n in range(5)]
    # one failed handler call: the other four of the claim were given back unstarted, and
    # nothing was claimed while the probe said the dependency was out
    assert len(calls) == 6 and len(probes) == 3
    assert pool.stats.outages == 1 and pool.stats.failed == 1


def test_a_batch_failure_is_not_an_outage(tmp_path):
    queue = SqliteQueue(tmp_path / "queue.db")
    queue.send(b"batch", group="device-1")
    attempts = []

    def handler(message):
        attempts.append(message.receive_count)
        if len(attempts) < 3:
            raise ValueError("a bad batch")

    pool = ListenerPool(queue, handler, threads=1, wait_seconds=0.05,
                        probe=lambda: pytest.fail("no probe for a batch's own failure"))
    pool.start()
    try:
        assert pool.wait_idle(20)
    finally:
        pool.stop()
        queue.close()
    assert attempts == [1, 2, 3] and pool.stats.outages == 0
