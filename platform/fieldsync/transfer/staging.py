"""Sealed staging of resumable uploads: how the bytes of a tus upload sit on the server's disk
until its purpose takes them (docs/decisions.md "tus uploads", docs/security.md).

Invariant 7 (no PHI in plaintext at rest on the server): a prescription photo or a device's
outbox may wait days in `DATA_DIR/transfer/` for its last byte, so nothing of it is stored in
plaintext. Each upload has its own random AES-256 data key, kept in the upload's record wrapped
by the key ring (scope `transfer:staging`, AAD naming the upload id); removing the record shreds
the key, and with it the bytes.

The data file is a sequence of frames, one per piece written (at most `FRAME_BYTES` of
plaintext each):

    plaintext length (4 bytes, big-endian) | nonce (12 random bytes) | AES-GCM ciphertext | tag (16)

The AAD of a frame is `fieldsync-tus-frame:` + upload id + frame index (8 bytes) + the frame's
plaintext offset (8 bytes), so a frame moved to another place, another upload, or a file cut
at a frame boundary is refused. Nonces are random, never derived from the frame index: a frame
discarded (checksum mismatch, torn write) is written again at the same index with other bytes,
and a derived nonce would then be reused under the same key.

Offsets stay plaintext offsets (what tus clients see); the record keeps beside each offset the
sealed size and frame count that back it, and `whole_frames` finds the last whole frame of a
file cut short by a crash.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fieldsync.errors import KeyMissing, KeyShredded, Problem, ProblemType

__all__ = ["FRAME_BYTES", "KEY_SCOPE", "FrameWriter", "StagedSource", "StagingKeys", "open_metadata", "refused", "seal_frame",
           "seal_metadata", "whole_frames"]

KEY_SCOPE = "transfer:staging"
FRAME_BYTES = 256 * 1024           # plaintext bytes of a frame at most
_HEADER = struct.Struct(">I12s")   # plaintext length, nonce
_TAG = 16
FRAME_OVERHEAD = _HEADER.size + _TAG


def refused(upload_id: str, detail: str) -> Problem:
    """The problem of staged bytes (or a record) that do not authenticate: a 4xx naming the
    upload, never a 5xx: the client's remedy is to upload the file again."""
    return Problem(ProblemType.UPLOAD_CORRUPT, f"upload {upload_id}: {detail}; delete it and upload the file again",
                   extra={"upload": upload_id})


def _frame_aad(upload_id: str, index: int, start: int) -> bytes:
    return b"fieldsync-tus-frame:" + upload_id.encode() + struct.pack(">QQ", index, start)


def _key_aad(upload_id: str) -> bytes:
    return b"fieldsync-tus-key:" + upload_id.encode()


def _metadata_aad(upload_id: str) -> bytes:
    return b"fieldsync-tus-metadata:" + upload_id.encode()


def seal_frame(aead: AESGCM, upload_id: str, index: int, start: int, plaintext: bytes) -> tuple[bytes, bytes]:
    """One frame, as (header, ciphertext and tag) to write one after the other: `plaintext` (at
    most FRAME_BYTES) sealed as frame `index` of the upload, starting at plaintext offset
    `start`. Two parts, not one: joining them copies the frame into fresh pages, which cost
    more than the encryption (4x slower sealing, measured)."""
    nonce = os.urandom(12)
    return _HEADER.pack(len(plaintext), nonce), aead.encrypt(nonce, plaintext, _frame_aad(upload_id, index, start))


def whole_frames(path: Path) -> tuple[int, int, int]:
    """(sealed bytes, frames, plaintext bytes) of the whole frames at the start of `path`,
    reading headers only: where a file cut by a crash mid-frame must be cut back to. A header
    that cannot be a frame's ends the walk there too."""
    sealed = frames = plain = 0
    size = path.stat().st_size
    with open(path, "rb") as data:
        while sealed + _HEADER.size <= size:
            data.seek(sealed)
            length, _nonce = _HEADER.unpack(data.read(_HEADER.size))
            end = sealed + _HEADER.size + length + _TAG
            if not 0 < length <= FRAME_BYTES or end > size:
                break
            sealed, frames, plain = end, frames + 1, plain + length
    return sealed, frames, plain


class StagingKeys:
    """Per-upload data keys, wrapped by the key ring's `transfer:staging` key."""

    def __init__(self, keyring):
        self.keyring = keyring

    def new(self, upload_id: str) -> tuple[dict[str, str], AESGCM]:
        """A fresh data key for `upload_id`: (its envelope for the record, its cipher)."""
        key = AESGCM.generate_key(bit_length=256)
        kid, aead = self.keyring.active(KEY_SCOPE)
        nonce = os.urandom(12)
        wrapped = nonce + aead.encrypt(nonce, key, _key_aad(upload_id))
        return {"kid": kid, "wrapped": base64.b64encode(wrapped).decode()}, AESGCM(key)

    def open(self, upload_id: str, envelope: Mapping[str, str]) -> AESGCM:
        """The cipher of the upload's data key; `upload-corrupt` when the envelope does not
        unwrap (altered, moved from another record, or its key-ring key destroyed)."""
        try:
            wrapped = base64.b64decode(envelope["wrapped"], validate=True)
            key = self.keyring.cipher(envelope["kid"]).decrypt(wrapped[:12], wrapped[12:], _key_aad(upload_id))
        except (InvalidTag, KeyMissing, KeyShredded, KeyError, TypeError, ValueError):
            raise refused(upload_id, "its data key does not unwrap") from None
        return AESGCM(key)


def seal_metadata(aead: AESGCM, upload_id: str, metadata: Mapping[str, str]) -> str:
    """`Upload-Metadata` as sent, sealed for the record (a file name may say who it is about)."""
    nonce = os.urandom(12)
    text = json.dumps(dict(metadata), separators=(",", ":")).encode()
    return base64.b64encode(nonce + aead.encrypt(nonce, text, _metadata_aad(upload_id))).decode()


def open_metadata(aead: AESGCM, upload_id: str, sealed: str) -> dict[str, str]:
    """The metadata `seal_metadata` sealed; `upload-corrupt` when it does not authenticate."""
    try:
        raw = base64.b64decode(sealed, validate=True)
        return json.loads(aead.decrypt(raw[:12], raw[12:], _metadata_aad(upload_id)))
    except (InvalidTag, TypeError, ValueError):
        raise refused(upload_id, "its metadata does not authenticate") from None


class _FrameReader(io.RawIOBase):
    """The plaintext of a sealed staging file, frame by frame; a frame that does not
    authenticate, a missing frame or bytes past the last one raise `upload-corrupt`."""

    def __init__(self, source: "StagedSource"):
        self._source = source
        self._file: BinaryIO = open(source.path, "rb")
        self._index = 0
        self._plain = 0                 # plaintext bytes of the frames read so far
        self._buffer = memoryview(b"")

    def readable(self) -> bool:
        return True

    def _next_frame(self) -> bool:
        source = self._source
        if self._plain >= source.size:
            if self._file.read(1):
                raise refused(source.upload_id, "its staged file runs past its last frame")
            return False
        header = self._file.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise refused(source.upload_id, f"its staged file ends at byte {self._plain} of {source.size}")
        length, nonce = _HEADER.unpack(header)
        if not 0 < length <= min(FRAME_BYTES, source.size - self._plain):
            raise refused(source.upload_id, f"frame {self._index} has an impossible length")
        sealed = self._file.read(length + _TAG)
        try:
            plaintext = source._aead.decrypt(nonce, sealed, _frame_aad(source.upload_id, self._index, self._plain))
        except InvalidTag:
            raise refused(source.upload_id, f"frame {self._index} does not authenticate (altered, moved or cut)") from None
        self._index += 1
        self._plain += length
        self._buffer = memoryview(plaintext)
        return True

    def readinto(self, target) -> int:
        if not self._buffer and not self._next_frame():
            return 0
        n = min(len(target), len(self._buffer))
        target[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


@dataclass(frozen=True)
class StagedSource:
    """What a completion handler gets for the upload's bytes: `size` plaintext bytes, read with
    `open()` (a binary stream decrypting frame by frame, never a plaintext file on disk).
    `path` is the sealed file (a handler may move it to a store that keeps it sealed, with
    `envelope`, the upload's wrapped data key)."""

    upload_id: str
    path: Path
    size: int
    envelope: Mapping[str, Any]
    _aead: AESGCM

    def open(self) -> BinaryIO:
        """The plaintext as a buffered binary stream; reading raises `Problem(upload-corrupt)`
        at a frame that does not authenticate, before any of its bytes are returned."""
        return io.BufferedReader(_FrameReader(self), buffer_size=FRAME_BYTES)

    def read_bytes(self) -> bytes:
        """The whole plaintext (for small uploads)."""
        with self.open() as stream:
            return stream.read()

    def verify(self) -> None:
        """Authenticate every frame (nothing kept); `Problem(upload-corrupt)` at the first bad one."""
        reader = _FrameReader(self)
        try:
            while reader._next_frame():
                pass
        finally:
            reader.close()


class FrameWriter:
    """Seals the bytes of one PATCH into frames of FRAME_BYTES (the last one shorter) appended
    to `out`, numbered from `index` at plaintext offset `start`. `add` buffers at most one frame."""

    def __init__(self, out: BinaryIO, aead: AESGCM, upload_id: str, *, index: int, start: int):
        self._out, self._aead, self._upload_id = out, aead, upload_id
        self._pending = bytearray()
        self.index, self.start = index, start
        self.frames = 0          # frames written by this writer
        self.sealed = 0          # their bytes on disk
        self.plain = 0           # their plaintext bytes

    def add(self, piece: bytes) -> None:
        if not self._pending and len(piece) == FRAME_BYTES:
            self._seal(piece)   # the usual piece (READ_SIZE): sealed without a copy
            return
        self._pending += piece
        while len(self._pending) >= FRAME_BYTES:
            self._seal(bytes(self._pending[:FRAME_BYTES]))
            del self._pending[:FRAME_BYTES]

    def finish(self) -> None:
        """Seal what is buffered (the body ended or was cut)."""
        if self._pending:
            self._seal(bytes(self._pending))
            self._pending.clear()

    def _seal(self, plaintext: bytes) -> None:
        header, sealed = seal_frame(self._aead, self._upload_id, self.index + self.frames, self.start + self.plain,
                                    plaintext)
        self._out.write(header)
        self._out.write(sealed)
        self.frames += 1
        self.sealed += len(header) + len(sealed)
        self.plain += len(plaintext)
