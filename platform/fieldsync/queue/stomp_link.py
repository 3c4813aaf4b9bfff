"""One STOMP 1.2 connection to the broker, for the STOMP queue backend (`queue_stomp`): the
settings a `stomp://` URL names, and a `Link` that waits for receipts and routes MESSAGE frames
to the queue or to inboxes (browses, replays, statistics replies). stomp.py does the framing,
heartbeats and TLS; a Link never reconnects — the queue replaces a lost one.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import uuid
from dataclasses import dataclass
from queue import SimpleQueue
from typing import Callable
from urllib.parse import parse_qsl, unquote, urlsplit

import stomp
import stomp.exception

from fieldsync.errors import BrokerRefused, ConfigError, LinkLost
from fieldsync.queue.embedded import DEFAULT_MAX_RECEIVES

__all__ = ["BrokerRefused", "Link", "LinkLost", "MAIN_SUBSCRIPTION", "StompSettings", "TRANSPORT_ERRORS",
           "parse_stomp_url"]

log = logging.getLogger("fieldsync.sync.queue_stomp")

DEFAULT_PORT = 61613
DEFAULT_SSL_PORT = 61614
DEFAULT_PREFETCH = 100
DEFAULT_HEARTBEAT_MS = 10_000
DEFAULT_RECONNECT_TIMEOUT = 60.0   # seconds a send or an admin call waits for the broker
CONNECT_TIMEOUT = 5.0              # one attempt: TCP connect + CONNECTED frame
RECEIPT_TIMEOUT = 30.0             # a frame the broker does not confirm by then: connection dropped
MAIN_SUBSCRIPTION = "fieldsync"    # the subscription id of the queue on the consumer connection
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


# what stomp.py raises when a frame cannot be written: the connection is gone
TRANSPORT_ERRORS = (stomp.exception.StompException, OSError)


@dataclass(frozen=True)
class StompSettings:
    """What a `stomp://` URL and the options of `open_queue` configure (docs/queues.md)."""

    host: str
    port: int
    tls: bool
    queue: str
    dead_letter_queue: str
    user: str | None
    password: str | None
    vhost: str | None
    max_receives: int
    prefetch: int
    heartbeat_ms: int
    reconnect_timeout: float
    ca_certs: str | None
    cert_file: str | None
    key_file: str | None


_OPTIONS = {
    "user": str, "password": str, "vhost": str, "dead_letter_queue": str, "ca_certs": str,
    "cert_file": str, "key_file": str, "max_receives": int, "prefetch": int, "heartbeat": int,
    "reconnect_timeout": float,
}


def parse_stomp_url(url: str, **options) -> StompSettings:
    """The settings of the queue named by the path of `stomp://host:port/<queue>?option=value…`
    (`stomp+ssl://` for TLS). Options come from the query string and from keyword arguments
    (these win):
    user, password, vhost, max_receives, prefetch, heartbeat (ms), reconnect_timeout (s),
    dead_letter_queue (default `DLQ.<queue>`), ca_certs, cert_file, key_file."""
    parts = urlsplit(url)
    if parts.scheme not in ("stomp", "stomp+ssl"):
        raise ConfigError(f"not a STOMP queue URL: {parts.scheme}://…")
    queue = unquote(parts.path.lstrip("/"))
    if not queue or not QUEUE_NAME.fullmatch(queue):
        raise ConfigError("a STOMP queue URL names its queue (letters, digits, '.', '_', '-'): "
                          "stomp://127.0.0.1:61613/fieldsync.push")
    given: dict[str, object] = dict(parse_qsl(parts.query, keep_blank_values=True))
    if parts.username:
        given.setdefault("user", unquote(parts.username))
    if parts.password:
        given.setdefault("password", unquote(parts.password))
    given.update(options)
    values: dict[str, object] = {}
    for key, value in given.items():
        if key not in _OPTIONS:
            raise ConfigError(f"unknown STOMP queue option {key!r}; known: {', '.join(sorted(_OPTIONS))}")
        try:
            values[key] = _OPTIONS[key](value)
        except (TypeError, ValueError):
            raise ConfigError(f"STOMP queue option {key}={value!r} is not a {_OPTIONS[key].__name__}") from None
    tls = parts.scheme == "stomp+ssl"
    settings = StompSettings(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or (DEFAULT_SSL_PORT if tls else DEFAULT_PORT),
        tls=tls, queue=queue,
        dead_letter_queue=str(values.get("dead_letter_queue", f"DLQ.{queue}")),
        user=values.get("user"), password=values.get("password"), vhost=values.get("vhost"),
        max_receives=int(values.get("max_receives", DEFAULT_MAX_RECEIVES)),
        prefetch=int(values.get("prefetch", DEFAULT_PREFETCH)),
        heartbeat_ms=int(values.get("heartbeat", DEFAULT_HEARTBEAT_MS)),
        reconnect_timeout=float(values.get("reconnect_timeout", DEFAULT_RECONNECT_TIMEOUT)),
        ca_certs=values.get("ca_certs"), cert_file=values.get("cert_file"), key_file=values.get("key_file"),
    )
    if settings.max_receives < 1:
        raise ConfigError(f"max_receives must be at least 1, not {settings.max_receives}")
    if settings.prefetch < 1:
        raise ConfigError(f"prefetch must be at least 1, not {settings.prefetch}")
    if settings.heartbeat_ms < 0 or settings.reconnect_timeout < 0:
        raise ConfigError("heartbeat and reconnect_timeout must not be negative")
    if not QUEUE_NAME.fullmatch(settings.dead_letter_queue):
        raise ConfigError(f"dead_letter_queue {settings.dead_letter_queue!r} is not a queue name")
    return settings


class Link(stomp.ConnectionListener):
    """One STOMP connection: waits for receipts, and routes MESSAGE frames to the queue (the main
    subscription) or to an inbox (browses, replays, statistics replies). Callbacks run on
    stomp.py's receiver thread."""

    def __init__(self, settings: StompSettings, generation: int,
                 on_message: Callable[[Link, stomp.utils.Frame], None] | None,
                 on_lost: Callable[[Link], None] | None) -> None:
        self.generation = generation
        self.alive = False
        self.subscribed = False                       # the consumer's subscription to the queue is open
        self.stats_inbox: SimpleQueue | None = None   # the temp-queue reply subscription, once opened
        self._settings = settings
        self._on_message = on_message
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._receipts: dict[str, list] = {}          # receipt id -> [Event, error or None]
        self._inboxes: dict[str, SimpleQueue] = {}
        self._connected = threading.Event()
        self._gone = threading.Event()
        self._refusal: str | None = None
        heartbeat = settings.heartbeat_ms
        self.conn = stomp.Connection12([(settings.host, settings.port)], heartbeats=(heartbeat, heartbeat),
                                       reconnect_attempts_max=1, timeout=CONNECT_TIMEOUT,
                                       vhost=settings.vhost, auto_decode=False)
        if settings.tls:
            self.conn.set_ssl(for_hosts=[(settings.host, settings.port)], ca_certs=settings.ca_certs,
                              cert_file=settings.cert_file, key_file=settings.key_file)
        self.conn.set_listener("fieldsync", self)

    def open(self) -> None:
        """Connect, or raise LinkLost (unreachable) / BrokerRefused (e.g. bad credentials)."""
        try:
            self.conn.connect(self._settings.user, self._settings.password, wait=False)
        except TRANSPORT_ERRORS as exc:
            self.drop()
            raise LinkLost(f"cannot connect: {type(exc).__name__}") from None
        try:
            # frames are small and each waits for an answer (a receipt, the next MESSAGE):
            # without this, Nagle's algorithm and delayed ACKs stall every exchange ~40 ms
            self.conn.transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):
            pass   # the socket is already gone: the wait below finds out
        if not self._connected.wait(CONNECT_TIMEOUT) or not self.alive:
            self.drop()
            if self._refusal is not None:
                raise BrokerRefused(f"the broker refused the connection: {self._refusal}")
            raise LinkLost("no CONNECTED frame")

    # -- stomp.py callbacks --

    def on_connected(self, frame) -> None:
        self.alive = True
        self._connected.set()

    def on_message(self, frame) -> None:
        subscription = frame.headers.get("subscription")
        if subscription == MAIN_SUBSCRIPTION and self._on_message is not None:
            self._on_message(self, frame)
            return
        with self._lock:
            inbox = self._inboxes.get(subscription)
        if inbox is not None:
            inbox.put(frame)

    def on_receipt(self, frame) -> None:
        with self._lock:
            waiter = self._receipts.pop(frame.headers.get("receipt-id"), None)
        if waiter is not None:
            waiter[0].set()

    def on_error(self, frame) -> None:
        reason = frame.headers.get("message", "unknown error")
        with self._lock:
            waiter = self._receipts.pop(frame.headers.get("receipt-id"), None)
        if waiter is not None:
            waiter[1] = BrokerRefused(f"the broker refused a frame: {reason}")
            waiter[0].set()
        elif not self.alive:
            self._refusal = reason
            self._connected.set()
        else:
            log.warning("STOMP broker %s:%s reported an error: %s", self._settings.host, self._settings.port, reason)

    def on_disconnected(self) -> None:
        self._lost()

    def on_heartbeat_timeout(self) -> None:
        log.warning("STOMP broker %s:%s missed its heartbeats; reconnecting", self._settings.host, self._settings.port)

    # -- calls --

    def _lost(self) -> None:
        with self._lock:
            if self._gone.is_set():
                return
            self._gone.set()
            self.alive = False
            waiters, self._receipts = list(self._receipts.values()), {}
            inboxes = list(self._inboxes.values())
        self._connected.set()
        for waiter in waiters:
            waiter[1] = LinkLost("the connection ended")
            waiter[0].set()
        for inbox in inboxes:
            inbox.put(None)
        if self._on_lost is not None:
            self._on_lost(self)

    def call(self, send: Callable[[str], None], timeout: float = RECEIPT_TIMEOUT) -> None:
        """Run `send(receipt_id)` (frames, the last asking for that receipt) and wait until the
        broker confirms it. The broker handles a connection's frames in order, so the receipt
        confirms every frame before it too."""
        receipt = uuid.uuid4().hex
        waiter: list = [threading.Event(), None]
        with self._lock:
            if not self.alive:
                raise LinkLost("the connection ended")
            self._receipts[receipt] = waiter
        try:
            send(receipt)
        except TRANSPORT_ERRORS as exc:
            self.drop()
            raise LinkLost(f"sending failed: {type(exc).__name__}") from None
        if not waiter[0].wait(timeout):
            self.drop()
            raise LinkLost(f"no receipt within {timeout:g} s")
        if waiter[1] is not None:
            raise waiter[1]

    def open_inbox(self, subscription: str) -> SimpleQueue:
        inbox: SimpleQueue = SimpleQueue()
        with self._lock:
            if not self.alive:
                raise LinkLost("the connection ended")
            self._inboxes[subscription] = inbox
        return inbox

    def close_inbox(self, subscription: str) -> None:
        """Forget the inbox and UNSUBSCRIBE (a broken connection is dropped)."""
        with self._lock:
            self._inboxes.pop(subscription, None)
        if self.alive:
            try:
                self.conn.unsubscribe(subscription)
            except TRANSPORT_ERRORS:
                self.drop()

    def drop(self) -> None:
        """End the connection without a goodbye (the broker keeps nothing for it)."""
        try:
            self.conn.transport.disconnect_socket()
        except Exception:  # the socket may already be half torn down; it is gone either way
            pass
        self._lost()

    def close(self, timeout: float = 2.0) -> None:
        """DISCONNECT politely (the broker then returns unacked messages to the queue at once)."""
        if self.alive:
            try:
                self.conn.disconnect()
            except TRANSPORT_ERRORS:
                pass
            self._gone.wait(timeout)
        self.drop()
