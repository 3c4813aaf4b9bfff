"""The SQS backend against moto in server mode (real HTTP): batching, the S3 claim check, FIFO
per group, redrive to the dead-letter queue and replay, the visibility heartbeat, refused entries.
Calls are counted with botocore's event hooks on the injected boto3 session (the wire, not our
code). The shared behaviour suite (test_behaviour.py) runs the Queue contract on SQS as well."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from fieldsync.errors import ConfigError, QueueClosed, SqsSendFailed
from fieldsync.queue.embedded import QueueDepth, open_queue
from fieldsync.queue.sqs import SqsQueue, open_sqs_queue, parse_sqs_url
from sqs_fixtures import (aws_credentials, sqs_endpoint, sqs_queue_factory, sqs_queue_url,  # noqa: F401
                          sqs_raw_bodies, sqs_raw_messages, sqs_session)


@pytest.fixture
def calls(sqs_session):
    """Counts the AWS operations the session's clients send, by name (botocore event hooks)."""
    counted: Counter[str] = Counter()

    def count(model, **_):
        counted[model.name] += 1

    sqs_session.events.register("before-call.sqs", count)
    sqs_session.events.register("before-call.s3", count)
    return counted


def drain(queue, *, visibility: float = 30.0) -> list:
    """Receive and ack until the queue answers empty; the messages in the order received."""
    got = []
    while batch := queue.receive(10, visibility_timeout=visibility):
        got.extend(batch)
        queue.ack([m.receipt for m in batch])
    return got


def test_urls_and_options_are_read(sqs_endpoint):
    settings = parse_sqs_url("sqs+fifo://orders?region=eu-west-1&max_receives=4&s3_bucket=b&create=1",
                             {"endpoint_url": sqs_endpoint})
    assert (settings.queue_name, settings.fifo, settings.max_receives, settings.s3_bucket, settings.create,
            settings.default_dlq_name) == ("orders.fifo", True, 4, "b", True, "orders-dlq.fifo")
    assert parse_sqs_url("sqs://plain").fifo is False
    assert parse_sqs_url("sqs://x.fifo").fifo is True
    with pytest.raises(ConfigError, match="unknown SQS queue options"):
        parse_sqs_url("sqs://q?visibility=3")
    with pytest.raises(ConfigError, match="FIFO"):
        parse_sqs_url("sqs+fifo://q?dlq=plain-dlq")
    with pytest.raises(ConfigError, match="at least 1"):
        parse_sqs_url("sqs://q", {"max_receives": 0})


def test_a_missing_queue_is_a_config_error_unless_created(sqs_queue_factory, sqs_session):
    url = sqs_queue_factory(fifo=False, s3=False, create="0")
    with pytest.raises(ConfigError, match="cannot be opened"):
        open_sqs_queue(url, session=sqs_session)
    created = open_sqs_queue(url.replace("create=0", "create=1"), session=sqs_session, max_receives=4)
    created.close()
    with open_sqs_queue(url, session=sqs_session) as existing:   # it exists now, with its policy
        assert existing.max_receives == 4
    with pytest.raises(ConfigError, match="maxReceiveCount 4, not 2"):
        open_sqs_queue(url, session=sqs_session, max_receives=2)


def test_eleven_messages_go_in_two_batches_and_come_back_in_order(sqs_queue_factory, sqs_session, calls):
    with open_sqs_queue(sqs_queue_factory(fifo=True, s3=False), session=sqs_session) as queue:
        calls.clear()
        bodies = [b"push %d \x00\xff" % i for i in range(11)]
        ids = queue.send_batch([(body, None) for body in bodies])
        assert calls["SendMessageBatch"] == 2 and len(set(ids)) == 11
        got = drain(queue)
        assert sorted((m.id, m.body) for m in got) == sorted(zip(ids, bodies))
        assert all(m.group is None and m.receive_count == 1 for m in got)
        assert calls["DeleteMessageBatch"] >= 2          # at most ten handles per request
        assert queue.depth() == QueueDepth(visible=0, in_flight=0, dead=0)


def test_batches_also_split_by_payload_size(sqs_queue_factory, sqs_session, calls):
    with open_sqs_queue(sqs_queue_factory(fifo=False, s3=False), session=sqs_session) as queue:
        calls.clear()
        # three bodies of ~133 KiB in base64: each fits alone, two do not fit one request
        queue.send_batch([(bytes([i]) * 100_000, None) for i in range(3)])
        assert calls["SendMessageBatch"] == 3 and calls["PutObject"] == 0
        assert sorted(m.body[:1] for m in drain(queue)) == [b"\x00", b"\x01", b"\x02"]


def test_a_large_body_goes_through_s3_and_its_object_is_deleted_after_ack(
        sqs_queue_url, sqs_session, sqs_raw_bodies, sqs_raw_messages, calls):
    big = bytes(range(256)) * 1200                          # 300 KiB: over SQS's 256 KiB
    with open_sqs_queue(sqs_queue_url, session=sqs_session) as queue:
        [message_id] = queue.send_batch([(big, "device-1")])
        assert calls["PutObject"] == 1
        [raw] = sqs_raw_messages(sqs_queue_url)             # the message holds a pointer only
        assert json.loads(raw["Body"])["s3_key"] == message_id and len(raw["Body"]) < 200
        assert sqs_raw_bodies(sqs_queue_url) == [big]       # the body is the S3 object
        [message] = queue.receive(visibility_timeout=30)
        assert (message.id, message.body, message.group) == (message_id, big, "device-1")
        queue.ack([message.receipt])
        assert calls["DeleteObjects"] == 1
        assert sqs_raw_bodies(sqs_queue_url) == []          # no message, no S3 object left
        assert queue.pending() == 0


def test_a_large_body_without_a_bucket_is_refused_before_sending(sqs_queue_factory, sqs_session, calls):
    with open_sqs_queue(sqs_queue_factory(fifo=False, s3=False), session=sqs_session) as queue:
        calls.clear()
        with pytest.raises(ConfigError, match="no s3_bucket"):
            queue.send_batch([(b"small", None), (b"x" * 300_000, None)])
        assert calls["SendMessageBatch"] == 0 and queue.pending() == 0


def test_fifo_hands_out_one_message_per_group_in_send_order(sqs_queue_url, sqs_session, calls):
    queue = open_sqs_queue(sqs_queue_url, session=sqs_session)
    other = open_sqs_queue(sqs_queue_url, session=sqs_session)      # another worker process
    try:
        a1, a2, a3 = (queue.send(b"a%d" % i, group="device-a") for i in (1, 2, 3))
        b1 = queue.send(b"b1", group="device-b")
        loose = queue.send(b"loose")
        calls.clear()
        first = queue.receive(10, visibility_timeout=30)
        assert [m.id for m in first] == [a1, b1, loose]              # one of device-a, in send order
        assert calls["ReceiveMessage"] == 4                          # one each, then "nothing more"
        assert queue.receive(10, visibility_timeout=30) == []       # device-a's head is out
        assert other.receive(10, visibility_timeout=30) == []       # for every consumer
        queue.release([first[0].receipt])                           # a failing head comes first again
        [again] = queue.receive(10, visibility_timeout=30)
        assert (again.id, again.receive_count) == (a1, 2)
        queue.ack([m.receipt for m in (again, *first[1:])])
        [second] = other.receive(10, visibility_timeout=30)
        assert (second.id, second.body, second.receive_count) == (a2, b"a2", 1)
        other.ack([second.receipt])
        assert [m.id for m in drain(queue)] == [a3]
        assert queue.depth() == QueueDepth(visible=0, in_flight=0, dead=0)
    finally:
        queue.close()
        other.close()


def test_a_head_released_with_a_delay_keeps_its_group_waiting(sqs_queue_url, sqs_session):
    with open_sqs_queue(sqs_queue_url, session=sqs_session) as queue:
        head, nxt = queue.send_batch([(b"head", "device-a"), (b"next", "device-a")])
        [message] = queue.receive(visibility_timeout=30)
        queue.release([message.receipt], delay=1)
        assert queue.receive(10, visibility_timeout=30) == []       # not "next" meanwhile
        [back] = queue.receive(10, visibility_timeout=30, wait_seconds=5)
        assert (back.id, back.receive_count) == (head, 2)
        queue.ack([back.receipt])
        assert [m.id for m in drain(queue)] == [nxt]


def test_after_max_receives_a_message_is_dead_and_replay_brings_it_back(sqs_queue_url, sqs_session):
    with open_queue(sqs_queue_url, session=sqs_session, max_receives=2) as queue:
        poison = queue.send(b"poison", group="device-a")
        after = queue.send(b"after", group="device-a")
        for delivery in (1, 2):
            [message] = queue.receive(visibility_timeout=30)
            assert (message.id, message.receive_count) == (poison, delivery)
            queue.release([message.receipt])
        [message] = queue.receive(visibility_timeout=30)    # SQS moved the poison on this receive
        assert message.id == after
        queue.ack([message.receipt])
        assert queue.depth() == QueueDepth(visible=0, in_flight=0, dead=1)
        [dead] = queue.dead_letters()
        assert (dead.id, dead.body, dead.group, dead.receipt, dead.receive_count) == (
            poison, b"poison", "device-a", "", 2)
        assert [m.id for m in queue.dead_letters()] == [poison]   # looking leaves it there
        assert queue.replay_dead(["not-a-dead-letter"]) == 0
        assert queue.replay_dead([poison]) == 1
        [back] = queue.receive(visibility_timeout=30)
        assert (back.id, back.body, back.group, back.receive_count) == (poison, b"poison", "device-a", 1)
        queue.ack([back.receipt])
        assert queue.depth() == QueueDepth(visible=0, in_flight=0, dead=0)


def test_a_heartbeat_keeps_a_delivery_hidden_past_its_timeout(sqs_queue_factory, sqs_session):
    url = sqs_queue_factory(fifo=True, s3=False)
    queue = open_sqs_queue(url, session=sqs_session)
    other = open_sqs_queue(url, session=sqs_session)
    try:
        kept, behind = queue.send_batch([(b"kept", "device-a"), (b"behind", "device-a")])
        lapsed = queue.send(b"lapsed", group="device-b")
        started = time.monotonic()
        first = queue.receive(10, visibility_timeout=1)
        assert [m.id for m in first] == [kept, lapsed]
        queue.extend(first[0].receipt, 5)                    # the heartbeat; "lapsed" gets none
        seen = []
        while time.monotonic() - started < 2.5:              # well past the original timeout
            seen += other.receive(10, visibility_timeout=30, wait_seconds=1)
        assert [(m.id, m.receive_count) for m in seen] == [(lapsed, 2)]   # nothing of device-a
        queue.ack([first[0].receipt])                        # the first receipt is still good
        [nxt] = queue.receive(10, visibility_timeout=30)
        assert (nxt.id, nxt.receive_count) == (behind, 1)
        queue.ack([nxt.receipt] + [m.receipt for m in seen])
        assert queue.pending() == 0
    finally:
        queue.close()
        other.close()


def test_a_refused_batch_entry_raises(sqs_queue_factory, sqs_session):
    """SQS refuses one entry of a batch (DelaySeconds out of range, injected on the wire): the
    send raises, so the server answers 503 and the device resends; the entries SQS took are
    processed, and the ledger makes the resend's copies harmless (invariant 2)."""
    def spoil_second_entry(params, **_):
        params["Entries"][1]["DelaySeconds"] = 901

    sqs_session.events.register("before-parameter-build.sqs.SendMessageBatch", spoil_second_entry)
    with open_sqs_queue(sqs_queue_factory(fifo=False, s3=False), session=sqs_session) as queue:
        with pytest.raises(SqsSendFailed, match="refused 1 of 3"):
            queue.send_batch([(b"m%d" % i, "device-a") for i in range(3)])
        assert sorted(m.body for m in drain(queue)) == [b"m0", b"m2"]


def test_stale_receipts_are_ignored(sqs_queue_factory, sqs_session):
    with open_sqs_queue(sqs_queue_factory(fifo=False, s3=False), session=sqs_session) as queue:
        queue.send(b"x")
        [message] = queue.receive(visibility_timeout=30)
        queue.ack([message.receipt])
        queue.ack([message.receipt])                         # already deleted
        queue.extend(message.receipt, 10)
        queue.release([message.receipt])
        assert queue.pending() == 0
        with pytest.raises(NotImplementedError):
            queue.pending("device-a")


def test_open_queue_dispatches_sqs_urls(sqs_queue_url, sqs_session):
    with open_queue(sqs_queue_url, session=sqs_session) as queue:
        assert isinstance(queue, SqsQueue) and queue.fifo
