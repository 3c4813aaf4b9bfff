"""The embedded media store: a directory under DATA_DIR, served by the platform itself.

Files arrive through the tus server (media/service.py checks them), are moved in under a name
derived from their reference, and leave by signed, expiring URLs (`/api/v1/media/blob/<ref>?
exp=…&sig=…`, an HMAC over reference and expiry with a key-ring key). PHI media (a field with
`phi: true`) is sealed with AES-256-GCM in chunks as it is written — the file never sits whole
in memory, and its plaintext never lands in the store (invariant 7):

    "FSM1" | kid length (1 byte) | kid | nonce prefix (7 bytes) | chunk…
    chunk = AES-GCM(key, nonce = prefix ‖ counter (4 bytes) ‖ last flag (1 byte), ≤64 KiB, aad = ref)

The counter and the last flag in the nonce make reordered, repeated and truncated chunks fail
authentication; the reference as associated data stops one object's file passing for another's.
"""

from __future__ import annotations

import hmac
import os
import shutil
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

from fieldsync.errors import Problem, ProblemType

__all__ = ["CHUNK", "LocalMediaStore", "media_scope"]

CHUNK = 64 * 1024
_TAG = 16
_MAGIC = b"FSM1"
SIGNING_SCOPE = "media-url"


def media_scope(entity: str, field: str) -> str:
    """The key-ring scope whose key seals one media field's PHI files."""
    return f"media:{entity}.{field}"


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if last else 0)


class LocalMediaStore:
    """Media files under `root`, sealed with `keyring` keys when they hold PHI."""

    kind = "local"

    def __init__(self, root: str | Path, keyring, *, url_ttl: int = 300):
        self.root = Path(root)
        self.keyring = keyring
        self.url_ttl = url_ttl

    def path_of(self, location: str) -> Path:
        return self.root / location

    @staticmethod
    def location_for(ref: str) -> str:
        tail = ref.split(":", 1)[1]
        return f"{tail[-2:]}/{tail}"

    def put(self, ref: str, source: Path, *, scope: str | None) -> str:
        """Move the completed upload `source` into the store (sealed under `scope`'s key when
        given); its location."""
        location = self.location_for(ref)
        target = self.path_of(location)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".partial")
        if scope is None:
            shutil.copyfile(source, partial)
        else:
            kid, aead = self.keyring.active(scope)
            prefix = os.urandom(7)
            aad = ref.encode()
            with open(source, "rb") as src, open(partial, "wb") as out:
                out.write(_MAGIC + bytes([len(kid)]) + kid.encode() + prefix)
                counter, block = 0, src.read(CHUNK)
                while True:
                    following = src.read(CHUNK)
                    last = not following
                    out.write(aead.encrypt(_nonce(prefix, counter, last), block, aad))
                    if last:
                        break
                    counter, block = counter + 1, following
        os.replace(partial, target)
        return location

    def read(self, ref: str, location: str, *, sealed: bool) -> Iterator[bytes]:
        """The plaintext of a stored file, chunk by chunk (authenticated as it goes)."""
        path = self.path_of(location)
        with open(path, "rb") as src:
            if not sealed:
                while block := src.read(CHUNK):
                    yield block
                return
            yield from self._open_sealed(ref, src)

    def _open_sealed(self, ref: str, src: BinaryIO) -> Iterator[bytes]:
        head = src.read(5)
        if head[:4] != _MAGIC:
            raise ValueError("not a sealed media file")
        kid = src.read(head[4]).decode()
        prefix = src.read(7)
        aead = self.keyring.cipher(kid)
        aad = ref.encode()
        counter, block = 0, src.read(CHUNK + _TAG)
        while True:
            following = src.read(CHUNK + _TAG)
            last = not following
            yield aead.decrypt(_nonce(prefix, counter, last), block, aad)
            if last:
                return
            counter, block = counter + 1, following

    # -- signed URLs ---------------------------------------------------------------------------
    def _mac(self, ref: str, expires: int) -> list[bytes]:
        return self.keyring.macs_in_use(SIGNING_SCOPE, f"{ref}\n{expires}".encode())

    def signed_query(self, ref: str, now: int) -> tuple[int, str]:
        """(expiry, signature) for a download URL of `ref` valid `url_ttl` seconds from `now`."""
        expires = now + self.url_ttl
        sig = self.keyring.mac(SIGNING_SCOPE, f"{ref}\n{expires}".encode()).hex()
        return expires, sig

    def check_signature(self, ref: str, expires: str, sig: str, now: int) -> None:
        """Refuse (403) a download URL whose signature is not ours or whose time is past."""
        if not (expires.isascii() and expires.isdigit() and len(expires) <= 12) or not sig.isascii():
            raise Problem(ProblemType.FORBIDDEN, "the download link is not valid")
        exp = int(expires)
        if not any(hmac.compare_digest(mac.hex(), sig) for mac in self._mac(ref, exp)):
            raise Problem(ProblemType.FORBIDDEN, "the download link is not valid")
        if exp < now:
            raise Problem(ProblemType.FORBIDDEN, "the download link has expired; ask for a new one")

    def remove(self, location: str) -> None:
        try:
            self.path_of(location).unlink()
        except FileNotFoundError:
            pass

