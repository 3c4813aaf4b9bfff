"""Staged uploads are sealed at rest (invariant 7; fieldsync.transfer.staging): no plaintext of
the bytes or the metadata in the transfer directory, a frame torn by a crash cut back to the
last whole one, altered, moved or spliced frames refused before a completion handler sees a
byte, and the wrapped key removed with the upload."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from fieldsync.transfer import tus
from fieldsync.transfer.staging import FRAME_BYTES, FRAME_OVERHEAD

from tus_support import make_app, make_token, staged_bytes

BASE = "/api/v1/transfer"
OCTETS = "application/offset+octet-stream"
MARKER = b"MRN-4711-RAVI-KUMAR-PRESCRIPTION|"
FILENAME = "ravi-kumar-insulin-prescription.jpg"
DATA = (MARKER * (800 * 1024 // len(MARKER)))[:3 * 256 * 1024 + 5000]   # four frames: 3 x 256 KiB + the rest

handled: list[tuple[str, bytes]] = []


@tus.on_complete("test-staging")
def _take(upload, source, principal):
    with source.open() as stream:
        handled.append((upload.id, stream.read()))
    return {"size": source.size}


@pytest.fixture(scope="module")
def app(tmp_path_factory, example_model):
    app = make_app(tmp_path_factory.mktemp("tus-staging"), example_model)
    yield app
    app.extensions["fieldsync"].engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def store(app):
    return app.extensions["fieldsync"].transfer


def headers(**extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token()}", "Tus-Resumable": "1.0.0", **extra}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def create(client, length: int, purpose: str = "test-staging") -> str:
    metadata = f"purpose {b64(purpose)},filename {b64(FILENAME)}"
    answer = client.post(BASE + "/", headers=headers(**{"Upload-Length": str(length), "Upload-Metadata": metadata}))
    assert answer.status_code == 201
    return answer.headers["Location"]


def patch(client, url: str, offset: int, data: bytes, **extra: str):
    return client.patch(url, data=data, headers=headers(**{"Upload-Offset": str(offset), "Content-Type": OCTETS},
                                                        **extra))


def upload_id(url: str) -> str:
    return url.rsplit("/", 1)[1]


def frame_bounds(path) -> list[tuple[int, int]]:
    """(start, end) of each frame of a sealed staging file."""
    data, bounds, at = path.read_bytes(), [], 0
    while at < len(data):
        end = at + FRAME_OVERHEAD + int.from_bytes(data[at:at + 4], "big")
        bounds.append((at, end))
        at = end
    return bounds


def every_staged_byte(store) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(store.root.iterdir()) if p.is_file())


def test_no_plaintext_of_the_bytes_or_the_metadata_is_staged(client, store):
    url = create(client, len(DATA))
    assert patch(client, url, 0, DATA[:400 * 1024]).status_code == 204
    staged = every_staged_byte(store)
    for secret in (MARKER, MARKER[:12], FILENAME.encode(), b"ravi-kumar", b64(FILENAME).encode()):
        assert secret not in staged
    record = json.loads(store._record_path(upload_id(url)).read_text())
    assert record["purpose"] == "test-staging" and "metadata" not in record
    assert record["key"]["kid"] and record["offset"] == 400 * 1024 and record["frames"] == 2
    # HEAD and GET still answer the metadata as sent, and the offset in plaintext bytes
    head = client.head(url, headers=headers())
    assert head.headers["Upload-Offset"] == str(400 * 1024)
    assert head.headers["Upload-Metadata"] == f"purpose {b64('test-staging')},filename {b64(FILENAME)}"
    assert patch(client, url, 400 * 1024, DATA[400 * 1024:]).status_code == 204
    assert MARKER not in every_staged_byte(store)
    assert handled[-1] == (upload_id(url), DATA)


def test_a_frame_torn_by_a_crash_is_cut_back_and_the_offset_reported_from_there(client, store):
    url = create(client, len(DATA), purpose="file")
    assert patch(client, url, 0, DATA[:3 * FRAME_BYTES - 1000]).status_code == 204
    path = store.data_path(upload_id(url))
    bounds = frame_bounds(path)
    assert len(bounds) == 3
    with open(path, "r+b") as data:
        data.truncate(bounds[2][0] + 100)   # the third frame is partly on disk
    head = client.head(url, headers=headers())
    assert head.status_code == 200 and head.headers["Upload-Offset"] == str(2 * FRAME_BYTES)
    assert path.stat().st_size == bounds[1][1]
    assert patch(client, url, 3 * FRAME_BYTES - 1000, DATA[3 * FRAME_BYTES - 1000:]).status_code == 409
    assert patch(client, url, 2 * FRAME_BYTES, DATA[2 * FRAME_BYTES:]).status_code == 204
    assert staged_bytes(client.application, url) == DATA


def test_a_torn_first_frame_goes_back_to_zero(client, store):
    url = create(client, 1000, purpose="file")
    assert patch(client, url, 0, DATA[:500]).status_code == 204
    with open(store.data_path(upload_id(url)), "r+b") as data:
        data.truncate(10)
    assert client.get(url, headers=headers()).get_json()["offset"] == 0
    assert patch(client, url, 0, DATA[:1000]).status_code == 204
    assert staged_bytes(client.application, url) == DATA[:1000]


def _flip(path, bounds, other) -> None:
    data = bytearray(path.read_bytes())
    data[bounds[1][0] + 40] ^= 0x01
    path.write_bytes(bytes(data))


def _swap(path, bounds, other) -> None:
    data = path.read_bytes()
    (a, b), (c, d) = bounds[0], bounds[1]
    path.write_bytes(data[c:d] + data[a:b] + data[d:])


def _splice(path, bounds, other) -> None:
    data, foreign = path.read_bytes(), other.read_bytes()
    (a, b), (c, d) = bounds[1], frame_bounds(other)[1]
    path.write_bytes(data[:a] + foreign[c:d] + data[b:])


@pytest.mark.parametrize("alter", [_flip, _swap, _splice], ids=["flipped-byte", "swapped-frames", "spliced-frame"])
def test_an_altered_frame_fails_completion_and_nothing_reaches_the_handler(client, store, alter):
    other = create(client, len(DATA), purpose="file")
    assert patch(client, other, 0, DATA[:2 * FRAME_BYTES]).status_code == 204
    url = create(client, len(DATA))
    assert patch(client, url, 0, DATA[:2 * FRAME_BYTES]).status_code == 204
    path = store.data_path(upload_id(url))
    alter(path, frame_bounds(path), store.data_path(upload_id(other)))
    before = len(handled)
    final = patch(client, url, 2 * FRAME_BYTES, DATA[2 * FRAME_BYTES:])
    assert final.status_code == 422 and final.get_json()["type"].endswith("/upload-corrupt")
    assert "does not authenticate" in final.get_json()["detail"]
    assert len(handled) == before
    described = client.get(url, headers=headers()).get_json()
    assert described["state"] == "failed" and described["problem"]["type"].endswith("/upload-corrupt")


def test_a_wrapped_key_moved_from_another_record_is_refused_not_a_server_error(client, store):
    first, second = create(client, 10, purpose="file"), create(client, 10, purpose="file")
    records = [store._record_path(upload_id(u)) for u in (first, second)]
    documents = [json.loads(r.read_text()) for r in records]
    documents[1]["key"] = documents[0]["key"]
    records[1].write_text(json.dumps(documents[1]))
    assert client.head(second, headers=headers()).status_code == 422
    answer = client.get(second, headers=headers())
    assert answer.status_code == 422 and answer.get_json()["type"].endswith("/upload-corrupt")
    assert client.head(first, headers=headers()).status_code == 200


def test_a_checksum_mismatch_discards_the_patch_frames(client, store):
    url = create(client, len(DATA), purpose="file")
    assert patch(client, url, 0, DATA[:1000]).status_code == 204
    size = store.data_path(upload_id(url)).stat().st_size
    wrong = "sha256 " + base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    assert patch(client, url, 1000, DATA[1000:FRAME_BYTES * 2], **{"Upload-Checksum": wrong}).status_code == 460
    assert store.data_path(upload_id(url)).stat().st_size == size
    assert staged_bytes(client.application, url) == DATA[:1000]


def test_termination_and_the_sweep_remove_the_sealed_bytes_and_the_wrapped_key(client, store):
    ended, expired = create(client, 10, purpose="file"), create(client, 10, purpose="file")
    assert patch(client, ended, 0, b"0123").status_code == 204
    assert client.delete(ended, headers=headers()).status_code == 204
    assert not list(store.root.glob(upload_id(ended) + ".*"))
    clock = store.clock
    store.clock = lambda: clock() + store.expires_after + 1
    try:
        assert upload_id(expired) in store.sweep()
    finally:
        store.clock = clock
    assert not list(store.root.glob(upload_id(expired) + ".*"))


def test_a_plaintext_upload_of_before_sealing_is_swept_at_once(store):
    legacy = "ab" * 16
    (store.root / f"{legacy}.bin").write_bytes(MARKER)
    (store.root / f"{legacy}.json").write_text(json.dumps({"id": legacy, "metadata": {"filename": FILENAME},
                                                           "expires": 9e12}))
    assert legacy in store.sweep()
    assert not list(store.root.glob(legacy + ".*"))
