"""The STOMP backend against a real ActiveMQ (ci/activemq.sh): what the broker itself must do —
persistence across a restart, client-individual acks, redelivery, its dead-letter queue, message
groups, a consumer that dies. The shared behaviour suite (test_behaviour.py) covers the rest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from fieldsync.errors import BrokerUnavailable, ConfigError, QueueClosed
from fieldsync.queue.embedded import Message, QueueDepth, open_queue
from fieldsync.queue.stomp import StompQueue, open_stomp_queue
from stomp_fixtures import REPO, browse_bodies, run_broker_script


def receive_n(queue, count: int, timeout: float = 10.0, **options) -> list[Message]:
    """`count` messages from `queue` (the broker pushes them one by one), or fail after `timeout`."""
    got: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"received {len(got)} of {count} messages within {timeout} s"
        got += queue.receive(count - len(got), wait_seconds=remaining, **options)
    return got


@pytest.fixture
def opened(stomp_queue_url):
    """`open(**options)`: queue objects on the test's queue, closed after the test."""
    queues: list[StompQueue] = []

    def open_(**options) -> StompQueue:
        queue = open_queue(stomp_queue_url, **options)
        queues.append(queue)
        return queue

    yield open_
    for queue in queues:
        queue.close()


def test_url_names_the_queue_and_options_override_the_query():
    queue = open_stomp_queue("stomp+ssl://broker.example:61617/fieldsync.push?max_receives=7&prefetch=3",
                             max_receives=4)   # no connection until it is used
    assert queue.max_receives == 4
    assert repr(queue) == "StompQueue(stomp+ssl://broker.example:61617/fieldsync.push)"
    assert repr(open_stomp_queue("stomp+ssl://broker.example/q")) == "StompQueue(stomp+ssl://broker.example:61614/q)"
    with pytest.raises(ConfigError, match="names its queue"):
        open_stomp_queue("stomp://127.0.0.1:61613/")
    with pytest.raises(ConfigError, match="unknown STOMP queue option 'visibility'"):
        open_stomp_queue("stomp://127.0.0.1:61613/q?visibility=3")
    with pytest.raises(ConfigError, match="max_receives=.* is not a int"):
        open_stomp_queue("stomp://127.0.0.1:61613/q?max_receives=many")
    with pytest.raises(ConfigError, match="at least 1"):
        open_stomp_queue("stomp://127.0.0.1:61613/q", max_receives=0)


def test_stomp_ssl_verifies_the_broker_and_carries_messages(stomp_tls_url):
    with open_queue(stomp_tls_url) as queue:
        message_id = queue.send(b"sealed anyway", group="device-1")
        [message] = receive_n(queue, 1)
        assert (message.id, message.body) == (message_id, b"sealed anyway")
        queue.ack([message.receipt])
        assert queue.pending() == 0
    # without the broker's certificate as CA, verification fails: no connection, ever
    untrusted = stomp_tls_url.partition("?")[0]
    with open_queue(untrusted, reconnect_timeout=0.3) as queue, pytest.raises(BrokerUnavailable):
        queue.send(b"never sent")


def test_binary_bodies_are_stored_by_the_broker_as_sent(opened, stomp_queue_url):
    queue = opened()
    body = bytes(range(256)) * 3 + b"\0\n\0"     # NULs end STOMP frames unless content-length says otherwise
    first, second = queue.send_batch([(body, "device-1"), (b"", None)])
    assert browse_bodies(stomp_queue_url) == [body, b""]   # the receipt came after the broker stored both
    got = receive_n(queue, 2)
    assert [(m.id, m.body, m.group, m.receive_count) for m in got] == [
        (first, body, "device-1", 1), (second, b"", None, 1)]
    assert all(abs(m.enqueued_at - time.time()) < 60 for m in got)
    queue.ack([m.receipt for m in got])
    assert queue.pending() == 0


def test_acking_one_of_two_deliveries_leaves_the_other_with_the_broker(opened, stomp_queue_url):
    queue = opened()
    queue.send_batch([(b"one", None), (b"two", None)])
    one, two = receive_n(queue, 2)
    queue.ack([one.receipt])
    assert browse_bodies(stomp_queue_url) == [b"two"]    # client-individual: only that one is gone
    queue.ack([one.receipt])                             # a stale receipt is a no-op
    queue.close()                                        # the consumer goes without acking `two`
    with pytest.raises(QueueClosed):
        queue.ack([two.receipt])
    [again] = receive_n(opened(), 1)
    assert (again.id, again.body, again.receive_count) == (two.id, b"two", 2)   # `redelivered: true`


def test_release_redelivers_with_one_more_receive_and_the_group_waits(opened):
    queue = opened(max_receives=3)
    queue.send_batch([(b"first", "device-1"), (b"second", "device-1")])
    [first] = receive_n(queue, 1)
    assert first.body == b"first"
    started = time.monotonic()
    queue.release([first.receipt], delay=1.0)
    queue.ack([first.receipt])                           # stale since the release: acks nothing
    # the group's next message is not handed out meanwhile: `first` comes back first, after the delay
    [again] = receive_n(queue, 1)
    assert time.monotonic() - started >= 1.0
    assert (again.id, again.body, again.receive_count) == (first.id, b"first", 2)
    queue.ack([again.receipt])
    [second] = receive_n(queue, 1)
    assert (second.body, second.receive_count) == (b"second", 1)
    queue.ack([second.receipt])
    assert queue.pending() == 0


def test_a_delivery_not_acked_within_its_visibility_timeout_is_handed_out_again(opened):
    queue = opened()
    queue.send(b"slow", group="device-1")
    [first] = receive_n(queue, 1, visibility_timeout=0.2)
    [again] = receive_n(queue, 1, visibility_timeout=30)
    assert (again.id, again.receive_count) == (first.id, 2)
    queue.extend(first.receipt, 60)                      # stale: does not touch the new delivery
    queue.ack([first.receipt])
    assert queue.pending() == 1
    queue.ack([again.receipt])
    assert queue.pending() == 0


def test_after_max_receives_the_broker_dead_letters_it_and_replay_brings_it_back(opened, stomp_queue_url):
    queue = opened(max_receives=2)
    doomed_id, _ = queue.send_batch([(b"doomed", "device-1"), (b"next", "device-1")])
    for count in (1, 2):
        [doomed] = receive_n(queue, 1)
        assert (doomed.id, doomed.receive_count) == (doomed_id, count)
        queue.release([doomed.receipt])                  # the second release NACKs it
    [following] = receive_n(queue, 1)                    # its group moves on
    assert following.body == b"next"
    queue.ack([following.receipt])
    assert browse_bodies(stomp_queue_url, dead=True) == [b"doomed"]   # the broker's DLQ.<queue>
    [dead] = queue.dead_letters()
    assert (dead.id, dead.body, dead.group, dead.receipt, dead.receive_count) == (
        doomed_id, b"doomed", "device-1", "", 2)
    assert queue.depth() == QueueDepth(visible=0, in_flight=0, dead=1)
    assert queue.replay_dead(["not-a-dead-letter"]) == 0
    assert queue.replay_dead([doomed_id]) == 1
    assert queue.dead_letters() == []
    [back] = receive_n(queue, 1)
    assert (back.id, back.body, back.group, back.receive_count) == (doomed_id, b"doomed", "device-1", 1)
    queue.ack([back.receipt])
    assert queue.depth() == QueueDepth(visible=0, in_flight=0, dead=0)


def test_message_groups_keep_each_device_in_order_across_consumers(opened):
    consumers = [opened(prefetch=3), opened(prefetch=3)]
    for consumer in consumers:
        assert consumer.receive(1) == []                 # both subscribed before anything is sent
    producer = opened()
    sent = [(f"{device}-{n}".encode(), device) for n in range(4) for device in ("d1", "d2", "d3")]
    producer.send_batch(sent)
    seen: dict[str, list[bytes]] = {}
    deadline = time.monotonic() + 20
    while sum(map(len, seen.values())) < len(sent):
        assert time.monotonic() < deadline, f"only got {seen}"
        held = [message for consumer in consumers
                for message in consumer.receive(10, wait_seconds=0.2)]
        groups = [message.group for message in held]
        assert len(groups) == len(set(groups)), f"two messages of one device in flight at once: {groups}"
        for message in held:
            seen.setdefault(message.group, []).append(message.body)
        for consumer in consumers:
            consumer.ack([message.receipt for message in held])   # other consumers' receipts: no-ops
    assert seen == {device: [f"{device}-{n}".encode() for n in range(4)] for device in ("d1", "d2", "d3")}


def test_a_consumer_that_dies_without_acking_hands_its_message_to_another(opened, stomp_queue_url):
    queue = opened()
    message_id = queue.send(b"batch", group="device-1")
    dying = textwrap.dedent(f"""
        import os, sys
        from fieldsync.queue.embedded import open_queue
        queue = open_queue({stomp_queue_url!r})
        deadline = 20
        got = queue.receive(1, wait_seconds=deadline)
        print(got[0].id if got else "nothing", flush=True)
        os._exit(0)   # dies holding the delivery: no ack, no DISCONNECT
    """)
    result = subprocess.run([sys.executable, "-c", dying], capture_output=True, text=True, timeout=60,
                            cwd=REPO, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.stdout.strip() == message_id, result.stderr
    [again] = receive_n(queue, 1)
    assert (again.id, again.body, again.receive_count) == (message_id, b"batch", 2)
    queue.ack([again.receipt])
    assert queue.pending() == 0


def test_depth_and_pending_come_from_the_broker_statistics(opened):
    queue = opened()
    assert queue.depth() == QueueDepth(visible=0, in_flight=0, dead=0)   # a queue the broker never saw
    queue.send_batch([(b"a", "device-1"), (b"b", "device-1"), (b"c", "device-2")])
    assert queue.depth() == QueueDepth(visible=3, in_flight=0, dead=0)
    assert (queue.pending(), queue.pending("device-1"), queue.pending("device-3")) == (3, 2, 0)


def test_without_the_statistics_plugin_depth_is_unknown_and_pending_browses(opened, monkeypatch):
    import fieldsync.queue.stomp as queue_stomp
    # a destination no plugin answers for: the same silence as a broker without the plugin
    monkeypatch.setattr(queue_stomp, "_STATS_PREFIX", "NoStatistics.")
    monkeypatch.setattr(queue_stomp, "ADMIN_REPLY_TIMEOUT", 0.3)
    queue = opened()
    queue.send_batch([(b"a", "device-1"), (b"b", "device-1"), (b"c", None)])
    [held] = receive_n(queue, 1)                         # in flight: still pending
    assert queue.depth() == QueueDepth(visible=None, in_flight=None, dead=None)
    started = time.monotonic()
    assert (queue.pending(), queue.pending("device-1")) == (3, 2)
    assert time.monotonic() - started < 0.3              # not asked again: no wait for an answer
    queue.ack([held.receipt])
    assert queue.pending() == 2


def test_nothing_is_lost_across_a_broker_restart(opened, stomp_queue_url):
    """The slow one (stops and starts the JVM). Messages stored before the restart, one of them
    in flight, come back after it; a send made while the broker is down waits and reconnects."""
    producer, consumer = opened(reconnect_timeout=120), opened(reconnect_timeout=120)
    producer.send_batch([(b"before-1", "device-1"), (b"before-2", "device-1")])
    [in_flight] = receive_n(consumer, 1)
    assert in_flight.body == b"before-1"

    run_broker_script("stop")
    outcome: dict[str, object] = {}

    def send_during_outage() -> None:
        try:
            outcome["id"] = producer.send(b"during", group="device-1")
        except Exception as exc:   # reported below
            outcome["error"] = exc

    sender = threading.Thread(target=send_during_outage)
    sender.start()
    sender.join(0.5)
    assert sender.is_alive(), f"send returned while the broker was down: {outcome}"
    started = time.monotonic()
    assert consumer.receive(1, wait_seconds=0.5) == []   # a long poll in an outage just comes back empty
    assert time.monotonic() - started < 5
    run_broker_script("start")
    sender.join(120)
    assert not sender.is_alive() and "error" not in outcome, outcome

    consumer.ack([in_flight.receipt])                    # its connection died: stale, a no-op
    got = []
    for _ in range(3):                                   # one device: one message at a time
        [message] = receive_n(consumer, 1, timeout=60)
        consumer.ack([message.receipt])
        got.append(message)
    assert [m.body for m in got] == [b"before-1", b"before-2", b"during"]
    assert (got[0].id, got[2].id) == (in_flight.id, outcome["id"])
    assert consumer.pending() == 0 and consumer.dead_letters() == []
