"""PostgreSQL stopped and started again under traffic (issue 15, "PostgreSQL restart or
failover"): SDK devices push and pull over real HTTP while the server's database goes away.

While it is away every answer is a success or a quick 503 `unavailable` problem with
Retry-After (never a 500, never a wait past BOUND); when it is back the same server and listener
pool serve again by themselves (no restart of anything of fieldsync); and every visit a device
wrote is applied exactly once. The database is a private cluster (restart_support.PrivateCluster):
the shared PostgreSQL of the other tests is never restarted."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from fieldsync.api import create_app
from fieldsync.client import Client, HttpTransport, ServerUnavailable, TransportError
from fieldsync.seed import load_seed
from fieldsync.store.sync_tables import LEDGER

from restart_support import (BOUND, ROOT, SECRET, PrivateCluster, Recorder, RecordingTransport, bad_answers,
                            device_schema, figures, poll_health, rep_token, visit_fields)

DEVICES = ("ana", "ben", "chen")
READERS = ("dev",)    # a device that only pulls: its pulls meet the outage (a writer's sync stops at its push)


class Device(threading.Thread):
    """One field rep: writes a visit, syncs, again, until told to stop. A sync that fails
    (503, no answer) is simply tried again on the next round, as the SDK's background sync does."""

    def __init__(self, name: str, url: str, recorder: Recorder, stop: threading.Event, directory, *,
                 writes: bool = True) -> None:
        super().__init__(name=f"device-{name}", daemon=True)
        self.writes = writes
        self.http = HttpTransport(url, timeout=(5, 30))
        transport = RecordingTransport(self.http, recorder)
        self.client = Client(directory / f"{name}.db", transport, rep_token(f"rep-{name}"), schema=device_schema())
        self.label = name
        self.stop = stop
        self.written: dict[str, int] = {}     # record id -> outbox seq
        self.synced = 0
        self.refused = 0
        self.unexpected: list[BaseException] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            if self.writes:
                record_id = self.client.insert("visit", visit_fields(f"{self.label} visit {n}"))
                self.written[record_id] = self.client.last_seq
                n += 1
            try:
                self.client.sync()
                self.synced += 1
            except (ServerUnavailable, TransportError):
                self.refused += 1
            except BaseException as exc:   # anything else fails the test (checked by the main thread)
                self.unexpected.append(exc)
                return
            self.stop.wait(0.05)   # pacing: a rep writes now and then, not in a tight loop


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def cluster():
    made = PrivateCluster()
    try:
        made.start()
        yield made
    finally:
        made.destroy()


def test_postgres_restart_mid_traffic_answers_fast_and_heals_without_loss(tmp_path, cluster, example_model):
    app = create_app({"DATABASE_URL": cluster.url, "SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path / "var"),
                      "QUEUE_URL": f"sqlite:///{tmp_path / 'queue.db'}", "SYNC_LISTENERS": 2,
                      "DATABASE_CONNECT_TIMEOUT": 2, "ADMIN_UI": False}, model=example_model)
    state = app.extensions["fieldsync"]
    load_seed(state.config, ROOT / "examples" / "seed", store=state.store)
    recorder = Recorder()
    stop = threading.Event()
    from restart_support import serving
    with serving(app) as url:
        devices = [Device(name, url, recorder, stop, tmp_path) for name in DEVICES]
        devices += [Device(name, url, recorder, stop, tmp_path, writes=False) for name in READERS]
        health = poll_health(url, recorder, stop)
        try:
            for device in devices:
                device.start()
            wait_for(lambda: all(d.synced >= 2 for d in devices), 30, "every device to sync before the outage")

            down = time.monotonic()
            cluster.stop()
            stopped = time.monotonic()
            # the outage lasts until the devices have met it: several refused requests
            wait_for(lambda: recorder.count(lambda a: a.at >= stopped and a.status == 503 and a.path.endswith("/pull"))
                     >= 20 and recorder.count(lambda a: a.at >= stopped and a.status == 503) >= 40, 20,
                     "503 answers to pushes and pulls while PostgreSQL is down")
            cluster.start()
            up = time.monotonic()
            before = {d.label: d.synced for d in devices}
            wait_for(lambda: all(d.synced >= before[d.label] + 2 for d in devices), 30,
                     "every device to sync again after PostgreSQL came back")
            healed = time.monotonic()
        finally:
            stop.set()
            for device in devices:
                device.join(30)
            health.join(30)

        for device in devices:
            assert not device.unexpected, f"{device.label}: {device.unexpected!r}"

        # -- during the outage: a success or a quick 503 problem, nothing else ----------------
        during = recorder.between(down, up)
        bad = bad_answers(during)
        assert not bad, f"answers during the outage that are neither 2xx nor a quick 503 problem: {bad[:5]}"
        assert any(a.status == 503 for a in during)
        # ... and never a 500 (or a wait past the bound) at any time of the run
        worst = [a for a in recorder.answers if (a.status or 0) >= 500 and a.status != 503 or a.seconds > BOUND]
        assert not worst, worst[:5]
        first_success = min((a.at for a in recorder.answers if a.at >= up and 200 <= (a.status or 0) < 300
                             and a.path.endswith("/push")), default=None)
        assert first_success is not None, "no push succeeded after PostgreSQL came back"

        # -- after: every device settles; each visit written is applied exactly once ------------
        writers = [d for d in devices if d.writes]
        for device in writers:
            deadline = time.monotonic() + 30
            while True:
                try:
                    device.client.sync()
                except (ServerUnavailable, TransportError):
                    pass
                assert state.sync.wait_idle(20), "the listener pool did not drain"
                status = device.client.status()
                if status.pending + status.sent + status.received == 0:
                    device.client.sync()   # fetch the results of what the pool applied meanwhile
                    break
                assert time.monotonic() < deadline, f"{device.label} did not settle: {status}"
            assert device.client.quarantined() == [], f"{device.label}: writes were rejected"

        store = state.store
        visits = store.table(store.model.entity("visit"))
        with state.engine.connect() as conn:
            for device in writers:
                device_id = device.client.status().device_id
                ledger = {r.seq: r.status for r in conn.execute(
                    sa.select(LEDGER.c.seq, LEDGER.c.status).where(LEDGER.c.device_id == device_id))}
                seqs = set(device.written.values())
                assert {seq: ledger.get(seq) for seq in seqs} == {seq: "applied" for seq in seqs}, device.label
                ids = list(device.written)
                found = conn.execute(sa.select(visits.c.id, sa.func.count()).where(visits.c.id.in_(ids))
                                     .group_by(visits.c.id)).all()
                assert {str(r[0]): r[1] for r in found} == {i: 1 for i in ids}, f"{device.label}: lost or doubled"

        deps = state.dependencies.state("database")
        assert deps.state == "up" and deps.last_failure is not None, deps   # it saw the outage and the return
        pool = state.sync.pool.stats
        outage = healed - down
        print(f"\nPostgreSQL outage: stopped after {stopped - down:.2f} s, down {up - stopped:.2f} s, "
              f"first push served {first_success - up:.2f} s after it was back; "
              f"{len(during)} answers during it ({sum(1 for a in during if a.status == 503)} x 503, "
              f"{sum(1 for a in during if a.status is None)} without an answer); run {outage:.1f} s; "
              f"pool: {pool.processed} batches applied, {pool.outages} outage failures; "
              f"{sum(len(d.written) for d in writers)} visits applied once each")
        print("  during the outage: " + "; ".join(figures(during, p) for p in ("/health", "/pull", "/push")))
        for device in devices:
            device.client.close()
            device.http.close()
    state.sync.stop()
    state.engine.dispose()
