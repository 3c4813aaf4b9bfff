"""What the SDK tells the app about its writes (invariant 5): conflict losses (`conflicts()`,
`SyncReport.conflicts`), the outbox seq of each write (`last_seq`, what `update`/`delete`
return), a field set again after a rejection, `Status.fully_synced`, and the clock offset a
push carries (protocol §8.1)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest

from fieldsync.client import Conflict
from fieldsync.client.clock_offset import ClockOffset


def losing_updates(server, field="notes", origin="server", effect="partial"):
    """Make the fake server report every update of `field` as lost to a value from `origin`."""
    original = server._apply

    def apply(m):
        result = original(m)
        if result["status"] == "applied" and m["op"] == "update" and field in m["fields"]:
            result.update(effect=effect, overridden=[field], overridden_by={field: origin})
            result["row"] = {**result["row"], field: "the server's"}
        elif result["status"] == "applied" and m["op"] == "delete" and effect == "discarded":
            result.update(effect="discarded", overridden=[], overridden_by={})
            result["row"] = {**result["row"], "deleted": False}
        return result
    server._apply = apply


def outbox(tmp_path, name="device"):
    conn = sqlite3.connect(tmp_path / f"{name}.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute('SELECT * FROM "_outbox" ORDER BY seq').fetchall()
    finally:
        conn.close()


def test_conflict_losses_are_counted_listed_and_cleared(make_client, server, visit, clock):
    client = make_client(server)
    first = client.insert("visit", visit(notes="v1"))
    second = client.insert("visit", visit(notes="w1"))
    assert client.sync().conflicts == 0
    losing_updates(server)
    seq = client.update("visit", first, {"notes": "mine", "duration_minutes": 15})
    other = client.update("visit", second, {"notes": "mine too"})
    report = client.sync()
    assert (report.applied, report.conflicts) == (2, 2)
    assert client.status().conflicts == 2
    lost = client.conflicts()
    assert [c.seq for c in lost] == [seq, other]
    assert lost[0] == Conflict(seq=seq, entity="visit", record_id=first, op="update", effect="partial",
                               fields=["notes"], origins={"notes": "server"}, sent={"notes": "mine"},
                               kept={"notes": "the server's"}, detected_at=lost[0].detected_at)
    assert lost[0].detected_at.startswith("2026-11-27T09:00")
    # kept in the store: a restarted app still sees them
    client.close()
    client = make_client(server)
    assert [c.seq for c in client.conflicts()] == [seq, other]
    assert client.clear_conflicts([seq]) == 1
    assert [c.seq for c in client.conflicts()] == [other]
    assert client.clear_conflicts() == 1
    assert client.conflicts() == [] and client.status().conflicts == 0


def test_a_discarded_write_is_a_conflict_too(make_client, server, visit, schema):
    client = make_client(server)
    record_id = client.insert("visit", visit(notes="v1"))
    client.sync()
    losing_updates(server, effect="discarded", origin="device")
    client.update("visit", record_id, {"notes": "mine"})
    assert client.sync().conflicts == 1
    [lost] = client.conflicts()
    assert (lost.effect, lost.fields, lost.origins) == ("discarded", ["notes"], {"notes": "device"})


def test_a_clean_result_is_no_conflict(make_client, server, visit):
    client = make_client(server)
    record_id = client.insert("visit", visit(notes="v1"))
    client.sync()
    client.update("visit", record_id, {"notes": "v2"})
    assert client.sync().conflicts == 0 and client.conflicts() == []


def test_writes_expose_the_outbox_seq_their_quarantine_entry_is_keyed_by(make_client, server, visit):
    client = make_client(server)
    assert client.last_seq is None
    record_id = client.insert("visit", visit(notes="v1"))   # still the id, for compatibility
    inserted = client.last_seq
    assert isinstance(record_id, str) and inserted == 1
    client.sync()
    server.reject = lambda m: "stale" if m["op"] == "update" else None
    seq = client.update("visit", record_id, {"notes": "refused"})
    assert seq == client.last_seq == 2
    assert client.update("visit", record_id, {"notes": "refused"}) is None   # nothing changed
    assert client.last_seq is None
    client.sync()
    [q] = client.quarantined()
    assert q.seq == seq
    assert client.delete("visit", record_id) == client.last_seq == 3


def test_last_seq_is_per_thread(make_client, server, visit):
    import threading
    client = make_client(server)
    client.insert("visit", visit(notes="mine"))
    seen = []
    worker = threading.Thread(target=lambda: (client.insert("visit", visit(notes="theirs")),
                                              seen.append(client.last_seq)))
    worker.start()
    worker.join()
    assert (client.last_seq, seen) == (1, [2])


def test_a_field_set_again_after_a_rejection_is_queued_though_the_row_holds_it(make_client, server, visit,
                                                                              tmp_path):
    """The refused value stays in the row while a later write of the record is unsettled; the
    user, told of the rejection, sets it again: that must be sent, not dropped as unchanged."""
    client = make_client(server)
    record_id = client.insert("visit", visit(notes="v1"))
    client.sync()
    server.auto_process = False
    refused = client.update("visit", record_id, {"notes": "refused"})
    client.sync()                                        # received, not processed
    server.reject = lambda m: "stale" if m["seq"] == refused else None
    server.process()
    client.update("visit", record_id, {"duration_minutes": 12})
    client.sync()                                        # the rejection arrives; the later write is unsettled
    assert [q.seq for q in client.quarantined()] == [refused]
    assert client.get("visit", record_id)["notes"] == "refused"   # the row still holds it
    again = client.update("visit", record_id, {"notes": "refused"})
    assert again is not None
    assert json.loads(outbox(tmp_path)[-1]["fields"]) == {"notes": "refused"}
    server.auto_process = True
    server.process()
    client.sync()
    client.sync()
    assert server.records[("visit", record_id)]["notes"] == "refused"
    assert client.get("visit", record_id)["notes"] == "refused"


def test_fully_synced_means_nothing_pending_or_unsettled_and_the_cursor_at_head(make_client, server, visit):
    client = make_client(server, pull_limit=1)
    assert not client.status().fully_synced             # never pulled: the head is unknown
    client.sync()
    assert client.status().fully_synced
    record_id = client.insert("visit", visit(notes="v1"))
    assert not client.status().fully_synced             # pending
    server.auto_process = False
    client.sync()
    status = client.status()
    assert status.received == 1 and not status.fully_synced   # received, no result yet
    server.process()
    client.sync()
    assert client.status().fully_synced
    for n in range(3):
        server.server_insert("visit", f"0192a000-0000-7000-8000-00000000070{n}", **visit(notes=str(n)))
    client.sync(max_pages=1)                            # one change a page: two more to go
    status = client.status()
    assert status.cursor < status.head and not status.fully_synced
    client.sync()
    assert client.status().fully_synced
    client.update("visit", record_id, {"notes": "v2"})
    assert not client.status().fully_synced


def test_the_clock_offset_is_the_shortest_fresh_round_trips():
    t0 = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.timezone.utc)
    offset = ClockOffset()
    assert offset.estimate_ms(t0) is None
    server = "2026-11-27T09:00:03.000000Z"
    # a push that took 30 s to upload and was answered at once: half of it would be error
    offset.observe(t0 - dt.timedelta(seconds=30), t0, server)
    assert offset.estimate_ms(t0) == 18_000
    # a pull that took 200 ms, whose server time is 1 s ahead of the device's midpoint
    offset.observe(t0, t0 + dt.timedelta(milliseconds=200), "2026-11-27T09:00:01.100000Z")
    assert offset.estimate_ms(t0 + dt.timedelta(seconds=1)) == 1000
    # samples older than ten minutes are not used; nor is an answer without the header
    offset.observe(t0, t0 + dt.timedelta(milliseconds=1), None)
    assert offset.estimate_ms(t0 + dt.timedelta(minutes=11)) is None


def test_a_push_carries_the_offset_measured_on_earlier_answers(make_client, server, visit, clock):
    """Each answer's Fieldsync-Server-Time is a sample; the push sends the best one."""
    original = server.request

    def answer_with_time(method, path, *, headers, body):
        clock.advance(0.1)                              # 100 ms each way
        status, answer_headers, data = original(method, path, headers=headers, body=body)
        server_now = clock.now + dt.timedelta(seconds=5)   # the server's clock is 5 s ahead
        clock.advance(0.1)
        return status, {**answer_headers, "fieldsync-server-time": server_now.isoformat()}, data
    server.request = answer_with_time
    client = make_client(server)
    client.sync()
    client.insert("visit", visit(notes="v1"))
    client.sync()
    pushes = [b for b in server.bodies("/push")]
    assert pushes and pushes[-1]["clock_offset_ms"] == 5000
