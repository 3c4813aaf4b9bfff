"""SQS fixtures: the shared moto server (tests/moto_server.py: real HTTP on 127.0.0.1, SQS and
S3 among others) for the whole test session, fake credentials, and a fresh queue, dead-letter
queue and bucket per test.

Import the fixtures where they are wanted (`from sqs_fixtures import *`): the moto server is one
per process however many modules import them. moto missing is a failure, never a skip.

    sqs_queue_url        a fresh FIFO queue with a claim-check bucket: sqs+fifo://…&create=1
    sqs_queue_factory    make(fifo=True, s3=True, **query) -> URL of another fresh queue
    sqs_raw_bodies       read(url) -> list[bytes]: the payloads stored in SQS and S3 (raw boto3)
    sqs_raw_messages     read(url) -> list[dict]: the SQS messages themselves (raw boto3)
    sqs_session          a boto3 Session on the fake credentials (hooks for counting calls)
"""

from __future__ import annotations

import base64
import uuid
from typing import Callable
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from moto_server import REGION, aws_credentials, moto_endpoint_url, shared as _shared

__all__ = ["aws_credentials", "sqs_endpoint", "sqs_queue_factory", "sqs_queue_url", "sqs_raw_bodies",
           "sqs_raw_messages", "sqs_session"]


@pytest.fixture(scope="session")
def sqs_endpoint() -> str:
    """The moto server's URL (SQS and S3 on one port; tests/moto_server.py)."""
    return moto_endpoint_url()


@pytest.fixture
def sqs_session(aws_credentials):
    """A boto3 Session of this test's own on the fake credentials (event hooks registered on it
    stay in the test). It shares the loaded service models with the others: loading them is most
    of what a new session's first client costs."""
    import boto3
    import botocore.session
    core = botocore.session.get_session()
    core.register_component("data_loader", _shared("loader", lambda: core.get_component("data_loader")))
    return boto3.session.Session(botocore_session=core, region_name=REGION)


def _clients(endpoint: str):
    """Plain boto3 clients for the fixtures' own reads and clean-ups, made once per endpoint."""
    def make():
        import boto3
        from botocore.config import Config
        session = boto3.session.Session(region_name=REGION, aws_access_key_id="testing",
                                        aws_secret_access_key="testing")
        config = Config(s3={"addressing_style": "path"})
        return (session.client("sqs", endpoint_url=endpoint, config=config),
                session.client("s3", endpoint_url=endpoint, config=config))
    return _shared(f"clients {endpoint}", make)


@pytest.fixture
def sqs_queue_factory(sqs_endpoint, aws_credentials):
    """make(fifo=True, s3=True, **query) -> the URL of a fresh queue (create=1: the backend makes
    it, its dead-letter queue and bucket); all of them are deleted after the test."""
    made: list[dict[str, str]] = []

    def make(*, fifo: bool = True, s3: bool = True, **query: object) -> str:
        token = uuid.uuid4().hex[:12]
        name = f"fs-{token}" + (".fifo" if fifo else "")
        params = {"region": REGION, "endpoint_url": sqs_endpoint, "create": "1",
                  "dlq": f"fs-{token}-dlq" + (".fifo" if fifo else "")}
        if s3:
            params["s3_bucket"] = f"fs-claims-{token}"
        params.update({key: str(value) for key, value in query.items()})
        made.append({"queue": name, "dlq": params["dlq"], "bucket": params.get("s3_bucket", "")})
        return f"{'sqs+fifo' if fifo else 'sqs'}://{name}?{urlencode(params)}"

    yield make
    sqs, s3 = _clients(sqs_endpoint)
    for names in made:
        for queue in (names["queue"], names["dlq"]):
            try:
                sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=queue)["QueueUrl"])
            except sqs.exceptions.QueueDoesNotExist:
                pass
        if names["bucket"]:
            try:
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=names["bucket"]):
                    for item in page.get("Contents", []):
                        s3.delete_object(Bucket=names["bucket"], Key=item["Key"])
                s3.delete_bucket(Bucket=names["bucket"])
            except s3.exceptions.NoSuchBucket:
                pass


@pytest.fixture
def sqs_queue_url(sqs_queue_factory) -> str:
    """A fresh FIFO queue (ordering per group, as the server wants) with a claim-check bucket."""
    return sqs_queue_factory(fifo=True, s3=True)


def _scan(sqs, queue_url: str) -> list[dict]:
    """Every message of a queue, received with raw boto3 and made visible again. Each look adds
    one to the messages' receive counts (SQS cannot peek)."""
    seen: dict[str, dict] = {}
    while True:
        answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=30,
                                     WaitTimeSeconds=0, MessageAttributeNames=["All"])
        page = [m for m in answer.get("Messages", []) if m["MessageId"] not in seen]
        if not page:
            break
        seen.update((m["MessageId"], m) for m in page)
    for message in seen.values():
        sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"],
                                      VisibilityTimeout=0)
    return list(seen.values())


def _read_url(url: str, endpoint: str, pick: Callable) -> list:
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    name = parts.netloc
    if parts.scheme == "sqs+fifo" and not name.endswith(".fifo"):
        name += ".fifo"
    sqs, s3 = _clients(query.get("endpoint_url", endpoint))
    messages = [message for queue in (name, query.get("dlq")) if queue
                for message in _scan(sqs, sqs.get_queue_url(QueueName=queue)["QueueUrl"])]
    return pick(messages, s3, query.get("s3_bucket"))


@pytest.fixture
def sqs_raw_messages(sqs_endpoint, aws_credentials) -> Callable[[str], list[dict]]:
    """read(url) -> every SQS message (boto3's dicts, with MessageAttributes) of the queue at
    `url` and of its dead-letter queue, read with plain boto3. Each read adds one to their
    receive counts (SQS cannot peek)."""
    return lambda url: _read_url(url, sqs_endpoint, lambda messages, s3, bucket: messages)


@pytest.fixture
def sqs_raw_bodies(sqs_endpoint, aws_credentials) -> Callable[[str], list[bytes]]:
    """read(url) -> the payloads stored for the queue at `url`, read with plain boto3: every
    inline message body of the queue and its dead-letter queue, base64-decoded (base64 alone
    would hide plaintext from a search, so the check could never fail), and every object in
    the claim-check bucket (a claim-checked message holds only a pointer to one of them)."""

    def pick(messages: list[dict], s3, bucket: str | None) -> list[bytes]:
        bodies = [base64.b64decode(m["Body"]) for m in messages
                  if "fieldsync_claim" not in m.get("MessageAttributes", {})]
        if bucket:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for item in page.get("Contents", []):
                    bodies.append(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        return bodies

    return lambda url: _read_url(url, sqs_endpoint, pick)
