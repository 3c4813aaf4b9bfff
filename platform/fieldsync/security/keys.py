"""Key providers: where data keys come from and how they are wrapped (envelope encryption).

A data key (32 random bytes, AES-256-GCM) encrypts data; the provider wraps it under a master
key that never leaves the provider, and the wrapped key travels with the data. Any process
with access to the provider can unwrap it; a stolen message or file alone reveals nothing.

`LocalKeyProvider` keeps the master key in a file of the data directory (mode 0600, created on
first use; never in the repository) — the embedded default. The security issue adds a KMS
provider behind the same two methods.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fieldsync.errors import ConfigError, Error

__all__ = ["KeyProvider", "KeyUnavailable", "LocalKeyProvider", "key_provider_from_config"]

_LOCAL_PREFIX = b"L1"


class KeyUnavailable(Error):
    """A wrapped data key cannot be unwrapped: another master key, or the data was altered."""


class KeyProvider(Protocol):
    def generate_data_key(self) -> tuple[bytes, bytes]:
        """A fresh data key: `(plaintext key, wrapped key)`."""

    def decrypt_data_key(self, wrapped: bytes) -> bytes:
        """The plaintext of a wrapped data key; KeyUnavailable when it cannot be unwrapped."""


class LocalKeyProvider:
    """Master key in `<directory>/master.key` (32 bytes, mode 0600)."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._aead: AESGCM | None = None

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

    def generate_data_key(self) -> tuple[bytes, bytes]:
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(12)
        return key, _LOCAL_PREFIX + nonce + self._master().encrypt(nonce, key, _LOCAL_PREFIX)

    def decrypt_data_key(self, wrapped: bytes) -> bytes:
        if not wrapped.startswith(_LOCAL_PREFIX) or len(wrapped) != 2 + 12 + 32 + 16:
            raise KeyUnavailable("not a data key wrapped by the local key provider")
        try:
            return self._master().decrypt(wrapped[2:14], wrapped[14:], _LOCAL_PREFIX)
        except Exception:
            raise KeyUnavailable("the data key does not unwrap under this master key") from None


def key_provider_from_config(config) -> KeyProvider:
    """The key provider the configuration names (`KEY_PROVIDER`: `local`)."""
    kind = str(config.get("KEY_PROVIDER") or "local")
    if kind == "local":
        return LocalKeyProvider(config.get("KEYS_DIR") or (config.data_dir / "keys"))
    raise ConfigError(f"KEY_PROVIDER {kind!r} is not known; available: 'local'")
