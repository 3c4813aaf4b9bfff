"""`fieldsync worker` processes: a worker killed mid-batch loses nothing and applies nothing
twice once another finishes; SIGTERM drains what is in flight and exits 0.

The server in the test process only receives (SYNC_LISTENERS=0); the workers are real
subprocesses on the same database, queue file and keys.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import sqlalchemy as sa

from fieldsync.cli import main
from fieldsync.workers.fleet import PROCESSING_LOG, workers_status

from workers_support import ROOT, Device, expire_in_flight, wait_for, worker_command


class Worker:
    """A `fieldsync worker` subprocess, started and ready (its first line printed)."""

    def __init__(self, server, env: dict[str, str], log_path: Path, *args: str):
        self.log_path = log_path
        self.stderr = open(log_path, "w")
        self.process = subprocess.Popen(worker_command(*args), env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                        stderr=self.stderr, text=True)
        line = self.process.stdout.readline()
        assert "applying the push queue" in line, line + log_path.read_text()
        self.worker_id = line.split()[2].rstrip(":")

    def entries(self, engine: sa.Engine) -> list[dict]:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(PROCESSING_LOG).where(
                PROCESSING_LOG.c.worker_id == self.worker_id)).mappings()]

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for the process to end: its exit status and the rest of its output."""
        code = self.process.wait(timeout)
        out = self.process.stdout.read() if not self.process.stdout.closed else ""
        self.process.stdout.close()
        self.stderr.close()
        return code, out

    def kill(self) -> None:
        """Clean-up after a failed test: never leave a worker running."""
        if self.process.poll() is None:
            self.process.kill()
        self.finish()


def push_backlog(server, devices: int, rounds: int, size: int) -> list[Device]:
    phones = [Device(server, user=f"rep-{n}", install=f"i-{n}") for n in range(devices)]
    for _ in range(rounds):
        for phone in phones:
            phone.push_visits(size, notes="confidential note")
    return phones


def test_a_worker_killed_mid_batch_loses_nothing_and_another_finishes(make_server, worker_env, tmp_path):
    """SIGKILL while it holds claimed batches; a second worker (resized by `workers set` while
    it runs) takes them after their visibility timeout: every mutation applied exactly once."""
    server = make_server()
    devices = push_backlog(server, devices=8, rounds=5, size=25)
    first = Worker(server, worker_env(server), tmp_path / "first.log", "--threads", "1", "--heartbeat", "0.2")
    second = None
    try:
        # keep it busy (a round of pushes at a time) until it has applied some and holds some
        for _ in range(40):
            if len(first.entries(server.engine)) >= 3 and server.queue_depth().in_flight > 0:
                break
            for device in devices:
                device.push_visits(25, notes="confidential note")
        first.process.send_signal(signal.SIGKILL)
        assert first.finish()[0] == -signal.SIGKILL
        held = server.queue_depth().in_flight
        assert held > 0, "the worker died holding no message"
        # the dead worker's deliveries become visible again when their visibility timeout (60 s)
        # runs out; move that moment to now instead of waiting for it
        assert expire_in_flight(server.queue_file) == held

        second = Worker(server, worker_env(server), tmp_path / "second.log", "--threads", "2", "--heartbeat", "0.2")
        assert main(["workers", "set", "--threads", "3", "--database-url", server.database_url]) == 0
        wait_for(lambda: [w["threads"] for w in workers_status(server.engine, server.sync.queue)["workers"]
                          if w["worker_id"] == second.worker_id] == [3],
                 what="the running worker to take the new size at its next heartbeat")
        wait_for(lambda: server.sync.queue.pending() == 0, timeout=40, what="the second worker to finish")
        second.process.send_signal(signal.SIGTERM)
        code, out = second.finish()
        assert code == 0 and "stopped" in out
    finally:
        first.kill()
        if second is not None:
            second.kill()

    server.assert_each_applied_once(devices)         # nothing lost, nothing applied twice
    batches = sum(d.seq for d in devices) // 25
    redelivered = [e for e in second.entries(server.engine) if e["receive_count"] == 2]
    assert len(redelivered) == held                  # what the dead worker held, handled again
    assert {e["outcome"] for e in redelivered} <= {"applied", "redelivery"}
    assert len(first.entries(server.engine)) + len(second.entries(server.engine)) >= batches
    status = wait_for(lambda: (s := workers_status(server.engine, server.sync.queue))["workers"] and
                      all(w["stale"] for w in s["workers"]) and s, what="the killed worker's row to go stale")
    assert [w["worker_id"] for w in status["workers"]] == [first.worker_id]   # the drained one left
    assert status["depth"] == {"visible": 0, "in_flight": 0, "dead": 0}


def test_sigterm_drains_in_flight_batches_and_exits_zero(make_server, worker_env, tmp_path):
    """SIGTERM under load (devices keep pushing while it stops): the worker finishes what it
    runs, gives back what it has not started, exits 0; nothing is left in flight."""
    server = make_server()
    devices = push_backlog(server, devices=5, rounds=10, size=10)
    worker = Worker(server, worker_env(server), tmp_path / "worker.log", "--threads", "2", "--heartbeat", "0.2")
    try:
        for _ in range(40):
            if worker.entries(server.engine):
                break
            for device in devices:
                device.push_visits(10, notes="confidential note")
        worker.process.send_signal(signal.SIGTERM)
        for _ in range(40):                    # the devices do not stop pushing meanwhile
            for device in devices:
                device.push_visits(10, notes="confidential note")
            if worker.process.poll() is not None:
                break
        code, out = worker.finish()
    finally:
        worker.kill()
    assert code == 0 and "draining" in out and "stopped" in out
    pushed = sum(d.seq for d in devices) // 10
    depth = server.queue_depth()
    assert depth.in_flight == 0          # every held batch was acked or given back, none stranded
    assert depth.visible > 0
    handled = worker.entries(server.engine)
    assert len(handled) + depth.visible == pushed and {e["outcome"] for e in handled} == {"applied"}
    assert workers_status(server.engine, server.sync.queue)["workers"] == []   # its row left with it

    lines = [json.loads(line) for line in worker.log_path.read_text().splitlines() if line.startswith("{")]
    assert len(lines) == len(handled)
    assert {tuple(sorted(line)) for line in lines} == {
        ("device_id", "duration_ms", "message_id", "outcome", "receive_count", "results", "worker_id")}
    assert "confidential" not in worker.log_path.read_text()      # no record data in the logs

    assert server.sync.drain() == depth.visible
    server.assert_each_applied_once(devices)
