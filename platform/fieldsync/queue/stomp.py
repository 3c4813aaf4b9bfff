"""The JMS-broker backend of the queue: ActiveMQ Classic over STOMP 1.2, through stomp.py.

`open_stomp_queue("stomp://127.0.0.1:61613/fieldsync.push?max_receives=5")` (`stomp+ssl://` for
TLS; docs/queues.md lists the options). How the `Queue` contract of `fieldsync.queue.embedded` maps
onto the broker:

* **Durable send** (invariant 1). Messages are sent `persistent: true`. `send` asks a RECEIPT
  for its SEND frame; `send_batch` wraps its frames in BEGIN … COMMIT with the receipt on the
  COMMIT. ActiveMQ sends a receipt only once KahaDB has stored the message (or the whole
  transaction), so the call returns only when the broker has it. If the connection drops before
  the receipt, the batch is sent again on a new connection: a message may then be stored twice
  (at-least-once; the ledger makes the second apply a no-op, invariant 2), never zero times.
* **FIFO per group** (sync-design.md decision 2). The group travels as `JMSXGroupID`: ActiveMQ's
  message groups give all of a group's messages to one consumer at a time, in order (ci/activemq.sh
  configures an unbounded group map, so a busy broker never forgets which consumer owns a device).
  This object then hands out a group's next message only once the previous one is acked or
  dead. ActiveMQ's STOMP deliveries do not echo `JMSXGroupID`, so the group is also sent as
  `fieldsync_group`; the message id is `fieldsync_id` (stable across redeliveries and replays).
* **Receiving.** One subscription per queue object, opened by the first `receive`:
  `ack: client-individual` and `activemq.prefetchSize: prefetch` (default 100). The broker pushes
  up to `prefetch` unacknowledged messages to the object, `receive` hands them out: so the
  object never holds more than `prefetch` unacked messages, and `prefetch` must be at least the
  listener pool's threads × batch size; what one process prefetched waits for it, not for idle
  workers elsewhere (a device's messages are pinned to one consumer anyway). A delivery
  stays with this consumer at the broker until it is acked, dead-lettered, or the connection
  ends; then (close, crash, broker restart) the broker gives it to another consumer, with the
  header `redelivered: true`.
* **Visibility timeout, extend, release.** They act inside the object, on the deliveries it
  holds: a delivery not acked, extended or released within `visibility_timeout` is handed out
  again, as is a released one after its `delay`; its group waits meanwhile. That is how
  ActiveMQ's own JMS client redelivers (its RedeliveryPolicy is a client-side feature). Over STOMP
  the broker cannot do it for us: a NACK is a *poison ack* that dead-letters the message at once,
  and the broker's redeliveryPlugin re-sends it to the end of the queue after at least 1 s,
  which breaks the group's order and ignores each queue's `max_receives`.
* **receive_count** = deliveries by this object + 1 when the frame says `redelivered: true`.
  ActiveMQ's STOMP frames carry that flag, not the broker's delivery counter (there is no
  `JMSXDeliveryCount` header), so deliveries to earlier consumers count as one however many there
  were: a message whose consumers keep crashing is redelivered with receive_count 2 each time.
* **Dead letters.** When a delivery exceeds `max_receives`, the object NACKs it and the broker
  moves it to its dead-letter queue: `DLQ.<queue>` with the `individualDeadLetterStrategy` that
  ci/activemq.sh configures (the option `dead_letter_queue` names another one). `dead_letters`
  browses it (`browser: true`); their receive_count reads `max_receives` (the broker's copy does
  not carry the count). `replay_dead` moves them back in transactions: ACK from the dead-letter
  queue and SEND to the queue, committed together, so a message is never lost or doubled.
* **Depth.** The broker's statistics plugin answers `ActiveMQ.Statistics.Destination.<queue>` with
  a map message; STOMP converts it with the `jms-map-xml` transformation, which needs XStream in
  the broker (ci/activemq.sh links Debian's). Without it `depth()` reports None and `pending()`
  counts by browsing the queue. These requests use a second connection ("admin"), so a broker
  that cannot convert the reply (and drops the connection) never costs the consumer its
  deliveries.
* **Reconnect.** When the connection drops (a broker restart), the deliveries it held are void —
  their receipts turn stale and the broker redelivers the messages — and the next call
  reconnects with exponential backoff (up to 0.1 s doubling to 2 s, full jitter:
  `fieldsync.backoff`), re-subscribing if the object was receiving. `send` and the admin calls keep trying for `reconnect_timeout`
  seconds (default 60) and then raise `BrokerUnavailable`; `receive` returns [] while the
  outage is younger than that and raises afterwards. Heartbeats (`heartbeat`, ms, default
  10000 each way) notice a dead peer that never closed the socket.

Bodies are bytes on the wire (`content-length`; ActiveMQ stores a BytesMessage), never logged.
Headers carry only ids, the group (the device id) and counts.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
import xml.etree.ElementTree as ElementTree
from collections import OrderedDict
from queue import Empty, SimpleQueue
from typing import Callable, Iterator, Sequence

from fieldsync.backoff import Backoff
from fieldsync.errors import Error
from fieldsync.queue.embedded import Message, QueueClosed, QueueDepth
from fieldsync.queue.stomp_link import (
    MAIN_SUBSCRIPTION, TRANSPORT_ERRORS, BrokerRefused, Link, LinkLost, StompSettings, parse_stomp_url,
)

__all__ = ["BrokerRefused", "BrokerUnavailable", "StompQueue", "open_stomp_queue"]

log = logging.getLogger("fieldsync.sync.queue_stomp")

RECONNECT_FIRST_DELAY = 0.1        # seconds, at most, before the second connection attempt; doubles
RECONNECT_MAX_DELAY = 2.0
ADMIN_REPLY_TIMEOUT = 2.0          # statistics replies (absent when the plugin is not installed)
STATS_RETRY_INTERVAL = 300.0       # seconds before a broker that did not answer is asked again
BROWSE_TIMEOUT = 10.0              # between two frames of a browse
REPLAY_CHUNK = 100                 # dead letters moved per transaction

_STATS_PREFIX = "ActiveMQ.Statistics.Destination."
_STATS_END = "ActiveMQ.Statistics.Destination.List.End.With.Null"  # asks for an empty map last
_HEADER_ID = "fieldsync_id"        # property names must be Java identifiers (JMS selectors)
_HEADER_GROUP = "fieldsync_group"


class BrokerUnavailable(Error):
    """The broker could not be reached within `reconnect_timeout`."""


class _NotYet(Exception):
    """No connection could be made before the caller's deadline."""


def open_stomp_queue(url: str, **options) -> StompQueue:
    """The queue named by the path of `stomp://host:port/<queue>?option=value…` (`stomp+ssl://`
    for TLS). Options come from the query string and from keyword arguments (these win):
    user, password, vhost, max_receives, prefetch, heartbeat (ms), reconnect_timeout (s),
    dead_letter_queue (default `DLQ.<queue>`), ca_certs, cert_file, key_file."""
    return StompQueue(parse_stomp_url(url, **options))


def _quote(value: str) -> str:
    """A JMS selector string literal."""
    return "'" + value.replace("'", "''") + "'"


def _message_headers(message_id: str, group: str | None) -> dict[str, str]:
    headers = {"persistent": "true", _HEADER_ID: message_id}
    if group is not None:
        headers["JMSXGroupID"] = group   # ActiveMQ message groups: one consumer per group, in order
        headers[_HEADER_GROUP] = group
    return headers


# -- the queue ----------------------------------------------------------------------------------

class _Delivery:
    """A message the broker pushed to this object, until it is acked or dead-lettered."""

    __slots__ = ("ack_id", "message_id", "body", "group", "enqueued_at", "earlier", "deliveries",
                 "token", "out", "due")

    def __init__(self, frame) -> None:
        headers = frame.headers
        self.ack_id: str = headers["ack"]
        self.message_id: str = headers.get(_HEADER_ID) or headers["message-id"]
        self.body: bytes = bytes(frame.body or b"")
        self.group: str | None = headers.get(_HEADER_GROUP)
        self.enqueued_at = int(headers.get("timestamp", "0")) / 1000.0
        self.earlier = 1 if headers.get("redelivered") == "true" else 0   # see receive_count above
        self.deliveries = 0
        self.token = 0
        self.out = False        # handed out (True) or waiting (False)
        self.due = 0.0          # monotonic time: visibility deadline when out, ready time when waiting

    @property
    def receive_count(self) -> int:
        return self.earlier + self.deliveries


class StompQueue:
    """A queue on an ActiveMQ broker over STOMP; see the module docstring. One object may be
    shared by threads; build it with `open_stomp_queue` (or `open_queue("stomp://…")`)."""

    def __init__(self, settings: StompSettings) -> None:
        self._settings = settings
        self._destination = f"/queue/{settings.queue}"
        self._dead_destination = f"/queue/{settings.dead_letter_queue}"
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._connect_lock = threading.Lock()
        self._admin_lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        self._link: Link | None = None
        self._admin: Link | None = None
        self._generations = itertools.count(1)
        self._tokens = itertools.count(1)
        self._subscribed = False
        self._held: OrderedDict[str, _Delivery] = OrderedDict()   # ack id -> delivery, arrival order
        self._stats_retry_at = 0.0   # monotonic time before which statistics are not asked again
        self._stats_drops = 0        # connections lost in a row while waiting for statistics
        # reconnect backoff, shared by every thread of the object
        self._down_since: float | None = None
        self._reconnect = Backoff(base=RECONNECT_FIRST_DELAY, cap=RECONNECT_MAX_DELAY)
        self._failed_attempts = 0    # connection attempts failed in a row
        self._next_attempt = 0.0

    def __repr__(self) -> str:
        s = self._settings
        return f"StompQueue({'stomp+ssl' if s.tls else 'stomp'}://{s.host}:{s.port}/{s.queue})"

    def __enter__(self) -> StompQueue:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def max_receives(self) -> int:
        return self._settings.max_receives

    # -- connections --

    def _check_open(self) -> None:
        if self._closed:
            raise QueueClosed(f"{self!r} is closed")

    def _pause_for_backoff(self, deadline: float) -> None:
        """Wait until the next connection attempt is due, or raise _NotYet if that is after
        `deadline` (monotonic). No wait when the last attempt succeeded."""
        now = time.monotonic()
        pause = self._next_attempt - now
        if pause <= 0:
            return
        if now + pause > deadline:
            raise _NotYet()
        self._closing.wait(pause)
        self._check_open()

    def _attempt(self, on_message=None, on_lost=None) -> Link | None:
        """One connection attempt; on failure, None and the next attempt is due later
        (exponential backoff with full jitter, shared by the object's threads and connections)."""
        self._check_open()
        link = Link(self._settings, next(self._generations), on_message, on_lost)
        try:
            link.open()
        except LinkLost:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now
                log.warning("%r: cannot reach the broker; retrying with backoff", self)
            self._next_attempt = now + self._reconnect.delay(self._failed_attempts)
            self._failed_attempts += 1
            return None
        if self._down_since is not None:
            log.warning("%r: connected again after %.1f s", self, time.monotonic() - self._down_since)
        self._down_since = None
        self._failed_attempts = 0
        self._next_attempt = 0.0
        return link

    def _consumer_link(self, deadline: float, *, subscribe: bool = False) -> Link:
        """The connection that sends and receives, (re)connected and subscribed as needed. Backoff
        pauses happen outside `_connect_lock`, so a sender waiting out an outage never holds up a
        long poll past its own deadline."""
        while True:
            with self._lock:
                self._check_open()
                link = self._link
                if subscribe:
                    self._subscribed = True
                if link is not None and link.alive and (link.subscribed or not self._subscribed):
                    return link
            self._pause_for_backoff(deadline)
            with self._connect_lock:
                with self._lock:
                    self._check_open()
                    link = self._link
                if link is None or not link.alive:
                    if self._next_attempt > time.monotonic():
                        continue   # another thread's attempt just failed: back off first
                    link = self._attempt(on_message=self._arrived, on_lost=self._lost)
                    if link is None:
                        continue
                    with self._lock:
                        if self._closed:
                            link.drop()
                            self._check_open()
                        self._link = link
                if self._subscribed and not link.subscribed:
                    try:
                        self._subscribe(link)
                    except LinkLost:
                        continue
                return link

    def _subscribe(self, link: Link) -> None:
        link.call(lambda receipt: link.conn.subscribe(
            self._destination, id=MAIN_SUBSCRIPTION, ack="client-individual", receipt=receipt,
            headers={"activemq.prefetchSize": str(self._settings.prefetch)}))
        link.subscribed = True

    def _arrived(self, link: Link, frame) -> None:
        delivery = _Delivery(frame)
        with self._changed:
            if link is not self._link or self._closed:
                return
            self._held[delivery.ack_id] = delivery
            self._changed.notify_all()

    def _lost(self, link: Link) -> None:
        with self._changed:
            if link is not self._link:
                return
            self._link = None
            # the broker has taken these back and redelivers them: their receipts are stale now
            self._held.clear()
            self._changed.notify_all()

    def _outage_too_long(self) -> bool:
        down = self._down_since
        return down is not None and time.monotonic() - down > self._settings.reconnect_timeout

    def _unavailable(self) -> BrokerUnavailable:
        s = self._settings
        return BrokerUnavailable(f"the STOMP broker {s.host}:{s.port} has been unreachable for more than "
                                 f"{s.reconnect_timeout:g} s")

    # -- sending --

    def send(self, body: bytes, *, group: str | None = None) -> str:
        """Enqueue `body`; returns once the broker has stored it (its receipt)."""
        return self.send_batch([(body, group)])[0]

    def send_batch(self, items: Sequence[tuple[bytes, str | None]]) -> list[str]:
        """Enqueue every `(body, group)` in one broker transaction; ids in the same order."""
        frames = []
        for body, group in items:
            if not isinstance(body, (bytes, bytearray, memoryview)):
                raise TypeError(f"a message body is bytes, not {type(body).__name__}")
            if group is not None and not isinstance(group, str):
                raise TypeError(f"a message group is a str or None, not {type(group).__name__}")
            message_id = uuid.uuid4().hex
            frames.append((message_id, bytes(body), _message_headers(message_id, group)))
        if frames:
            self._send_frames(self._destination, frames)
        return [message_id for message_id, _, _ in frames]

    def _send_frames(self, destination: str, frames: list[tuple[str, bytes, dict]],
                     acks: Sequence[str] = (), link: Link | None = None) -> None:
        """SEND `frames` (and ACK `acks`, on `link`) durably: one SEND with a receipt, or a
        transaction committed with a receipt. Retries on a new connection until
        reconnect_timeout, except when `link` is given (the acks belong to it)."""
        deadline = time.monotonic() + self._settings.reconnect_timeout

        def transmit(target: Link, receipt: str) -> None:
            conn = target.conn
            if len(frames) == 1 and not acks:
                _, body, headers = frames[0]
                conn.send(destination, body, headers=headers, receipt=receipt)
                return
            transaction = conn.begin()
            for _, body, headers in frames:
                conn.send(destination, body, headers=headers, transaction=transaction)
            for ack_id in acks:
                conn.ack(ack_id, transaction=transaction)
            conn.commit(transaction, receipt=receipt)

        while True:
            target = link
            if target is None:
                try:
                    target = self._consumer_link(deadline)
                except _NotYet:
                    raise self._unavailable() from None
            try:
                target.call(lambda receipt: transmit(target, receipt))
                return
            except LinkLost:
                # the broker aborts an uncommitted transaction with its connection; a lone SEND
                # may have been stored: sending it again is at-least-once (invariant 2)
                if link is not None:
                    raise
                continue

    # -- receiving --

    def receive(self, max_messages: int = 10, *, visibility_timeout: float = 60.0,
                wait_seconds: float = 0.0) -> list[Message]:
        """Hand out up to `max_messages` of the messages the broker pushed to this object (at
        most one per group), each for `visibility_timeout` seconds; waits up to `wait_seconds`
        for one."""
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")
        if visibility_timeout < 0:
            raise ValueError(f"visibility_timeout must not be negative, not {visibility_timeout}")
        deadline = time.monotonic() + max(wait_seconds, 0.0)
        with self._lock:
            self._check_open()
        while True:
            try:
                link = self._consumer_link(deadline, subscribe=True)
            except _NotYet:
                if self._outage_too_long():
                    raise self._unavailable() from None
                return []
            except QueueClosed:
                return []   # closed while this call waited, like SqliteQueue
            with self._changed:
                if self._closed:
                    return []
                if link is not self._link:
                    continue
                messages, dead = self._claim(link, max_messages, visibility_timeout)
                if not messages and not dead:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return []
                    self._changed.wait(min(remaining, self._next_due()))
                    continue
            if dead:
                self._dead_letter(link, dead)
            if messages:
                return messages

    def _claim(self, link: Link, max_messages: int, visibility_timeout: float
               ) -> tuple[list[Message], list[_Delivery]]:
        """Pick eligible deliveries in arrival order; the first held message of a group is its
        head, and only a head that is neither out nor waiting can go. Callers hold the lock."""
        now = time.monotonic()
        blocked: set[str] = set()
        messages: list[Message] = []
        dead: list[_Delivery] = []
        for delivery in list(self._held.values()):
            if len(messages) >= max_messages:
                break
            if delivery.group is not None:
                if delivery.group in blocked:
                    continue
                blocked.add(delivery.group)
            if delivery.due > now:
                continue   # in flight, or waiting out a release delay
            delivery.deliveries += 1
            delivery.token = next(self._tokens)
            if delivery.receive_count > self._settings.max_receives:
                # exhausted (its visibility ran out once too often): off to the dead letters,
                # which unblocks its group
                del self._held[delivery.ack_id]
                dead.append(delivery)
                blocked.discard(delivery.group)
                continue
            delivery.out = True
            delivery.due = now + visibility_timeout
            messages.append(Message(delivery.message_id, delivery.body, delivery.group,
                                    f"{link.generation}:{delivery.token}:{delivery.ack_id}",
                                    delivery.receive_count, delivery.enqueued_at))
        return messages, dead

    def _next_due(self) -> float:
        """Seconds until a held delivery may become eligible (callers hold the lock)."""
        now = time.monotonic()
        dues = [delivery.due - now for delivery in self._held.values() if delivery.due > now]
        return max(min(dues), 0.001) if dues else 3600.0

    def _current(self, receipts: Sequence[str]) -> tuple[Link | None, list[_Delivery]]:
        """The held deliveries these receipts name, if still current (callers hold the lock)."""
        self._check_open()
        link = self._link
        found = []
        for receipt in receipts:
            try:
                generation, token, ack_id = receipt.split(":", 2)
                generation_number, token_number = int(generation), int(token)
            except ValueError:
                raise ValueError(f"not a receipt of this queue: {receipt!r}") from None
            delivery = self._held.get(ack_id)
            if (link is not None and generation_number == link.generation and delivery is not None
                    and delivery.out and delivery.token == token_number):
                found.append(delivery)
        return link, found

    def ack(self, receipts: Sequence[str]) -> None:
        """ACK these deliveries (one frame each, the last with a receipt). Stale receipts — the
        delivery was released, redelivered, or its connection ended — are ignored."""
        with self._changed:
            link, deliveries = self._current(receipts)
            for delivery in deliveries:
                del self._held[delivery.ack_id]
            if deliveries:
                self._changed.notify_all()   # their groups' next messages may go now
        if not deliveries:
            return
        ack_ids = [delivery.ack_id for delivery in deliveries]

        def transmit(receipt: str) -> None:
            for ack_id in ack_ids[:-1]:
                link.conn.ack(ack_id)
            link.conn.ack(ack_ids[-1], receipt=receipt)

        try:
            link.call(transmit)
        except LinkLost:
            pass   # the broker redelivers them: at-least-once, and the ledger dedupes (invariant 2)

    def extend(self, receipt: str, seconds: float) -> None:
        """Keep a delivery out of other threads' hands for `seconds` from now (stale: no-op).
        The broker itself never takes a delivery back from a live connection."""
        with self._changed:
            _, deliveries = self._current([receipt])
            for delivery in deliveries:
                delivery.due = time.monotonic() + seconds

    def release(self, receipts: Sequence[str], delay: float = 0.0) -> None:
        """Give deliveries back: handed out again by this object after `delay` seconds (their
        groups wait), or dead-lettered once they had `max_receives` deliveries."""
        with self._changed:
            link, deliveries = self._current(receipts)
            now = time.monotonic()
            dead = []
            for delivery in deliveries:
                if delivery.receive_count >= self._settings.max_receives:
                    del self._held[delivery.ack_id]
                    dead.append(delivery)
                else:
                    delivery.out = False
                    delivery.due = now + max(delay, 0.0)
                    delivery.token = next(self._tokens)   # the receipt is stale from now on
            if deliveries:
                self._changed.notify_all()
        if dead:
            self._dead_letter(link, dead)

    def _dead_letter(self, link: Link, deliveries: list[_Delivery]) -> None:
        """NACK: ActiveMQ treats it as a poison ack and moves the message to the dead-letter
        queue before it confirms the receipt."""
        ack_ids = [delivery.ack_id for delivery in deliveries]
        log.info("%r: %d message(s) exceeded max_receives=%d; moving them to %s: %s", self, len(ack_ids),
                 self._settings.max_receives, self._settings.dead_letter_queue,
                 ", ".join(delivery.message_id for delivery in deliveries))

        def transmit(receipt: str) -> None:
            for ack_id in ack_ids[:-1]:
                link.conn.nack(ack_id)
            link.conn.nack(ack_ids[-1], receipt=receipt)

        try:
            link.call(transmit)
        except LinkLost:
            pass   # the broker redelivers them, and they count again

    # -- administration (second connection) --

    def _admin_call(self, operation: Callable[[Link], object]):
        """Run `operation(link)` on the admin connection, reconnecting (with backoff) and starting
        over if the connection drops, for up to reconnect_timeout."""
        deadline = time.monotonic() + self._settings.reconnect_timeout
        with self._admin_lock:
            while True:
                self._check_open()
                link = self._admin
                if link is None or not link.alive:
                    try:
                        self._pause_for_backoff(deadline)
                    except _NotYet:
                        raise self._unavailable() from None
                    link = self._admin = self._attempt()
                    if link is None:
                        continue
                try:
                    return operation(link)
                except (LinkLost, *TRANSPORT_ERRORS):
                    link.drop()
                    if time.monotonic() > deadline:
                        raise self._unavailable() from None

    def _browse(self, link: Link, destination: str, *, selector: str | None = None,
                limit: int | None = None) -> Iterator:
        """MESSAGE frames of a queue browser (`browser: true`: nothing is consumed), in order."""
        subscription = f"browse-{uuid.uuid4().hex}"
        inbox = link.open_inbox(subscription)
        headers = {"browser": "true", "activemq.prefetchSize": str(min(limit or 1000, 1000))}
        if selector is not None:
            headers["selector"] = selector
        try:
            link.conn.subscribe(destination, id=subscription, ack="auto", headers=headers)
            seen = 0
            while limit is None or seen < limit:
                try:
                    frame = inbox.get(timeout=BROWSE_TIMEOUT)
                except Empty:
                    link.drop()
                    raise LinkLost("the browse stalled") from None
                if frame is None:
                    raise LinkLost("the connection ended")
                if frame.headers.get("browser") == "end":
                    return
                seen += 1
                yield frame
        finally:
            link.close_inbox(subscription)

    def _statistics(self, link: Link, queues: list[str]) -> dict[str, dict[str, str]] | None:
        """ActiveMQ's statistics of `queues` (name -> map), or None without the plugin. A queue
        the broker does not know yet is missing from the answer."""
        if link.stats_inbox is None:
            inbox = link.open_inbox("stats")
            link.call(lambda receipt: link.conn.subscribe(
                "/temp-queue/fieldsync-stats", id="stats", ack="auto", receipt=receipt,
                headers={"transformation": "jms-map-xml"}))
            link.stats_inbox = inbox
        inbox = link.stats_inbox
        request = uuid.uuid4().hex
        expires = str(int((time.time() + 60) * 1000))   # without the plugin, the request is a stray message
        for name in queues:
            link.conn.send(f"/queue/{_STATS_PREFIX}{name}{_STATS_END}", b"",
                           headers={"reply-to": "/temp-queue/fieldsync-stats", "persistent": "false",
                                    "expires": expires, "correlation-id": f"{request}:{name}"})
        answers: dict[str, dict[str, str]] = {}
        pending = set(queues)
        deadline = time.monotonic() + ADMIN_REPLY_TIMEOUT
        while pending:
            remaining = deadline - time.monotonic()
            try:
                frame = inbox.get(timeout=max(remaining, 0.001))
            except Empty:
                return None
            if frame is None:
                # a broker without XStream fails to convert the map and drops the connection;
                # so does a restart: only a second drop in a row means "no statistics"
                self._stats_drops += 1
                if self._stats_drops >= 2:
                    return None
                raise LinkLost("the connection ended")
            correlation = frame.headers.get("correlation-id", "")
            if not correlation.startswith(request + ":"):
                continue   # a late answer to an earlier request
            name = correlation[len(request) + 1:]
            entries = _parse_map(frame.body)
            if entries:
                answers[name] = entries
            else:
                pending.discard(name)   # the empty map that ends the list
        self._stats_drops = 0
        return answers

    def _stats(self, queues: list[str]) -> dict[str, dict[str, str]] | None:
        if time.monotonic() < self._stats_retry_at:
            return None
        answer = self._admin_call(lambda link: self._statistics(link, queues))
        if answer is None:
            # the plugin is not installed, or the broker cannot convert its answer: every request
            # would wait ADMIN_REPLY_TIMEOUT (or cost a connection), so ask again only later
            self._stats_drops = 0
            self._stats_retry_at = time.monotonic() + STATS_RETRY_INTERVAL
            log.warning("%r: the broker does not answer statistics requests (statisticsBrokerPlugin and "
                        "XStream, see ci/activemq.sh); depth() reports None and pending() browses", self)
        return answer

    def pending(self, group: str | None = None) -> int:
        """Messages not yet acked or dead (waiting or in flight at any consumer), of `group` or
        all: the statistics plugin's size, or a count by browsing the queue."""
        if group is None:
            stats = self._stats([self._settings.queue])
            if stats is not None:
                return int(stats.get(self._settings.queue, {}).get("size", 0))
        selector = None if group is None else f"{_HEADER_GROUP} = {_quote(group)}"
        return self._admin_call(lambda link: sum(1 for _ in self._browse(link, self._destination, selector=selector)))

    def depth(self) -> QueueDepth:
        """Waiting, in-flight (dispatched to consumers, including their prefetch) and dead
        messages, from the statistics plugin; all None when the broker does not answer."""
        queue, dead_queue = self._settings.queue, self._settings.dead_letter_queue
        stats = self._stats([queue, dead_queue])
        if stats is None:
            return QueueDepth(visible=None, in_flight=None, dead=None)
        size = int(stats.get(queue, {}).get("size", 0))
        in_flight = int(stats.get(queue, {}).get("inflightCount", 0))
        dead = int(stats.get(dead_queue, {}).get("size", 0))
        return QueueDepth(visible=max(size - in_flight, 0), in_flight=in_flight, dead=dead)

    def dead_letters(self, limit: int = 100) -> list[Message]:
        """Up to `limit` messages of the dead-letter queue, oldest first, browsed (not consumed)."""
        if limit < 1:
            return []

        def browse(link: Link) -> list[Message]:
            return [Message(frame.headers.get(_HEADER_ID) or frame.headers["message-id"],
                            bytes(frame.body or b""), frame.headers.get(_HEADER_GROUP), "",
                            self._settings.max_receives, int(frame.headers.get("timestamp", "0")) / 1000.0)
                    for frame in self._browse(link, self._dead_destination, limit=limit)]

        return self._admin_call(browse)

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        """Move dead letters (with these ids, or all) back to the end of the queue, in order; each
        chunk is one transaction (ACK from the dead-letter queue + SEND), so none is lost or
        doubled. Their receive_count starts again. Returns how many moved."""
        selector = None
        if ids is not None:
            wanted = [str(message_id) for message_id in ids]
            if not wanted:
                return 0
            selector = f"{_HEADER_ID} IN ({', '.join(_quote(message_id) for message_id in wanted)})"
        moved = 0

        def replay(link: Link) -> int:
            nonlocal moved
            expected = sum(1 for _ in self._browse(link, self._dead_destination, selector=selector))
            if not expected:
                return moved
            subscription = f"replay-{uuid.uuid4().hex}"
            inbox = link.open_inbox(subscription)
            headers = {"activemq.prefetchSize": str(min(expected, REPLAY_CHUNK))}
            if selector is not None:
                headers["selector"] = selector
            try:
                link.conn.subscribe(self._dead_destination, id=subscription, ack="client-individual",
                                    headers=headers)
                done = 0
                while done < expected:
                    chunk = _take(inbox, min(expected - done, REPLAY_CHUNK))
                    if not chunk:
                        break   # someone else replayed or purged them meanwhile
                    frames = []
                    for frame in chunk:
                        message_id = frame.headers.get(_HEADER_ID) or uuid.uuid4().hex
                        frames.append((message_id, bytes(frame.body or b""),
                                       _message_headers(message_id, frame.headers.get(_HEADER_GROUP))))
                    self._send_frames(self._destination, frames,
                                      acks=[frame.headers["ack"] for frame in chunk], link=link)
                    done += len(chunk)
                    moved += len(chunk)
            finally:
                link.close_inbox(subscription)   # undelivered prefetch goes back to the DLQ
            return moved

        return self._admin_call(replay)

    # -- closing --

    def close(self) -> None:
        """Disconnect (the broker gives unacked deliveries to other consumers at once); long polls
        return [] and later calls raise QueueClosed. Closing twice is harmless."""
        with self._changed:
            if self._closed:
                return
            self._closed = True
            link, self._link = self._link, None
            self._held.clear()
            self._changed.notify_all()
        self._closing.set()
        with self._admin_lock:
            admin, self._admin = self._admin, None
        for each in (link, admin):
            if each is not None:
                each.close()


def _take(inbox: SimpleQueue, count: int) -> list:
    """Up to `count` frames: waits for the first, then takes what has already arrived."""
    frames = []
    timeout = BROWSE_TIMEOUT
    while len(frames) < count:
        try:
            frame = inbox.get(timeout=timeout)
        except Empty:
            break
        if frame is None:
            raise LinkLost("the connection ended")
        frames.append(frame)
        timeout = 0.2
    return frames


def _parse_map(body: bytes | None) -> dict[str, str]:
    """The entries of a map message in ActiveMQ's `jms-map-xml` form:
    <map><entry><string>size</string><long>3</long></entry>…</map>."""
    if not body:
        return {}
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return {}
    entries = {}
    for entry in root.findall("entry"):
        children = list(entry)
        if len(children) == 2 and children[0].text is not None:
            entries[children[0].text] = children[1].text or ""
    return entries
