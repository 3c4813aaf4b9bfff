"""The chunk format (transfer/chunks.py): what goes in comes out, and a chunk that was changed,
moved, replayed from another payload or cut off is refused before any of it is used."""

from __future__ import annotations

import io
import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from fieldsync.transfer.chunks import (ChunkRefused, Manifest, new_key, public_key_text, sign_manifest,
                                       verify_manifest, write_payload)

frames_st = st.lists(st.binary(max_size=300), min_size=1, max_size=6)


def _payload(frames, key=None, bundle_id="b1"):
    key = key or new_key()
    out = io.BytesIO()
    manifest = write_payload(out, [(f, 1, "product") for f in frames], key=key, bundle_id=bundle_id, kind="snapshot")
    return key, manifest, out.getvalue()


def _split(manifest: Manifest, data: bytes) -> list[bytes]:
    chunks, at = [], 0
    for info in manifest.chunks:
        chunks.append(data[at:at + info.size])
        at += info.size
    return chunks


def _open_all(manifest: Manifest, key: bytes, chunks: list[bytes]) -> list[bytes]:
    opener = manifest.opener(key)
    return [manifest.open_chunk(opener, i, c) for i, c in enumerate(chunks)]


@settings(max_examples=40, deadline=None)
@given(frames_st)
def test_frames_come_back_in_order(frames):
    key, manifest, data = _payload(frames)
    assert manifest.size == len(data)
    assert manifest.rows == {"product": len(frames)}
    assert _open_all(manifest, key, _split(manifest, data)) == frames
    again = Manifest.from_dict(manifest.to_dict())
    assert again.canonical() == manifest.canonical()


@settings(max_examples=40, deadline=None)
@given(frames_st, st.data())
def test_a_flipped_bit_is_refused(frames, data):
    key, manifest, payload = _payload(frames)
    chunks = _split(manifest, payload)
    i = data.draw(st.integers(0, len(chunks) - 1))
    bit = data.draw(st.integers(0, len(chunks[i]) * 8 - 1))
    changed = bytearray(chunks[i])
    changed[bit // 8] ^= 1 << (bit % 8)
    chunks[i] = bytes(changed)
    with pytest.raises(ChunkRefused):
        _open_all(manifest, key, chunks)
    # the AEAD alone refuses it too, without the manifest's digest
    opener = manifest.opener(key)
    with pytest.raises(ChunkRefused):
        opener.open(i, chunks[i], last=i == len(chunks) - 1)


def test_reordered_chunks_are_refused_even_past_the_digests():
    key, manifest, payload = _payload([b"a" * 50, b"b" * 50, b"c" * 50])
    chunks = _split(manifest, payload)
    opener = manifest.opener(key)
    with pytest.raises(ChunkRefused):
        opener.open(0, chunks[1], last=False)      # the AEAD's nonce carries the index
    with pytest.raises(ChunkRefused):
        manifest.open_chunk(opener, 0, chunks[1])  # and the manifest names each chunk's digest


def test_a_truncated_payload_is_refused():
    key, manifest, payload = _payload([b"a" * 50, b"b" * 50, b"c" * 50])
    chunks = _split(manifest, payload)
    opener = manifest.opener(key)
    # a chunk that is not the last cannot pass as the last one: a cut payload never looks whole
    with pytest.raises(ChunkRefused):
        opener.open(1, chunks[1], last=True)
    # a manifest shortened to match the cut loses its signature
    private = Ed25519PrivateKey.generate()
    signature = sign_manifest(private, manifest)
    raw = manifest.to_dict()
    raw["chunks"] = raw["chunks"][:2]
    raw.pop("size")
    with pytest.raises(ChunkRefused):
        verify_manifest(public_key_text(private), Manifest.from_dict(raw), signature)


def test_a_chunk_from_another_payload_is_refused():
    key = new_key()
    _, manifest_a, payload_a = _payload([b"x" * 40, b"y" * 40], key=key, bundle_id="a")
    _, manifest_b, payload_b = _payload([b"x" * 40, b"y" * 40], key=key, bundle_id="b")
    chunk_b = _split(manifest_b, payload_b)[0]
    with pytest.raises(ChunkRefused):
        manifest_a.opener(key).open(0, chunk_b, last=False)   # same key, other bundle: other prefix and aad


def test_the_signature_covers_every_member():
    _, manifest, _ = _payload([b"row"])
    manifest.cursor, manifest.schema_version, manifest.scope_hash = 7, 3, "s1:abc"
    private = Ed25519PrivateKey.generate()
    signature = sign_manifest(private, manifest)
    verify_manifest(public_key_text(private), manifest, signature)
    for member, value in (("cursor", 6), ("schema_version", 4), ("scope_hash", "s1:abd")):
        raw = manifest.to_dict()
        raw[member] = value
        with pytest.raises(ChunkRefused):
            verify_manifest(public_key_text(private), Manifest.from_dict(raw), signature)
    with pytest.raises(ChunkRefused):
        verify_manifest(public_key_text(Ed25519PrivateKey.generate()), manifest, signature)


@pytest.mark.parametrize("raw", [None, [], {"format": "x"}, {"format": "fieldsync-chunks/1"},
                                 {"format": "fieldsync-chunks/1", "bundle_id": "b", "kind": "k", "prefix": "AAAA",
                                  "chunks": [{"size": -1, "sha256": "0" * 64}], "sha256": "0" * 64},
                                 {"format": "fieldsync-chunks/1", "bundle_id": "b", "kind": "k", "prefix": "AAAA",
                                  "chunks": [{"size": 1, "sha256": "0" * 64}], "sha256": "0" * 64}])
def test_a_malformed_manifest_is_refused_not_crashed_on(raw):
    with pytest.raises(ChunkRefused):
        Manifest.from_dict(raw)


def test_a_decompression_bomb_is_refused():
    from fieldsync.transfer.chunks import MAX_FRAME_BYTES, Opener, _nonce
    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    key, prefix = new_key(), os.urandom(7)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (MAX_FRAME_BYTES + 1))
    sealed = AESGCM(key).encrypt(_nonce(prefix, 0, True), bomb, b"fieldsync-chunk:z")
    with pytest.raises(ChunkRefused):
        Opener(key, prefix, "z").open(0, sealed, last=True)
