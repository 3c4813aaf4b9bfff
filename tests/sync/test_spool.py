"""The push spool (sync/spool.py, docs/operations.md "Outages"): while the push queue refuses
or hangs, pushes are received into the database, sealed; a device's later pushes follow its
spooled ones; the relay forwards them in order, one relay at a time; a batch that reaches the
queue twice is applied once. The outage here is the real queue's own send made to fail or
hang; tests/outage/test_queue_outage.py stops a real broker and a real SQS endpoint."""

from __future__ import annotations

import datetime as dt
import threading
import time

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from fieldsync.seed import PUNE_CENTRAL
from fieldsync.store.sync_tables import SPOOL

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                print_blob=True)


class QueueSwitch:
    """Makes the server's real queue refuse (`down`) or hang (`hang`) on send, and heal."""

    def __init__(self, server):
        self.inner = server.state.sync.queue.inner     # under the EncryptedQueue
        self.mode = "up"
        self.released = threading.Event()
        self.sent = 0
        self._send_batch = self.inner.send_batch
        self._send = self.inner.send
        self.inner.send_batch = self.send_batch
        self.inner.send = lambda body, group=None: self.send_batch([(body, group)])[0]

    def send_batch(self, items):
        if self.mode == "down":
            raise OSError("the queue is down")
        if self.mode == "hang":
            self.released.wait(30)
        self.sent += len(items)
        return self._send_batch(items)


def visit(**extra):
    """A visit to a seed retailer of PUNE_CENTRAL."""
    return {"retailer_id": "2fd6ae15-929b-509f-9c04-01a819382ca2", "territory_id": PUNE_CENTRAL,
            "visited_at": "2026-11-27T09:00:00Z", "purpose": "order", **extra}


def spooled(server) -> list[tuple[str, bytes]]:
    with server.engine.connect() as conn:
        return [(r.device_id, bytes(r.body)) for r in conn.execute(sa.select(SPOOL).order_by(SPOOL.c.id))]


def test_a_refused_push_is_received_into_the_spool_sealed(make_server):
    server = make_server()
    switch = QueueSwitch(server)
    device = server.device("rep-asha", territory_ids=[PUNE_CENTRAL])
    device.sync()
    switch.mode = "down"
    record = device.client.insert("visit", visit(notes="PHI-MARKER-spooled-note"))
    report = device.sync()
    assert report.pushed == 1 and device.client.status().received == 1   # received, not refused
    [(device_id, body)] = spooled(server)
    assert device_id == device.device_id
    assert b"PHI-MARKER" not in body and record.encode() not in body   # invariant 7: ciphertext only
    assert server.state.sync.dependencies.state("queue").state == "degraded"
    switch.mode = "up"
    server.drain()
    assert spooled(server) == []
    device.sync()
    assert device.client.status().received == 0
    assert server.records("visit")[record]["notes"] == "PHI-MARKER-spooled-note"


def test_a_devices_later_push_follows_its_spooled_batch_in_order(make_server, assert_exactly_once, monkeypatch):
    """The queue is back, but the device still has a batch in the spool: its next batch (an
    update of the record the spooled one inserts) joins the spool, and both apply in order."""
    server = make_server()
    monkeypatch.setattr(server.state.sync.relay, "wake", lambda: None)   # relayed by drain() only
    switch = QueueSwitch(server)
    device = server.device("rep-asha", territory_ids=[PUNE_CENTRAL])
    device.sync()
    switch.mode = "down"
    record = device.client.insert("visit", visit(notes="first"))
    device.sync()
    switch.mode = "up"
    server.state.sync.dependencies.succeeded("queue")   # another process found it back
    device.client.update("visit", record, {"notes": "second"})
    device.sync()
    assert [d for d, _ in spooled(server)] == [device.device_id] * 2
    assert switch.sent == 0        # nothing of the device went around its spooled batch
    server.drain()
    device.sync()
    assert server.records("visit")[record]["notes"] == "second" and device.client.quarantined() == []
    assert_exactly_once(server, device)


def test_a_hanging_queue_holds_a_push_only_for_the_send_timeout(make_server, assert_exactly_once):
    """The queue hangs: the push is answered after QUEUE_SEND_TIMEOUT with its batch spooled;
    when the queue wakes, the hung send lands too, and the ledger applies the batch once."""
    server = make_server(QUEUE_SEND_TIMEOUT=0.5)
    switch = QueueSwitch(server)
    device = server.device("rep-asha", territory_ids=[PUNE_CENTRAL])
    device.sync()
    switch.mode = "hang"
    record = device.client.insert("visit", visit(notes="hung"))
    started = time.monotonic()
    device.sync()
    took = time.monotonic() - started
    assert took < 0.5 + 2.0, f"the push waited {took:.2f} s on a hanging queue"
    assert len(spooled(server)) == 1
    switch.mode = "up"
    switch.released.set()          # the hung send goes through: the batch is queued AND spooled
    sync = server.state.sync
    sync._sender.shutdown(wait=True)   # wait for the hung send's thread, not for time
    sync._sender = None
    server.drain()
    device.sync()
    assert spooled(server) == [] and server.records("visit")[record]["notes"] == "hung"
    ledger = server.ledger(device.device_id)
    assert [r["status"] for r in ledger] == ["applied"]        # one effect, the copy a duplicate
    assert_exactly_once(server, device)


def test_one_relay_at_a_time(make_server):
    """Two processes' relays on one database: while one holds the lease the other forwards
    nothing; once the holder stops (or its lease runs out) the other takes over."""
    from fieldsync.sync.spool import SpoolRelay
    server = make_server()
    sync = server.state.sync
    sent: dict[str, list] = {"a": [], "b": []}
    relays = {name: SpoolRelay(lambda: server.engine, sent[name].extend, dependencies=sync.dependencies,
                               lease_seconds=30) for name in "ab"}
    with sync.applier.store().engine.begin() as conn:
        for i in range(3):
            sync.spool.put(conn, f"device-{i}", b"batch %d" % i, dt.datetime.now(dt.timezone.utc))
    relays["a"]._take_lease(server.engine)
    assert relays["b"].relay_once() is False and sent["b"] == []
    relays["a"].stop()                         # releases its lease
    relays["b"].relay_once()
    assert [group for _, group in sent["b"]] == ["device-0", "device-1", "device-2"] and spooled(server) == []


@settings(max_examples=8, **SETTINGS)
@given(steps=st.lists(st.sampled_from(["write", "edit", "sync", "down", "hang", "up", "relay", "drain"]),
                      min_size=4, max_size=18))
def test_any_outage_pattern_applies_every_write_once_in_order(make_server, steps, settle, assert_exactly_once,
                                                                assert_converged):
    """Invariants 1 and 2 through any pattern of queue outages: writes and edits of one device,
    synced while the queue refuses, hangs or works, relayed and drained at any point, end up
    applied exactly once, in order (an edit applied before its insert would be rejected)."""
    server = make_server(QUEUE_SEND_TIMEOUT=0.2, QUEUE_RETRY_SECONDS=0.0)
    switch = QueueSwitch(server)
    device = server.device("rep-asha", territory_ids=[PUNE_CENTRAL])
    device.sync()
    mine: list[str] = []
    try:
        for n, step in enumerate(steps):
            if step == "write":
                mine.append(device.client.insert("visit", visit(notes=f"w{n}")))
            elif step == "edit" and mine:
                device.client.update("visit", mine[-1], {"notes": f"e{n}"})
            elif step == "sync":
                device.sync()
            elif step in ("down", "hang"):
                switch.mode = step
            elif step == "up":
                switch.mode = "up"
                switch.released.set()
                switch.released = threading.Event()
            elif step == "relay" and switch.mode == "up":
                server.state.sync.relay.relay_once()
            elif step == "drain" and switch.mode == "up":
                server.drain()
    finally:
        switch.mode = "up"
        switch.released.set()
    settle(server, [device])
    assert spooled(server) == []
    assert device.client.quarantined() == []
    assert_exactly_once(server, device)
    assert_converged(server, device)
