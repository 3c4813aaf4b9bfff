"""`fieldsync dlq list` and `fieldsync dlq replay`: dead letters shown without their bodies,
re-driven onto the push queue and then applied once."""

from __future__ import annotations

import json

import pytest

from fieldsync.cli import main

from workers_support import Device


def bury(server, deliveries: int) -> None:
    """Deliver every waiting message `deliveries` times without acking: what a handler that
    keeps failing does; the embedded queue dead-letters after max_receives (5)."""
    queue = server.sync.queue
    for _ in range(deliveries):
        messages = queue.receive(10, visibility_timeout=60)
        assert messages
        queue.release([m.receipt for m in messages])


@pytest.fixture
def dead(make_server, monkeypatch):
    """A server with three dead letters: two push batches (3 and 2 visits) and a body that is
    not a push batch."""
    server = make_server()
    monkeypatch.setenv("FIELDSYNC_DATABASE_URL", server.database_url)
    asha, kiran = Device(server, "rep-asha", "i-1"), Device(server, "rep-kiran", "i-2")
    asha.push_visits(3, notes="confidential diagnosis")
    kiran.push_visits(2, notes="confidential diagnosis")
    server.sync.queue.send(b"not a push batch", group="some-device")
    bury(server, server.sync.queue.max_receives)
    depth = server.queue_depth()
    assert (depth.visible, depth.in_flight, depth.dead) == (0, 0, 3)
    return server, asha, kiran


def test_dlq_list_shows_device_mutations_and_deliveries_but_no_body(dead, capsys):
    server, asha, kiran = dead
    assert main(["dlq", "list", "--json", "--data-dir", str(server.data_dir)]) == 0
    out = capsys.readouterr().out
    items = json.loads(out)["items"]
    assert [(i["device_id"], i["mutations"], i["receive_count"]) for i in items] == [
        (asha.device_id, 3, 5), (kiran.device_id, 2, 5), ("some-device", None, 5)]
    assert all(len(i["message_id"]) >= 16 and i["enqueued_at"].endswith("Z") for i in items)
    assert "confidential" not in out and "push batch" not in out

    assert main(["dlq", "list", "--data-dir", str(server.data_dir)]) == 0
    table = capsys.readouterr().out
    assert asha.device_id in table and "3 dead letter(s)" in table and "confidential" not in table


def test_dlq_replay_re_drives_named_then_all_and_they_apply_once(dead, capsys):
    server, asha, kiran = dead
    data_dir = ["--data-dir", str(server.data_dir)]
    assert main(["dlq", "list", "--json", *data_dir]) == 0
    ids = {i["device_id"]: i["message_id"] for i in json.loads(capsys.readouterr().out)["items"]}

    assert main(["dlq", "replay", *data_dir]) == 2                     # neither --id nor --all
    assert main(["dlq", "replay", "--id", ids[asha.device_id], "--all", *data_dir]) == 2
    assert main(["dlq", "replay", "--id", ids[asha.device_id], "--id", "no-such-message", *data_dir]) == 1
    captured = capsys.readouterr()
    assert "replayed 1 dead letter(s)" in captured.out and "1 of the ids named" in captured.err
    assert server.queue_depth().dead == 2 and server.sync.queue.pending() == 1

    assert server.sync.drain() == 1
    assert server.ledger_seqs() == {asha.device_id: [1, 2, 3]}

    assert main(["dlq", "replay", "--all", *data_dir]) == 0
    assert "replayed 2 dead letter(s)" in capsys.readouterr().out
    queue = server.sync.queue
    messages = queue.receive(10, visibility_timeout=60)
    assert [m.group for m in messages] == [kiran.device_id, "some-device"]   # in their original order
    server.sync.handle(messages[0])
    with pytest.raises(ValueError):
        server.sync.handle(messages[1])     # still not a push batch: it fails again
    queue.ack([messages[0].receipt])
    assert server.ledger_seqs() == {asha.device_id: [1, 2, 3], kiran.device_id: [1, 2]}
    server.assert_each_applied_once([asha, kiran])
    assert main(["dlq", "list", "--json", *data_dir]) == 0
    assert json.loads(capsys.readouterr().out)["items"] == []
    assert queue.pending() == 1             # the junk waits for its next delivery
