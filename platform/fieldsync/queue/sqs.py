"""Amazon SQS behind the `Queue` interface (docs/queues.md, "Amazon SQS").

    sqs://<queue-name>?region=eu-west-1&dlq=<name>&max_receives=5&s3_bucket=<bucket>&create=1
    sqs+fifo://<queue-name>        (or a name ending in .fifo): a FIFO queue

How the interface maps onto SQS:

* **Durable send** (invariant 1). `send_batch` returns only after SQS accepted every message
  (SendMessageBatch, ten entries or 256 KiB per request). If any entry fails it raises
  `SqsSendFailed`, so the server does not say "received"; entries that did go in are processed,
  and the device's resend is made harmless by the ledger (invariant 2).
* **Bodies** are opaque bytes (the `EncryptedQueue` wrapper seals them first), sent as base64
  text. A body that does not fit in `max_message_bytes` with its attributes goes to S3 first
  (`s3_bucket`, key = the message id) and the message carries a small JSON pointer instead
  (claim check). `receive` fetches it back; `ack` deletes the object after DeleteMessage.
* **Ids and attributes.** The message id is ours (a uuid in the attribute `fieldsync_id`), so it
  survives a dead-letter replay; the group (the device id, not PHI) rides in `fieldsync_group`.
  Nothing else: attributes carry ids, groups and the claim-check flag only.
* **FIFO per group** (sync-design.md decision 2) needs a FIFO queue: MessageGroupId = the group
  (ungrouped messages get a group of their own). SQS hands out nothing more of a group while one
  of its messages is in flight, including one released with a delay, which is the interface's
  rule. But one ReceiveMessage may return *several* messages of a group, and the listener pool
  must get at most one per group (a failing head must not be overtaken by its successor). So on
  a FIFO queue `receive` asks for one message per ReceiveMessage and repeats (without waiting)
  until the batch is full or SQS has nothing more: every further message comes from another
  group. Receiving several and giving the rest back would count a receive against each of them
  every time their head failed, and a poisoned head would drag them into the dead letters.
  A standard queue (`sqs://name`) receives ten per request and keeps no order at all.
* **MessageDeduplicationId is a fresh uuid per SendMessage entry**, never the message id or a
  hash of the body: SQS silently drops a FIFO message whose deduplication id it saw in the last
  five minutes, so a replayed dead letter or a device's resent batch must not reuse one. A retry
  of the *same request* by botocore keeps its ids, which is exactly the duplicate SQS should drop.
* **At-least-once.** Visibility timeouts are SQS's own (whole seconds, rounded up). `receive_count`
  is SQS's ApproximateReceiveCount. The RedrivePolicy moves a message to the dead-letter queue
  on the receive after its `max_receives`-th delivery.
* **Receipts** are SQS ReceiptHandles; a claim-checked message's receipt adds its S3 key after a
  space (`"<handle> <key>"`), so any object can ack it. SQS does not promise the interface's
  stale-receipt rule: an old handle may still delete or re-time a redelivered message. That
  costs nothing here: `ack` follows a finished handler, so the redelivery was a duplicate anyway,
  and failures SQS does report for stale handles (invalid, expired, not in flight) are ignored.
* **Dead letters.** SQS cannot peek: `dead_letters` receives from the dead-letter queue with a
  short visibility and then makes what it saw visible again at once. Each look therefore adds one
  to the messages' ApproximateReceiveCount (reported minus the look's own receive), and on a
  FIFO dead-letter queue a look shows at most one receive's worth of each group.
  `replay_dead` receives, sends to the source queue (same body, id and group; a fresh
  deduplication id), then deletes from the dead-letter queue: a crash in between duplicates,
  never loses.
* **pending(group)** cannot be answered by SQS (no per-group counts): only the total.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import parse_qs, urlsplit

from fieldsync.errors import ConfigError, QueueClosed, SqsError, SqsSendFailed
from fieldsync.queue.embedded import DEFAULT_MAX_RECEIVES, Message, QueueDepth

__all__ = ["SqsError", "SqsQueue", "SqsSendFailed", "open_sqs_queue"]

log = logging.getLogger("fieldsync.sync.queue_sqs")

BATCH_ENTRIES = 10                  # SQS: entries per SendMessageBatch / DeleteMessageBatch / …
MAX_WAIT_SECONDS = 20               # SQS: longest ReceiveMessage long poll
MAX_VISIBILITY_SECONDS = 43_200     # SQS: 12 hours
DEFAULT_MAX_MESSAGE_BYTES = 256 * 1024  # body + attributes; also the payload of one batch request
SCAN_VISIBILITY_SECONDS = 30        # a dead-letter scan hides what it has seen this long
SCAN_WAIT_SECONDS = 1               # a scan's polls wait, so SQS asks all its servers (not a sample)

ATTR_ID = "fieldsync_id"
ATTR_GROUP = "fieldsync_group"
ATTR_CLAIM = "fieldsync_claim"      # "s3": the body is a pointer to an S3 object
_ATTRIBUTE_NAMES = [ATTR_ID, ATTR_GROUP, ATTR_CLAIM]
_SYSTEM_ATTRIBUTES = ["ApproximateReceiveCount", "SentTimestamp", "MessageGroupId"]
# what SQS answers for a receipt handle that no longer names a delivery (query and JSON spellings)
_STALE_CODES = ("ReceiptHandleIsInvalid", "MessageNotInflight")

_OPTIONS = ("region", "endpoint_url", "dlq", "max_receives", "s3_bucket", "create", "max_message_bytes",
            "max_pool_connections")


@dataclass(frozen=True)
class SqsSettings:
    """What an `sqs://` URL and its options say."""

    queue_name: str
    fifo: bool
    region: str | None = None
    endpoint_url: str | None = None
    dlq_name: str | None = None
    max_receives: int | None = None     # None: keep what an existing queue's RedrivePolicy says
    s3_bucket: str | None = None
    create: bool = False
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_pool_connections: int = 32

    @property
    def default_dlq_name(self) -> str:
        base = self.queue_name.removesuffix(".fifo")
        return f"{base}-dlq.fifo" if self.fifo else f"{base}-dlq"


def parse_sqs_url(url: str, options: dict[str, Any] | None = None) -> SqsSettings:
    """Settings from `sqs://name?…` plus keyword options (options win over the query)."""
    parts = urlsplit(url)
    if parts.scheme not in ("sqs", "sqs+fifo"):
        raise ConfigError(f"not an SQS queue URL: {url!r}")
    name = parts.netloc
    if not name or parts.path not in ("", "/"):
        raise ConfigError("an SQS queue URL is sqs://<queue-name>?region=…, not " + repr(url))
    values: dict[str, Any] = {}
    for key, given in parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)).items():
        if len(given) != 1:
            raise ConfigError(f"the SQS queue URL gives {key!r} {len(given)} times")
        values[key] = given[0]
    values.update(options or {})
    unknown = sorted(set(values) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown SQS queue options {unknown}; known: {', '.join(_OPTIONS)}")
    fifo = parts.scheme == "sqs+fifo" or name.endswith(".fifo")
    if fifo and not name.endswith(".fifo"):
        name += ".fifo"  # SQS requires it of FIFO queue names
    try:
        settings = SqsSettings(
            queue_name=name, fifo=fifo, region=values.get("region") or None,
            endpoint_url=values.get("endpoint_url") or None, dlq_name=values.get("dlq") or None,
            max_receives=None if values.get("max_receives") in (None, "") else int(values["max_receives"]),
            s3_bucket=values.get("s3_bucket") or None, create=_flag(values.get("create", False)),
            max_message_bytes=int(values.get("max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)),
            max_pool_connections=int(values.get("max_pool_connections", 32)))
    except ValueError as exc:
        raise ConfigError(f"invalid SQS queue option: {exc}") from None
    if settings.max_receives is not None and settings.max_receives < 1:
        raise ConfigError(f"max_receives must be at least 1, not {settings.max_receives}")
    if settings.dlq_name and settings.fifo != settings.dlq_name.endswith(".fifo"):
        raise ConfigError("the dead-letter queue of a FIFO queue is a FIFO queue (name ending in .fifo), "
                          "and that of a standard queue is not")
    return settings


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"create must be 1 or 0, not {value!r}")


def open_sqs_queue(url: str, *, session: Any = None, **options: Any) -> "SqsQueue":
    """The SQS queue at `url` (see the module docstring). Credentials come from boto3's usual
    chain (environment, profile, instance role) of `session` (a `boto3.session.Session`; when
    None, one session shared by this process's queues). Options: region, endpoint_url, dlq,
    max_receives, s3_bucket, create, max_message_bytes, max_pool_connections."""
    return SqsQueue(parse_sqs_url(url, options), session=session)


_shared_session: Any = None
_shared_session_lock = threading.Lock()


def _default_session() -> Any:
    """One boto3 session for the queues opened without one, made on first use: a session loads
    the service models once, so the next queue's clients cost milliseconds instead of a few
    hundred (boto3.client() does the same with boto3's default session)."""
    global _shared_session
    import boto3
    with _shared_session_lock:
        if _shared_session is None:
            _shared_session = boto3.session.Session()
        return _shared_session


@dataclass
class _Outgoing:
    """One message of a send, ready for SendMessageBatch."""

    message_id: str
    group: str | None
    body_text: str
    attributes: dict[str, dict[str, str]]
    s3_key: str | None = None
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.body_text.encode()) + _attributes_size(self.attributes)


def _attributes_size(attributes: dict[str, dict[str, str]]) -> int:
    """How SQS counts message attributes against the size limit: name, type and value."""
    return sum(len(name.encode()) + len(value["DataType"].encode()) + len(value["StringValue"].encode())
               for name, value in attributes.items())


def _string(value: str) -> dict[str, str]:
    return {"DataType": "String", "StringValue": value}


def _whole_seconds(seconds: float, name: str) -> int:
    """SQS counts visibility in whole seconds: round up, so nothing reappears early."""
    if seconds < 0:
        raise ValueError(f"{name} must not be negative, not {seconds}")
    return min(MAX_VISIBILITY_SECONDS, math.ceil(seconds))


def _split_receipt(receipt: str) -> tuple[str, str | None]:
    """`(receipt handle, S3 key or None)` of a receipt."""
    if not isinstance(receipt, str) or not receipt:
        raise ValueError(f"not a receipt of an SQS queue: {receipt!r}")
    handle, _, key = receipt.partition(" ")
    return handle, key or None


def _chunks(items: list, size: int = BATCH_ENTRIES) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", type(exc).__name__))


def _is_stale(code: str, message: str = "") -> bool:
    """True when SQS refused a receipt handle because it no longer names a delivery."""
    if code.endswith(_STALE_CODES):
        return True
    # an expired handle is reported as InvalidParameterValue "… receipt handle has expired"
    return code == "InvalidParameterValue" and "receipt handle" in message.lower()


class SqsQueue:
    """One SQS queue and its dead-letter queue; see the module docstring. Thread-safe: the
    listener pool's threads share one object (boto3 clients are thread-safe)."""

    def __init__(self, settings: SqsSettings, *, session: Any = None) -> None:
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        self._settings = settings
        self._client_errors = (ClientError, BotoCoreError)
        self._lock = threading.Lock()
        self._closed = False
        session = session or _default_session()
        config = Config(region_name=settings.region or session.region_name,
                        retries={"mode": "standard", "max_attempts": 5},
                        connect_timeout=10, read_timeout=MAX_WAIT_SECONDS + 20,
                        max_pool_connections=settings.max_pool_connections,
                        s3={"addressing_style": "path"} if settings.endpoint_url else None)
        if not config.region_name:
            raise ConfigError("the SQS queue needs a region: ?region=eu-west-1 or AWS_DEFAULT_REGION")
        self._sqs = session.client("sqs", endpoint_url=settings.endpoint_url, config=config)
        self._s3 = (session.client("s3", endpoint_url=settings.endpoint_url, config=config)
                    if settings.s3_bucket else None)
        try:
            self._queue_url, self._dlq_url, self._max_receives = self._resolve()
        except BaseException:
            self._close_clients()
            raise

    def __repr__(self) -> str:
        return f"SqsQueue({self._settings.queue_name!r})"

    def __enter__(self) -> SqsQueue:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    @property
    def max_receives(self) -> int:
        return self._max_receives

    @property
    def fifo(self) -> bool:
        return self._settings.fifo

    @property
    def queue_url(self) -> str:
        return self._queue_url

    @property
    def dead_letter_queue_url(self) -> str:
        return self._dlq_url

    # -- setting up --

    def _call(self, what: str, method: Callable[..., dict], **params: Any) -> dict:
        """One AWS request; its failure becomes an SqsError naming the operation and AWS's code."""
        try:
            return method(**params)
        except self._client_errors as exc:
            raise SqsError(f"{what} failed ({_error_code(exc)})") from exc

    def _resolve(self) -> tuple[str, str, int]:
        """(queue URL, dead-letter queue URL, max_receives), creating them when asked to."""
        settings = self._settings
        if settings.create:
            return self._create()
        try:
            queue_url = self._sqs.get_queue_url(QueueName=settings.queue_name)["QueueUrl"]
        except self._client_errors as exc:
            raise ConfigError(f"the SQS queue {settings.queue_name!r} cannot be opened ({_error_code(exc)}); "
                              "create it (and its dead-letter queue), or pass create=1") from exc
        attributes = self._call("GetQueueAttributes", self._sqs.get_queue_attributes, QueueUrl=queue_url,
                                AttributeNames=["RedrivePolicy", "FifoQueue"])["Attributes"]
        if (attributes.get("FifoQueue") == "true") != settings.fifo:
            raise ConfigError(f"the SQS queue {settings.queue_name!r} is "
                              f"{'a FIFO' if attributes.get('FifoQueue') == 'true' else 'a standard'} queue; "
                              "FIFO queues are named <name>.fifo")
        if "RedrivePolicy" not in attributes:
            raise ConfigError(f"the SQS queue {settings.queue_name!r} has no RedrivePolicy: messages that keep "
                              "failing would never leave it; give it a dead-letter queue (or pass create=1)")
        policy = json.loads(attributes["RedrivePolicy"])
        dlq_name = policy["deadLetterTargetArn"].rsplit(":", 1)[-1]
        if settings.dlq_name and settings.dlq_name != dlq_name:
            raise ConfigError(f"the SQS queue {settings.queue_name!r} dead-letters to {dlq_name!r}, "
                              f"not to {settings.dlq_name!r}")
        max_receives = int(policy["maxReceiveCount"])
        if settings.max_receives is not None and settings.max_receives != max_receives:
            raise ConfigError(f"the SQS queue {settings.queue_name!r} has maxReceiveCount {max_receives}, "
                              f"not {settings.max_receives} (change its RedrivePolicy, or pass create=1)")
        dlq_url = self._call("GetQueueUrl", self._sqs.get_queue_url, QueueName=dlq_name)["QueueUrl"]
        return queue_url, dlq_url, max_receives

    def _create(self) -> tuple[str, str, int]:
        settings = self._settings
        max_receives = settings.max_receives or DEFAULT_MAX_RECEIVES
        fifo = {"FifoQueue": "true", "ContentBasedDeduplication": "false"} if settings.fifo else {}
        dlq_url = self._call("CreateQueue", self._sqs.create_queue,
                             QueueName=settings.dlq_name or settings.default_dlq_name,
                             Attributes={**fifo, "MessageRetentionPeriod": "1209600"})["QueueUrl"]
        dlq_arn = self._call("GetQueueAttributes", self._sqs.get_queue_attributes, QueueUrl=dlq_url,
                             AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives})
        try:
            queue_url = self._sqs.create_queue(QueueName=settings.queue_name,
                                               Attributes={**fifo, "RedrivePolicy": redrive})["QueueUrl"]
        except self._client_errors as exc:
            if not _error_code(exc).endswith("QueueAlreadyExists"):
                raise SqsError(f"CreateQueue failed ({_error_code(exc)})") from exc
            # it exists with other attributes: give it this dead-letter queue and count
            queue_url = self._call("GetQueueUrl", self._sqs.get_queue_url,
                                   QueueName=settings.queue_name)["QueueUrl"]
            self._call("SetQueueAttributes", self._sqs.set_queue_attributes, QueueUrl=queue_url,
                       Attributes={"RedrivePolicy": redrive})
        if self._s3 is not None:
            self._create_bucket()
        return queue_url, dlq_url, max_receives

    def _create_bucket(self) -> None:
        region = self._s3.meta.region_name
        params: dict[str, Any] = {"Bucket": self._settings.s3_bucket}
        if region != "us-east-1":
            params["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self._s3.create_bucket(**params)
        except self._client_errors as exc:
            if _error_code(exc) != "BucketAlreadyOwnedByYou":
                raise SqsError(f"CreateBucket failed ({_error_code(exc)})") from exc

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosed(f"{self!r} is closed")

    # -- sending --

    def send(self, body: bytes, *, group: str | None = None) -> str:
        """Enqueue `body`; returns once SQS has it (invariant 1)."""
        return self.send_batch([(body, group)])[0]

    def send_batch(self, items: Sequence[tuple[bytes, str | None]]) -> list[str]:
        """Enqueue every `(body, group)`; returns their ids in order once SQS accepted all of
        them, or raises SqsSendFailed (some may have gone in: the ledger makes a resend harmless)."""
        outgoing = [self._outgoing(body, group) for body, group in items]
        if not outgoing:
            return []
        self._check_open()
        limit = self._settings.max_message_bytes
        large = [item for item in outgoing if item.size > limit]
        if large and self._s3 is None:
            raise ConfigError(f"a message of {large[0].size} bytes does not fit in SQS ({limit} bytes with "
                              "its attributes) and the queue has no s3_bucket for the claim check")
        unsent = {item.message_id: item for item in outgoing}
        try:
            for item, body in zip(outgoing, (body for body, _ in items)):
                if item.size > limit:
                    self._check_in(item, bytes(body))
            for chunk in self._send_chunks(outgoing):
                self._send_chunk(self._queue_url, chunk)
                for item in chunk:
                    del unsent[item.message_id]
        except BaseException:
            self._delete_objects([item.s3_key for item in unsent.values() if item.s3_key])
            raise
        return [item.message_id for item in outgoing]

    def _outgoing(self, body: bytes, group: str | None) -> _Outgoing:
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError(f"a message body is bytes, not {type(body).__name__}")
        if group is not None and not isinstance(group, str):
            raise TypeError(f"a message group is a str or None, not {type(group).__name__}")
        message_id = uuid.uuid4().hex
        attributes = {ATTR_ID: _string(message_id)}
        if group is not None:
            attributes[ATTR_GROUP] = _string(group)
        return _Outgoing(message_id, group, base64.b64encode(body).decode("ascii"), attributes)

    def _check_in(self, item: _Outgoing, body: bytes) -> None:
        """Claim check: the body goes to S3 (durably, before the message exists); the message
        carries a pointer."""
        bucket = self._settings.s3_bucket
        self._call("PutObject", self._s3.put_object, Bucket=bucket, Key=item.message_id, Body=body,
                   ContentType="application/octet-stream")
        item.s3_key = item.message_id
        item.attributes[ATTR_CLAIM] = _string("s3")
        item.body_text = json.dumps({"s3_bucket": bucket, "s3_key": item.s3_key})
        item.size = len(item.body_text.encode()) + _attributes_size(item.attributes)

    def _send_chunks(self, outgoing: list[_Outgoing]) -> Iterator[list[_Outgoing]]:
        """At most ten entries and `max_message_bytes` of payload per SendMessageBatch."""
        chunk: list[_Outgoing] = []
        size = 0
        for item in outgoing:
            if chunk and (len(chunk) == BATCH_ENTRIES or size + item.size > self._settings.max_message_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += item.size
        if chunk:
            yield chunk

    def _entry(self, index: int, message_id: str, group: str | None, body_text: str,
               attributes: dict[str, dict[str, str]]) -> dict[str, Any]:
        entry: dict[str, Any] = {"Id": str(index), "MessageBody": body_text, "MessageAttributes": attributes}
        if self._settings.fifo:
            # an ungrouped message is a group of its own, so it waits for nothing
            entry["MessageGroupId"] = group if group is not None else message_id
            entry["MessageDeduplicationId"] = uuid.uuid4().hex  # fresh per send: see the module docstring
        return entry

    def _send_chunk(self, queue_url: str, chunk: list[_Outgoing]) -> None:
        entries = [self._entry(index, item.message_id, item.group, item.body_text, item.attributes)
                   for index, item in enumerate(chunk)]
        try:
            answer = self._sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        except self._client_errors as exc:
            raise SqsSendFailed(f"SendMessageBatch of {len(entries)} messages failed ({_error_code(exc)})") from exc
        failed = answer.get("Failed") or []
        if failed:
            codes = sorted({entry.get("Code", "?") for entry in failed})
            raise SqsSendFailed(f"SQS refused {len(failed)} of {len(entries)} messages ({', '.join(codes)})")

    # -- receiving --

    def receive(self, max_messages: int = 10, *, visibility_timeout: float = 60.0,
                wait_seconds: float = 0.0) -> list[Message]:
        """Up to `max_messages` messages (one per group on a FIFO queue) hidden for
        `visibility_timeout` seconds; long-polls up to `wait_seconds` (in polls of at most 20 s,
        each rounded up to whole seconds) while none comes."""
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")
        visibility = _whole_seconds(visibility_timeout, "visibility_timeout")
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        # FIFO: one per request, so a batch never holds two of a group (module docstring)
        per_request = 1 if self._settings.fifo else BATCH_ENTRIES
        self._check_open()
        messages: list[Message] = []
        while True:
            # long-poll while the batch is empty; once something came, take only what is there
            wait = 0 if messages else min(MAX_WAIT_SECONDS, max(0, math.ceil(deadline - time.monotonic())))
            answer = self._call("ReceiveMessage", self._sqs.receive_message, QueueUrl=self._queue_url,
                                MaxNumberOfMessages=min(per_request, max_messages - len(messages)),
                                WaitTimeSeconds=wait, VisibilityTimeout=visibility,
                                MessageSystemAttributeNames=_SYSTEM_ATTRIBUTES,
                                MessageAttributeNames=_ATTRIBUTE_NAMES)
            if self._closed:
                return []  # what came back reappears after its visibility timeout
            raws = answer.get("Messages") or []
            messages.extend(self._decode_all(raws))
            if len(messages) >= max_messages or (raws and not self._settings.fifo):
                return messages
            if not raws and (messages or time.monotonic() >= deadline):
                return messages

    def _decode_all(self, raws: list[dict]) -> list[Message]:
        messages = []
        for raw in raws:
            message = self._decode(raw)
            if message is not None:
                messages.append(message)
        return messages

    def _decode(self, raw: dict, *, dead: bool = False) -> Message | None:
        """A received SQS message as a Message; None (logged) when it cannot be read: a foreign
        message stays put and reaches the dead letters after max_receives, and a claim check
        whose object is gone was acked already (see `_fetch`)."""
        attributes = raw.get("MessageAttributes") or {}
        system = raw.get("Attributes") or {}
        try:
            message_id = attributes[ATTR_ID]["StringValue"]
            group = attributes[ATTR_GROUP]["StringValue"] if ATTR_GROUP in attributes else None
            receipt = raw["ReceiptHandle"]
            if ATTR_CLAIM in attributes:
                pointer = json.loads(raw["Body"])
                body = self._fetch(pointer["s3_bucket"], pointer["s3_key"])
                if body is None:
                    if not dead:
                        log.warning("SQS message %s: its S3 body is gone, so it was acked already; "
                                    "deleting the leftover", raw.get("MessageId"))
                        self._delete_handles(self._queue_url, [receipt])
                    return None
                receipt = f"{receipt} {pointer['s3_key']}"
            else:
                body = base64.b64decode(raw["Body"], validate=True)
            count = int(system.get("ApproximateReceiveCount", "1"))
            enqueued_at = int(system.get("SentTimestamp", "0")) / 1000.0
        except (KeyError, TypeError, ValueError, binascii.Error):
            log.error("SQS message %s is not a fieldsync message; left for the dead-letter queue",
                      raw.get("MessageId"))
            return None
        return Message(message_id, body, group, "" if dead else receipt,
                       max(count - 1, 0) if dead else count, enqueued_at)

    def _fetch(self, bucket: str, key: str) -> bytes | None:
        """A claim-checked body, or None when the object no longer exists. `ack` deletes the
        object only after SQS deleted the message, so a missing object means acked."""
        if self._s3 is None:
            raise ConfigError("a claim-checked SQS message arrived, but the queue has no s3_bucket")
        try:
            return self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except self._client_errors as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise SqsError(f"GetObject failed ({_error_code(exc)})") from exc

    # -- finishing deliveries --

    def ack(self, receipts: Sequence[str]) -> None:
        """Delete these deliveries (DeleteMessageBatch), then their claim-checked S3 bodies.
        Handles SQS reports as stale are ignored."""
        parsed = [_split_receipt(receipt) for receipt in receipts]
        if not parsed:
            return
        self._check_open()
        deleted = self._delete_handles(self._queue_url, [handle for handle, _ in parsed])
        self._delete_objects([key for handle, key in parsed if key and handle in deleted])

    def _delete_handles(self, queue_url: str, handles: list[str]) -> set[str]:
        """DeleteMessageBatch in chunks; returns the handles SQS deleted (stale ones are skipped)."""
        deleted: set[str] = set()
        for chunk in _chunks(handles):
            answer = self._call("DeleteMessageBatch", self._sqs.delete_message_batch, QueueUrl=queue_url,
                                Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)])
            deleted.update(chunk[int(entry["Id"])] for entry in answer.get("Successful") or [])
            for entry in answer.get("Failed") or []:
                if not _is_stale(entry.get("Code", ""), entry.get("Message", "")):
                    raise SqsError(f"DeleteMessageBatch refused a message ({entry.get('Code')})")
        return deleted

    def _delete_objects(self, keys: list[str]) -> None:
        if not keys or self._s3 is None:
            return
        for chunk in _chunks(keys, 1000):
            answer = self._call("DeleteObjects", self._s3.delete_objects, Bucket=self._settings.s3_bucket,
                                Delete={"Objects": [{"Key": key} for key in chunk], "Quiet": True})
            if answer.get("Errors"):
                log.error("deleting %d claim-checked bodies from S3 failed (%s); an S3 lifecycle rule "
                          "expires them", len(answer["Errors"]), answer["Errors"][0].get("Code"))

    def _change_visibility(self, changes: list[tuple[str, int]]) -> set[str]:
        """ChangeMessageVisibilityBatch of `(handle, seconds)`; returns the handles SQS refused
        as stale (no longer a delivery)."""
        refused: set[str] = set()
        for chunk in _chunks(changes):
            answer = self._call("ChangeMessageVisibilityBatch", self._sqs.change_message_visibility_batch,
                                QueueUrl=self._queue_url,
                                Entries=[{"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": seconds}
                                         for i, (handle, seconds) in enumerate(chunk)])
            for entry in answer.get("Failed") or []:
                if not _is_stale(entry.get("Code", ""), entry.get("Message", "")):
                    raise SqsError(f"ChangeMessageVisibilityBatch refused a message ({entry.get('Code')})")
                refused.add(chunk[int(entry["Id"])][0])
        return refused

    def extend(self, receipt: str, seconds: float) -> None:
        """Keep the delivery hidden `seconds` from now (ChangeMessageVisibility). A stale
        receipt is a no-op."""
        handle, _ = _split_receipt(receipt)
        timeout = _whole_seconds(seconds, "seconds")
        self._check_open()
        try:
            self._sqs.change_message_visibility(QueueUrl=self._queue_url, ReceiptHandle=handle,
                                                VisibilityTimeout=timeout)
        except self._client_errors as exc:
            message = str(getattr(exc, "response", {}).get("Error", {}).get("Message", ""))
            if not _is_stale(_error_code(exc), message):
                raise SqsError(f"ChangeMessageVisibility failed ({_error_code(exc)})") from exc

    def release(self, receipts: Sequence[str], delay: float = 0.0) -> None:
        """Make these deliveries visible again after `delay` seconds (ChangeMessageVisibilityBatch);
        on a FIFO queue the group stays blocked until then. Stale receipts are ignored."""
        handles = [_split_receipt(receipt)[0] for receipt in receipts]
        if not handles:
            return
        timeout = _whole_seconds(delay, "delay")
        self._check_open()
        self._change_visibility([(handle, timeout) for handle in handles])

    # -- counting --

    def _counts(self, queue_url: str) -> tuple[int, int, int]:
        """(visible, not visible, delayed) of a queue, as SQS approximates them."""
        attributes = self._call("GetQueueAttributes", self._sqs.get_queue_attributes, QueueUrl=queue_url,
                                AttributeNames=["ApproximateNumberOfMessages",
                                                "ApproximateNumberOfMessagesNotVisible",
                                                "ApproximateNumberOfMessagesDelayed"])["Attributes"]
        return (int(attributes.get("ApproximateNumberOfMessages", 0)),
                int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
                int(attributes.get("ApproximateNumberOfMessagesDelayed", 0)))

    def pending(self, group: str | None = None) -> int:
        """Messages not yet acked or dead-lettered (SQS's approximation). SQS keeps no count per
        message group, so `group` raises NotImplementedError."""
        if group is not None:
            raise NotImplementedError("SQS cannot count the messages of one group")
        self._check_open()
        return sum(self._counts(self._queue_url))

    def depth(self) -> QueueDepth:
        """Visible, in-flight (incl. released with a delay) and dead messages, approximately."""
        self._check_open()
        visible, hidden, delayed = self._counts(self._queue_url)
        dead = sum(self._counts(self._dlq_url))
        return QueueDepth(visible=visible + delayed, in_flight=hidden, dead=dead)

    # -- dead letters --

    def _scan_dead(self, limit: int | None) -> Iterator[list[dict]]:
        """Pages of dead-letter messages, each hidden for SCAN_VISIBILITY_SECONDS: as many as the
        dead-letter queue counted when the scan began (at most `limit`), or fewer if a poll comes
        back empty first. Knowing the count spares the final empty long poll."""
        visible, _, _ = self._counts(self._dlq_url)
        want = visible if limit is None else min(limit, visible)
        seen: set[str] = set()
        while len(seen) < want:
            count = min(BATCH_ENTRIES, want - len(seen))
            answer = self._call("ReceiveMessage", self._sqs.receive_message, QueueUrl=self._dlq_url,
                                MaxNumberOfMessages=count, WaitTimeSeconds=SCAN_WAIT_SECONDS,
                                VisibilityTimeout=SCAN_VISIBILITY_SECONDS,
                                MessageSystemAttributeNames=_SYSTEM_ATTRIBUTES,
                                MessageAttributeNames=_ATTRIBUTE_NAMES)
            page = [raw for raw in answer.get("Messages") or [] if raw["MessageId"] not in seen]
            if not page:
                return  # nothing (new): a long scan's first pages may be reappearing
            seen.update(raw["MessageId"] for raw in page)
            page.sort(key=lambda raw: int((raw.get("Attributes") or {}).get("SentTimestamp", "0")))
            yield page

    def _unhide_dead(self, raws: list[dict]) -> None:
        for chunk in _chunks(raws):
            self._call("ChangeMessageVisibilityBatch", self._sqs.change_message_visibility_batch,
                       QueueUrl=self._dlq_url,
                       Entries=[{"Id": str(i), "ReceiptHandle": raw["ReceiptHandle"], "VisibilityTimeout": 0}
                                for i, raw in enumerate(chunk)])

    def dead_letters(self, limit: int = 100) -> list[Message]:
        """Up to `limit` dead letters, oldest first, receipt "". SQS cannot peek: this receives
        them and makes them visible again (see the module docstring for what that costs)."""
        self._check_open()
        if limit < 1:
            return []
        seen: list[dict] = []
        try:
            for page in self._scan_dead(limit):
                seen.extend(page)
        finally:
            self._unhide_dead(seen)
        messages = [m for m in (self._decode(raw, dead=True) for raw in seen) if m is not None]
        return sorted(messages, key=lambda m: m.enqueued_at)

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        """Move dead letters (those named, or all) back to the queue: send, then delete from the
        dead-letter queue, a page at a time. Returns how many moved."""
        self._check_open()
        wanted = None if ids is None else set(ids)
        if wanted is not None and not wanted:
            return 0
        skipped: list[dict] = []
        moved = 0
        try:
            for page in self._scan_dead(None):
                chosen = []
                for raw in page:
                    message_id = ((raw.get("MessageAttributes") or {}).get(ATTR_ID) or {}).get("StringValue")
                    if wanted is None or message_id in wanted:
                        chosen.append(raw)
                    else:
                        skipped.append(raw)
                if chosen:
                    self._send_raw(chosen)
                    self._delete_handles(self._dlq_url, [raw["ReceiptHandle"] for raw in chosen])
                    moved += len(chosen)
                if wanted is not None and moved == len(wanted):
                    break
        finally:
            self._unhide_dead(skipped)
        return moved

    def _send_raw(self, raws: list[dict]) -> None:
        """Send received dead letters to the source queue as they are (body, id, group)."""
        outgoing = []
        for raw in raws:
            attributes = {name: _string(value["StringValue"])
                          for name, value in (raw.get("MessageAttributes") or {}).items()
                          if name in _ATTRIBUTE_NAMES}
            group = attributes[ATTR_GROUP]["StringValue"] if ATTR_GROUP in attributes else None
            message_id = attributes[ATTR_ID]["StringValue"] if ATTR_ID in attributes else raw["MessageId"]
            outgoing.append(_Outgoing(message_id, group, raw["Body"], attributes))
        for chunk in self._send_chunks(outgoing):
            self._send_chunk(self._queue_url, chunk)

    # -- closing --

    def close(self) -> None:
        """Release the boto3 clients. Deliveries not acked reappear after their visibility
        timeout (a consumer that died). Closing twice is harmless."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._close_clients()

    def _close_clients(self) -> None:
        for client in (self._sqs, self._s3):
            if client is not None:
                client.close()
