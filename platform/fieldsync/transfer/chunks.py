"""The chunk format of transfers (docs/protocol.md §11): compressed, authenticated chunks under
a signed manifest. Pure: the server builds with it and the SDK reads with it.

A payload is a sequence of frames (bytes). Each frame becomes one chunk:

    chunk i = AES-256-GCM(key, nonce = prefix ‖ i ‖ last, zstd(frame), aad = "fieldsync-chunk:" ‖ bundle id)

where `prefix` is 7 random bytes of the bundle, `i` a 4-byte big-endian counter and `last` one
byte, 1 on the final chunk and 0 elsewhere. So a chunk moved to another place (reordered), a
chunk played again (replayed), a bundle cut after a chunk that is not its last (truncated), a
chunk from another bundle and a flipped bit are all refused when the chunk is opened, before any
of its rows is used.

The manifest names the chunks (size and SHA-256 of each sealed chunk, the SHA-256 of the whole
payload, rows per entity and per chunk) and what the payload is consistent with (cursor, schema
version, scope hash). The server signs it with Ed25519; the device checks the signature against
a key it learned over its pinned TLS connection before it trusts any number in it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Iterable, Iterator, Mapping

import zstandard
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fieldsync.errors import ChunkRefused

__all__ = ["ChunkRefused", "Manifest", "ChunkInfo", "Sealer", "Opener", "new_key", "new_prefix", "seal_frames",
           "sign_manifest", "verify_manifest", "public_key_text", "key_text", "key_bytes", "write_payload", "FORMAT"]

FORMAT = "fieldsync-chunks/1"
PREFIX_BYTES = 7
KEY_BYTES = 32
MAX_CHUNKS = 2 ** 32 - 1
MAX_FRAME_BYTES = 64 * 1024 * 1024    # a chunk never decompresses to more than this
ZSTD_LEVEL = 3


def new_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def new_prefix() -> bytes:
    return os.urandom(PREFIX_BYTES)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    if not isinstance(text, str):
        raise ChunkRefused("a base64 value is not a string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise ChunkRefused("a base64 value does not decode") from None


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">IB", index, 1 if last else 0)


def _aad(bundle_id: str) -> bytes:
    return b"fieldsync-chunk:" + bundle_id.encode()


class Sealer:
    """Seals the frames of one payload, in order."""

    def __init__(self, key: bytes, prefix: bytes, bundle_id: str, *, level: int = ZSTD_LEVEL):
        if len(key) != KEY_BYTES or len(prefix) != PREFIX_BYTES:
            raise ValueError("a chunk key is 32 bytes and a nonce prefix 7")
        self._aead = AESGCM(key)
        self._prefix = prefix
        self._aad = _aad(bundle_id)
        self._zstd = zstandard.ZstdCompressor(level=level)

    def seal(self, index: int, frame: bytes, *, last: bool) -> bytes:
        if not 0 <= index < MAX_CHUNKS:
            raise ValueError("too many chunks")
        if len(frame) > MAX_FRAME_BYTES:
            raise ValueError(f"a frame is at most {MAX_FRAME_BYTES} bytes")
        return self._aead.encrypt(_nonce(self._prefix, index, last), self._zstd.compress(frame), self._aad)


class Opener:
    """Opens the chunks of one payload: each at its index, the last one only as the last."""

    def __init__(self, key: bytes, prefix: bytes, bundle_id: str):
        if len(key) != KEY_BYTES or len(prefix) != PREFIX_BYTES:
            raise ChunkRefused("the chunk key or nonce prefix has the wrong length")
        self._aead = AESGCM(key)
        self._prefix = prefix
        self._aad = _aad(bundle_id)
        self._zstd = zstandard.ZstdDecompressor()

    def open(self, index: int, sealed: bytes, *, last: bool) -> bytes:
        try:
            compressed = self._aead.decrypt(_nonce(self._prefix, index, last), sealed, self._aad)
        except InvalidTag:
            raise ChunkRefused(f"chunk {index} does not authenticate (changed, moved, replayed or cut)") from None
        try:
            # a frame that declares its size is decompressed to that size: refuse a bomb first
            if zstandard.frame_content_size(compressed) > MAX_FRAME_BYTES:
                raise ChunkRefused(f"chunk {index} decompresses to more than {MAX_FRAME_BYTES} bytes")
            return self._zstd.decompress(compressed, max_output_size=MAX_FRAME_BYTES)
        except zstandard.ZstdError as exc:
            raise ChunkRefused(f"chunk {index} does not decompress: {exc}") from None


def seal_frames(sealer: Sealer, frames: Iterable[bytes]) -> Iterator[bytes]:
    """The sealed chunks of `frames`, the last one flagged (one frame of look-ahead)."""
    pending: bytes | None = None
    index = 0
    for frame in frames:
        if pending is not None:
            yield sealer.seal(index, pending, last=False)
            index += 1
        pending = frame
    yield sealer.seal(index, pending if pending is not None else b"", last=True)


def write_payload(out: BinaryIO, frames: Iterable[tuple[bytes, int, str | None]], *, key: bytes, bundle_id: str,
                  kind: str, level: int = ZSTD_LEVEL) -> "Manifest":
    """Seal `frames` ((frame, rows, entity) each) into `out` as one payload and return its
    manifest (chunks, digests and row totals; the caller adds cursor, scope and version)."""
    prefix = new_prefix()
    sealer = Sealer(key, prefix, bundle_id, level=level)
    whole = hashlib.sha256()
    chunks: list[ChunkInfo] = []
    rows: dict[str, int] = {}
    pending: tuple[bytes, int, str | None] | None = None

    def emit(item: tuple[bytes, int, str | None], last: bool) -> None:
        frame, count, entity = item
        sealed = sealer.seal(len(chunks), frame, last=last)
        out.write(sealed)
        whole.update(sealed)
        chunks.append(ChunkInfo(len(sealed), hashlib.sha256(sealed).hexdigest(), count, entity))
        if entity is not None:
            rows[entity] = rows.get(entity, 0) + count

    for item in frames:
        if pending is not None:
            emit(pending, False)
        pending = item
    emit(pending if pending is not None else (b"", 0, None), True)
    return Manifest(bundle_id=bundle_id, kind=kind, prefix=_b64(prefix), chunks=chunks, sha256=whole.hexdigest(),
                    rows=rows)


@dataclass(frozen=True)
class ChunkInfo:
    size: int                  # bytes of the sealed chunk
    sha256: str                # hex SHA-256 of the sealed chunk
    rows: int = 0              # rows the chunk holds (0 for a chunk of another kind of payload)
    entity: str | None = None  # the entity whose rows it holds, for a snapshot bundle


@dataclass
class Manifest:
    """What a payload is: its chunks, totals and the position it is consistent with."""

    bundle_id: str
    kind: str                              # "snapshot", "outbox", ...
    prefix: str                            # the nonce prefix, base64url
    chunks: list[ChunkInfo]
    sha256: str                            # hex SHA-256 of the whole sealed payload
    rows: dict[str, int] = field(default_factory=dict)
    cursor: int | None = None
    schema_version: int | None = None
    scope_hash: str | None = None
    entities: list[str] = field(default_factory=list)
    created_at: str | None = None
    format: str = FORMAT

    @property
    def size(self) -> int:
        return sum(c.size for c in self.chunks)

    def offset_of(self, index: int) -> int:
        """The byte offset of chunk `index` in the payload."""
        return sum(c.size for c in self.chunks[:index])

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "bundle_id": self.bundle_id, "kind": self.kind, "prefix": self.prefix,
                "chunks": [{"size": c.size, "sha256": c.sha256, "rows": c.rows, "entity": c.entity}
                           for c in self.chunks],
                "size": self.size, "sha256": self.sha256, "rows": dict(self.rows), "cursor": self.cursor,
                "schema_version": self.schema_version, "scope_hash": self.scope_hash,
                "entities": list(self.entities), "created_at": self.created_at}

    def canonical(self) -> bytes:
        """The bytes the signature covers."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()

    @classmethod
    def from_dict(cls, raw: Any) -> "Manifest":
        """A manifest from its JSON form, every member checked for type (untrusted input)."""
        try:
            if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
                raise ChunkRefused(f"not a {FORMAT} manifest")
            chunks = []
            for c in raw["chunks"]:
                size, digest, rows, entity = c["size"], c["sha256"], c.get("rows", 0), c.get("entity")
                if (not _is_count(size) or not _is_count(rows) or not isinstance(digest, str) or len(digest) != 64
                        or not (entity is None or isinstance(entity, str))):
                    raise ChunkRefused("a chunk entry of the manifest is malformed")
                chunks.append(ChunkInfo(size, digest, rows, entity))
            if not chunks or len(chunks) > MAX_CHUNKS:
                raise ChunkRefused("the manifest names no chunk")
            rows = raw.get("rows") or {}
            if not isinstance(rows, Mapping) or not all(isinstance(k, str) and _is_count(v) for k, v in rows.items()):
                raise ChunkRefused("the manifest's row counts are malformed")
            cursor, version = raw.get("cursor"), raw.get("schema_version")
            if not (cursor is None or _is_count(cursor)) or not (version is None or _is_count(version)):
                raise ChunkRefused("the manifest's cursor or schema version is malformed")
            manifest = cls(bundle_id=_text(raw["bundle_id"]), kind=_text(raw["kind"]), prefix=_text(raw["prefix"]),
                           chunks=chunks, sha256=_text(raw["sha256"]), rows=dict(rows), cursor=cursor,
                           schema_version=version, scope_hash=raw.get("scope_hash"),
                           entities=[_text(e) for e in raw.get("entities") or ()], created_at=raw.get("created_at"))
        except (KeyError, TypeError):
            raise ChunkRefused("the manifest lacks a member or mistypes one") from None
        if len(_unb64(manifest.prefix)) != PREFIX_BYTES:
            raise ChunkRefused("the manifest's nonce prefix has the wrong length")
        if raw.get("size") is not None and raw.get("size") != manifest.size:
            raise ChunkRefused("the manifest's size is not the sum of its chunks")
        return manifest

    def opener(self, key: bytes) -> Opener:
        return Opener(key, _unb64(self.prefix), self.bundle_id)

    def check_chunk(self, index: int, sealed: bytes) -> None:
        """Refuse a sealed chunk whose size or digest is not the manifest's for `index`."""
        if not 0 <= index < len(self.chunks):
            raise ChunkRefused(f"chunk {index} is not in the manifest")
        info = self.chunks[index]
        if len(sealed) != info.size or hashlib.sha256(sealed).hexdigest() != info.sha256:
            raise ChunkRefused(f"chunk {index} is not the one the manifest names")

    def open_chunk(self, opener: Opener, index: int, sealed: bytes) -> bytes:
        """Check `sealed` against the manifest, then open it."""
        self.check_chunk(index, sealed)
        return opener.open(index, sealed, last=index == len(self.chunks) - 1)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 63


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise ChunkRefused("a manifest member that must be a short string is not")
    return value


# -- signatures --------------------------------------------------------------------------------

def sign_manifest(private_key: Ed25519PrivateKey, manifest: Manifest) -> str:
    return _b64(private_key.sign(manifest.canonical()))


def verify_manifest(public_key: bytes | str, manifest: Manifest, signature: str) -> None:
    """Refuse a manifest whose Ed25519 signature does not verify under `public_key` (raw 32
    bytes, or their base64url text)."""
    raw = _unb64(public_key) if isinstance(public_key, str) else public_key
    try:
        Ed25519PublicKey.from_public_bytes(raw).verify(_unb64(signature), manifest.canonical())
    except (InvalidSignature, ValueError):
        raise ChunkRefused("the manifest's signature does not verify") from None


def public_key_text(private_key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
    return _b64(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def key_text(key: bytes) -> str:
    return _b64(key)


def key_bytes(text: Any) -> bytes:
    raw = _unb64(text)
    if len(raw) != KEY_BYTES:
        raise ChunkRefused("a bundle key is 32 bytes")
    return raw
