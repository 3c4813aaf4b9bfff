"""What the sync server relies on from a queue, checked the same way on every backend."""

from __future__ import annotations

import threading
import time

import pytest

from fieldsync.crypto.keys import LocalKeyProvider
from fieldsync.queue.embedded import open_queue
from fieldsync.queue.encrypted import MAGIC, EncryptedQueue

VISIBILITY = 1.0


@pytest.fixture
def queue(queue_url):
    q = open_queue(queue_url, max_receives=3)
    yield q
    q.close()


def receive_all(queue, n, *, wait=10.0, visibility=30.0):
    """Receive until `n` messages arrived (long polls; the deadline only bounds a failure)."""
    got = []
    deadline = time.monotonic() + wait
    while len(got) < n and time.monotonic() < deadline:
        got += queue.receive(min(10, n - len(got)), visibility_timeout=visibility, wait_seconds=1)
    return got


def test_send_receive_ack(queue):
    ids = queue.send_batch([(b"m%d" % i, None) for i in range(12)])
    assert len(ids) == 12 and len(set(ids)) == 12
    got = receive_all(queue, 12)
    assert sorted(m.body for m in got) == sorted(b"m%d" % i for i in range(12))
    assert all(m.receive_count == 1 for m in got)
    queue.ack([m.receipt for m in got])
    assert queue.receive(10, wait_seconds=0.5) == []
    depth = queue.depth()
    assert all(v is None or isinstance(v, int) for v in (depth.visible, depth.in_flight, depth.dead))
    assert depth.visible in (0, None) and depth.in_flight in (0, None)


def test_released_message_is_redelivered_with_a_higher_count(queue):
    queue.send(b"again", group="device-1")
    [first] = receive_all(queue, 1)
    queue.release([first.receipt])
    [second] = receive_all(queue, 1)
    assert second.body == b"again" and second.receive_count == first.receive_count + 1
    queue.ack([second.receipt])


def test_a_consumer_that_dies_without_ack_loses_nothing(queue_url, queue):
    """Invariant 1: a worker killed mid-batch — its message comes back to another consumer."""
    queue.send(b"work", group="device-2")
    dying = open_queue(queue_url, max_receives=3)
    [taken] = receive_all(dying, 1, visibility=VISIBILITY)
    dying.close()                                   # no ack: the consumer is gone
    [again] = receive_all(queue, 1, wait=30)
    assert again.body == b"work" and again.receive_count >= 2
    queue.ack([again.receipt])


def test_fifo_within_a_group(queue):
    queue.send_batch([(b"%d" % i, "device-3") for i in range(6)])
    seen = []
    while len(seen) < 6:
        got = receive_all(queue, 1)
        assert got, f"only {seen} arrived"
        seen += [m.body for m in got]
        queue.ack([m.receipt for m in got])
    assert seen == [b"%d" % i for i in range(6)]


def test_dead_letters_after_max_receives_and_replay(queue):
    queue.send(b"poison", group="device-4")
    for _ in range(3):
        [m] = receive_all(queue, 1)
        queue.release([m.receipt])
    dead = []
    deadline = time.monotonic() + 30
    while not dead and time.monotonic() < deadline:
        assert queue.receive(1, wait_seconds=0.5) == []      # never delivered a 4th time
        dead = queue.dead_letters()
    assert [d.body for d in dead] == [b"poison"]
    assert queue.replay_dead() == 1
    [back] = receive_all(queue, 1)
    assert back.body == b"poison"
    queue.ack([back.receipt])


def test_a_large_body_round_trips(queue):
    body = bytes(range(256)) * (300 * 4)          # 300 KiB: over SQS's 256 KiB limit
    queue.send(body, group="device-5")
    [m] = receive_all(queue, 1)
    assert m.body == body
    queue.ack([m.receipt])


def test_a_long_poll_wakes_when_a_message_arrives(queue):
    got = []
    poller = threading.Thread(target=lambda: got.extend(queue.receive(1, wait_seconds=15)))
    poller.start()
    queue.send(b"ping")
    poller.join(20)
    assert not poller.is_alive() and [m.body for m in got] == [b"ping"]
    queue.ack([got[0].receipt])


def test_sealed_payloads_hold_no_plaintext_on_the_backend(queue_url, queue, raw_bodies, tmp_path):
    """Invariant 7: what the backend stores is an envelope, never the record data."""
    sealed = EncryptedQueue(queue, LocalKeyProvider(tmp_path / "keys"))
    secret = b'{"notes": "patient Ramesh Kumar, HbA1c 9.1%"}'
    sealed.send(secret, group="device-6")
    bodies = raw_bodies(queue_url)
    assert bodies and all(MAGIC in b or b"RlNRM" in b for b in bodies)   # raw or base64 of the magic
    assert not any(b"Ramesh" in b or b"HbA1c" in b for b in bodies)
    [m] = receive_all(sealed, 1)
    assert m.body == secret
    sealed.ack([m.receipt])
