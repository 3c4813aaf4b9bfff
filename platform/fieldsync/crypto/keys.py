"""Key providers: where data keys come from and how they are wrapped (envelope encryption).

A data key (32 random bytes, AES-256-GCM) encrypts data; the provider wraps it under a master
key that never leaves the provider, and the wrapped key travels with the data. Any process
with access to the provider can unwrap it; a stolen message or file alone reveals nothing.

Both methods take an optional encryption context: a small mapping of strings bound to the
wrapped key, so it unwraps only with the same mapping (a data key moved to another entity or
purpose fails). The context is not secret and is logged by KMS (CloudTrail): callers put only
references in it (entity name, key id, purpose), never PHI.

Providers (`KEY_PROVIDER`, chosen by `fieldsync.crypto.providers.key_provider_from_config`):

    local   `LocalKeyProvider`: the master key in a file of the data directory (mode 0600,
            created on first use; never in the repository) — the embedded default.
    kms     `fieldsync.crypto.kms.KmsKeyProvider`: AWS KMS GenerateDataKey / Decrypt under
            `KMS_KEY_ID`; the master key never leaves KMS.

Wrapped keys start with the provider's prefix (`L1`, `K1`), so a key wrapped by one provider
and handed to another fails with a KeyUnavailable that says which provider wrapped it.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Mapping, Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fieldsync.errors import ConfigError, KeyUnavailable

__all__ = ["KeyProvider", "KeyUnavailable", "LocalKeyProvider", "canonical_context",
           "wrapped_by"]

_LOCAL_PREFIX = b"L1"
_PREFIXES = {b"L1": "the local key provider", b"K1": "the AWS KMS key provider"}


class KeyProvider(Protocol):
    def generate_data_key(self, *, context: Mapping[str, str] | None = None) -> tuple[bytes, bytes]:
        """A fresh data key: `(plaintext key, wrapped key)`, the wrapped key bound to `context`."""

    def decrypt_data_key(self, wrapped: bytes, *, context: Mapping[str, str] | None = None) -> bytes:
        """The plaintext of a wrapped data key; KeyUnavailable when it cannot be unwrapped
        (including with another `context` than the one it was wrapped with)."""


def canonical_context(context: Mapping[str, str] | None) -> dict[str, str]:
    """The context as a plain dict of strings (empty for None); TypeError naming the entry
    that is not a string (KMS takes only strings, and a number would bind differently)."""
    if not context:
        return {}
    out: dict[str, str] = {}
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"an encryption context maps strings to strings; entry {key!r} has a "
                            f"{type(value).__name__} value")
        out[key] = value
    return out


def _context_aad(context: Mapping[str, str] | None) -> bytes:
    """Associated data of a local wrap: the prefix alone without a context (keys wrapped before
    contexts existed still unwrap), else the prefix and the context as canonical JSON."""
    items = canonical_context(context)
    if not items:
        return _LOCAL_PREFIX
    return _LOCAL_PREFIX + b"\x00" + json.dumps(items, sort_keys=True, separators=(",", ":"),
                                                 ensure_ascii=False).encode("utf-8")


def wrapped_by(wrapped: bytes) -> str:
    """Which provider wrapped a data key, in words (for error messages)."""
    return _PREFIXES.get(bytes(wrapped[:2]), "no fieldsync key provider")


class LocalKeyProvider:
    """Master key in `<directory>/master.key` (32 bytes, mode 0600)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._aead: AESGCM | None = None

    def __repr__(self) -> str:
        return f"LocalKeyProvider({str(self.directory)!r})"

    def _master(self) -> AESGCM:
        with self._lock:
            if self._aead is None:
                path = self.directory / "master.key"
                if not path.exists():
                    self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                    try:
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    except FileExistsError:
                        pass  # another process created it first
                    else:
                        with os.fdopen(fd, "wb") as f:
                            f.write(os.urandom(32))
                key = path.read_bytes()
                if len(key) != 32:
                    raise ConfigError(f"{path}: a master key is 32 bytes, this file has {len(key)}")
                self._aead = AESGCM(key)
            return self._aead

    def generate_data_key(self, *, context: Mapping[str, str] | None = None) -> tuple[bytes, bytes]:
        aad = _context_aad(context)
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        return key, _LOCAL_PREFIX + nonce + self._master().encrypt(nonce, key, aad)

    def decrypt_data_key(self, wrapped: bytes, *, context: Mapping[str, str] | None = None) -> bytes:
        aad = _context_aad(context)
        wrapped = bytes(wrapped)
        if not wrapped.startswith(_LOCAL_PREFIX):
            raise KeyUnavailable(f"the data key was wrapped by {wrapped_by(wrapped)}, not by the local key "
                                 f"provider (KEY_PROVIDER=local, {self.directory / 'master.key'})")
        if len(wrapped) != 2 + 12 + 32 + 16:
            raise KeyUnavailable("not a data key wrapped by the local key provider (wrong length)")
        try:
            return self._master().decrypt(wrapped[2:14], wrapped[14:], aad)
        except Exception:
            raise KeyUnavailable(f"the data key does not unwrap under the master key "
                                 f"{self.directory / 'master.key'} with this encryption context "
                                 "(another master key, another context, or an altered key)") from None
