"""Every queue payload is encrypted before it leaves the process (invariant 7).

`EncryptedQueue` wraps any backend: bodies are sealed with AES-256-GCM under a data key from
the platform's key provider, the wrapped data key travels in the envelope, and the backend,
its files, the broker and SQS only ever hold ciphertext. Groups (device ids) and ids are not
PHI and stay readable for ordering.

Envelope: `b"FSQ1"`, the wrapped key's length (2 bytes, big-endian), the wrapped key, a 12-byte
nonce, the ciphertext and its tag. A data key is reused for `rotate_after` messages or
`rotate_seconds` (fewer calls to a KMS, and a nonce space far from exhaustion), then replaced.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fieldsync.errors import Error, QueueDecryptError
from fieldsync.crypto.keys import KeyProvider
from fieldsync.queue.embedded import Message, Queue, QueueDepth

__all__ = ["EncryptedQueue", "QueueDecryptError", "MAGIC"]

MAGIC = b"FSQ1"
_AAD = b"fieldsync-queue-v1"


class EncryptedQueue:
    """A Queue whose bodies are encrypted on send and decrypted on receive."""

    def __init__(self, inner: Queue, keys: KeyProvider, *, rotate_after: int = 100_000,
                 rotate_seconds: float = 3600.0):
        self.inner = inner
        self.keys = keys
        self.rotate_after = rotate_after
        self.rotate_seconds = rotate_seconds
        self._lock = threading.Lock()
        self._current: tuple[AESGCM, bytes] | None = None
        self._used = 0
        self._born = 0.0
        self._unwrapped: OrderedDict[bytes, AESGCM] = OrderedDict()

    # -- sealing ---------------------------------------------------------------------------------
    def _key(self) -> tuple[AESGCM, bytes]:
        with self._lock:
            now = time.monotonic()
            if (self._current is None or self._used >= self.rotate_after
                    or now - self._born > self.rotate_seconds):
                key, wrapped = self.keys.generate_data_key()
                self._current, self._used, self._born = (AESGCM(key), wrapped), 0, now
            self._used += 1
            return self._current

    def seal(self, body: bytes) -> bytes:
        aead, wrapped = self._key()
        nonce = os.urandom(12)
        return MAGIC + len(wrapped).to_bytes(2, "big") + wrapped + nonce + aead.encrypt(nonce, bytes(body), _AAD)

    def open(self, envelope: bytes) -> bytes:
        if not envelope.startswith(MAGIC) or len(envelope) < 6:
            raise QueueDecryptError("the message is not a fieldsync envelope")
        size = int.from_bytes(envelope[4:6], "big")
        wrapped = bytes(envelope[6:6 + size])
        nonce = envelope[6 + size:18 + size]
        with self._lock:
            aead = self._unwrapped.get(wrapped)
        if aead is None:
            aead = AESGCM(self.keys.decrypt_data_key(wrapped))
            with self._lock:
                self._unwrapped[wrapped] = aead
                while len(self._unwrapped) > 64:
                    self._unwrapped.popitem(last=False)
        try:
            return aead.decrypt(nonce, envelope[18 + size:], _AAD)
        except InvalidTag:
            raise QueueDecryptError("the message was altered (its tag does not verify)") from None

    def _opened(self, messages: list[Message]) -> list[Message]:
        # a body that does not open is handed on as it is: its handler fails on it and the
        # queue dead-letters it after max_receives, where `fieldsync dlq list` shows it
        out = []
        for m in messages:
            try:
                out.append(replace(m, body=self.open(m.body)))
            except Error:
                out.append(m)
        return out

    # -- Queue -----------------------------------------------------------------------------------
    def send(self, body: bytes, *, group: str | None = None) -> str:
        return self.inner.send(self.seal(body), group=group)

    def send_batch(self, items: Sequence[tuple[bytes, str | None]]) -> list[str]:
        return self.inner.send_batch([(self.seal(body), group) for body, group in items])

    def receive(self, max_messages: int = 10, *, visibility_timeout: float = 60.0,
                wait_seconds: float = 0.0) -> list[Message]:
        return self._opened(self.inner.receive(max_messages, visibility_timeout=visibility_timeout,
                                               wait_seconds=wait_seconds))

    def ack(self, receipts: Sequence[str]) -> None:
        self.inner.ack(receipts)

    def extend(self, receipt: str, seconds: float) -> None:
        self.inner.extend(receipt, seconds)

    def release(self, receipts: Sequence[str], delay: float = 0.0) -> None:
        self.inner.release(receipts, delay)

    def pending(self, group: str | None = None) -> int:
        return self.inner.pending(group)

    def dead_letters(self, limit: int = 100) -> list[Message]:
        return self._opened(self.inner.dead_letters(limit))

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        return self.inner.replay_dead(ids)

    def depth(self) -> QueueDepth:
        return self.inner.depth()

    @property
    def max_receives(self) -> int:
        return getattr(self.inner, "max_receives", 5)

    def close(self) -> None:
        self.inner.close()
