"""The local store's sealed files and the type sniffing of uploads."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag

from fieldsync.media.local import CHUNK
from fieldsync.media.sniff import agrees, sniffed_type

from media_support import JPEG, PNG, new_ref


def _sealed(app, tmp_path, data: bytes):
    store = app.extensions["fieldsync"].media.store
    source = tmp_path / "upload.bin"
    source.write_bytes(data)
    ref = new_ref()
    location = store.put(ref, source, scope="media:prescription.rx_image")
    return store, ref, location


def test_sealed_files_round_trip_in_chunks_and_refuse_tampering(app, tmp_path):
    data = bytes(range(256)) * (3 * CHUNK // 256) + b"tail"      # three full chunks and a short one
    store, ref, location = _sealed(app, tmp_path, data)
    path = store.path_of(location)
    sealed = path.read_bytes()
    assert bytes(range(256)) not in sealed
    assert b"".join(store.read(ref, location, sealed=True)) == data
    header = 5 + sealed[4] + 7
    chunks = [sealed[header + i * (CHUNK + 16):header + (i + 1) * (CHUNK + 16)] for i in range(4)]
    for damaged in (sealed[:header] + chunks[1] + chunks[0] + chunks[2] + chunks[3],   # reordered
                    sealed[:header] + chunks[0] + chunks[1] + chunks[2],               # truncated
                    sealed[:-1] + bytes([sealed[-1] ^ 1])):                             # flipped
        path.write_bytes(damaged)
        with pytest.raises(InvalidTag):
            b"".join(store.read(ref, location, sealed=True))
    # another object's file does not pass for this one (the reference is associated data)
    path.write_bytes(sealed)
    with pytest.raises(InvalidTag):
        b"".join(store.read(new_ref(), location, sealed=True))


def test_an_empty_file_seals_to_one_authenticated_chunk(app, tmp_path):
    store, ref, location = _sealed(app, tmp_path, b"")
    assert b"".join(store.read(ref, location, sealed=True)) == b""


def test_sniffing_agrees_only_with_the_bytes():
    assert sniffed_type(JPEG) == "image/jpeg" and sniffed_type(PNG) == "image/png"
    assert sniffed_type(b"%PDF-1.7") == "application/pdf"
    assert sniffed_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert agrees("image/jpeg", JPEG) and agrees("IMAGE/JPEG; x=1", JPEG)
    assert not agrees("image/png", JPEG)            # a recognised type must be what the bytes say
    assert not agrees("image/jpeg", b"<html><script>")
    assert not agrees("text/plain", JPEG)           # image bytes do not hide behind another type
    assert agrees("image/heic", b"\x00\x00\x00\x18ftypheic")   # not recognised: taken as declared
