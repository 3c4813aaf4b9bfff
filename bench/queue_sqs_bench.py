"""SQS queue throughput through moto in server mode (real HTTP on 127.0.0.1, in this process).

    python bench/queue_sqs_bench.py [--messages 1000] [--depth 50] [--body-bytes 2048] [--groups 50]
                                    [--large 20]

For a standard and a FIFO queue, in rounds of `--depth` messages: `send_batch` of 10 (one
SendMessageBatch each), then `receive(10)` + `ack` until drained; send and drain times are summed
over the rounds. Rounds keep the queue shallow, as a queue that keeps up is: moto recomputes
every queue attribute on each SendMessage (a scan of the queue), so a deep queue measures moto's
quadratic cost, not the backend. The baseline, measured in the same run against a fresh queue
of the same kind, is raw boto3 making the least calls the job needs: send_message_batch of 10
base64 bodies, receive_message of up to 10 + delete_message_batch. On FIFO the backend asks for
one message per ReceiveMessage (at most one per device per batch, docs/queues.md); the raw
baseline takes ten at a time regardless of groups, so the FIFO ratio is what that rule costs.
Then `--large` bodies of 300 KiB through the S3 claim check (no baseline: the raw equivalent is
the same calls). moto runs in this process, so its CPU time is in every figure on both sides:
these are figures of the backend's overhead against moto, not of AWS.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import time
import uuid

import boto3
from botocore.config import Config

from fieldsync.queue.sqs import open_sqs_queue

REGION = "eu-west-1"


def start_moto() -> str:
    from moto.server import ThreadedMotoServer
    import logging
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}"


def queue_url(endpoint: str, fifo: bool, bucket: bool = False) -> str:
    name = f"bench-{uuid.uuid4().hex[:10]}"
    url = f"{'sqs+fifo' if fifo else 'sqs'}://{name}?region={REGION}&endpoint_url={endpoint}&create=1"
    return url + (f"&s3_bucket=bench-{name}" if bucket else "")


def rounds(items: list, depth: int):
    for start in range(0, len(items), depth):
        yield items[start:start + depth]


def backend_rates(url: str, items: list[tuple[bytes, str | None]], depth: int) -> tuple[float, float]:
    """(send, receive+ack) messages/s through SqsQueue."""
    sending = draining = 0.0
    done = 0
    with open_sqs_queue(url) as queue:
        for round_items in rounds(items, depth):
            started = time.perf_counter()
            for start in range(0, len(round_items), 10):
                queue.send_batch(round_items[start:start + 10])
            sending += time.perf_counter() - started
            started = time.perf_counter()
            while batch := queue.receive(10, visibility_timeout=60):
                queue.ack([m.receipt for m in batch])
                done += len(batch)
            draining += time.perf_counter() - started
        if done != len(items) or queue.pending() != 0:
            raise SystemExit(f"the SQS queue delivered {done} of {len(items)} messages")
    return len(items) / sending, done / draining


def raw_rates(endpoint: str, fifo: bool, items: list[tuple[bytes, str | None]], depth: int) -> tuple[float, float]:
    """(send, receive+delete) messages/s with plain boto3 calls on a fresh queue."""
    client = boto3.session.Session().client("sqs", region_name=REGION, endpoint_url=endpoint,
                                             config=Config(retries={"mode": "standard"}))
    name = f"raw-{uuid.uuid4().hex[:10]}" + (".fifo" if fifo else "")
    attributes = {"FifoQueue": "true"} if fifo else {}
    url = client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    sending = draining = 0.0
    done = 0
    for round_items in rounds(items, depth):
        started = time.perf_counter()
        for start in range(0, len(round_items), 10):
            entries = []
            for index, (body, group) in enumerate(round_items[start:start + 10]):
                entry = {"Id": str(index), "MessageBody": base64.b64encode(body).decode()}
                if fifo:
                    entry.update(MessageGroupId=group or uuid.uuid4().hex, MessageDeduplicationId=uuid.uuid4().hex)
                entries.append(entry)
            if client.send_message_batch(QueueUrl=url, Entries=entries).get("Failed"):
                raise SystemExit("raw send failed")
        sending += time.perf_counter() - started
        started = time.perf_counter()
        while messages := client.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60,
                                                 WaitTimeSeconds=0).get("Messages"):
            for message in messages:
                base64.b64decode(message["Body"])
            client.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
            done += len(messages)
        draining += time.perf_counter() - started
    if done != len(items):
        raise SystemExit(f"raw boto3 drained {done} of {len(items)} messages")
    client.close()
    return len(items) / sending, done / draining


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=50, help="messages sent per round before draining")
    parser.add_argument("--body-bytes", type=int, default=2048)
    parser.add_argument("--groups", type=int, default=50, help="devices (FIFO groups) the messages come from")
    parser.add_argument("--large", type=int, default=20, help="300 KiB messages through the claim check")
    args = parser.parse_args(argv)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION=REGION)
    try:
        endpoint = start_moto()
    except ImportError:
        print("queue_sqs_bench: moto[server] is not installed (.venv/bin/pip install -e '.[test]')")
        return 1
    items = [(os.urandom(args.body_bytes), f"device-{i % args.groups}") for i in range(args.messages)]
    print(f"SQS through moto server mode (in process): {args.messages} messages of {args.body_bytes} bytes "
          f"from {args.groups} devices, batches of 10, rounds of {args.depth}; load {os.getloadavg()[0]:.1f}")
    for fifo in (False, True):
        kind = "FIFO" if fifo else "standard"
        raw_send, raw_drain = raw_rates(endpoint, fifo, items, args.depth)
        send, drain = backend_rates(queue_url(endpoint, fifo), items, args.depth)
        print(f"{kind:>8} send:        {send:8,.0f} messages/s   raw boto3 {raw_send:8,.0f}   "
              f"ratio {send / raw_send:.2f}")
        print(f"{kind:>8} receive+ack: {drain:8,.0f} messages/s   raw boto3 {raw_drain:8,.0f}   "
              f"ratio {drain / raw_drain:.2f}")
    if args.large:
        big = [(os.urandom(300 * 1024), f"device-{i}") for i in range(args.large)]
        send, drain = backend_rates(queue_url(endpoint, True, bucket=True), big, args.depth)
        print(f"claim check, {args.large} x 300 KiB (S3 + SQS): send {send:,.0f} messages/s, "
              f"receive+ack {drain:,.0f} messages/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
