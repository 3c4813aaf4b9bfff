"""The SDK's tus client (`fieldsync.client.TusClient`) against the real app in-process: a byte
flipped on the way (460) and a wrong offset (409) are resumed from the server's offset, another
user's upload is gone for it (404), an expired one (410) is started again, 5xx and transport
failures back off, and chunks go uncompressed whatever their size."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from fieldsync.backoff import Backoff
from fieldsync.client import TusClient, UploadGone, WsgiTransport
from fieldsync.client.wire import Wire
from fieldsync.errors import ProtocolError, TransportError

from tus_support import make_app, make_token


class Recording:
    """A transport in front of the app: records every (method, status), and can damage the
    body of the next PATCH, fail requests, or answer 503, as planned."""

    def __init__(self, inner):
        self.inner = inner
        self.seen: list[tuple[str, int | None]] = []
        self.flip_next_patch = False
        self.fail_next = 0
        self.unavailable_next = 0
        self.patch_headers: list[dict] = []
        self.race_next_patch = False

    def request(self, method, path, *, headers, body):
        if self.fail_next:
            self.fail_next -= 1
            self.seen.append((method, None))
            raise TransportError("connection reset (planned)")
        if self.unavailable_next:
            self.unavailable_next -= 1
            self.seen.append((method, 503))
            return 503, {"retry-after": "2"}, b'{"type": "https://fieldsync.dev/problems/unavailable"}'
        if method == "PATCH":
            self.patch_headers.append(dict(headers))
            if self.race_next_patch:
                # another writer (an earlier run of the app) lands the same chunk first
                self.race_next_patch = False
                assert self.inner.request(method, path, headers=headers, body=body)[0] == 204
            if self.flip_next_patch and body:
                self.flip_next_patch = False
                body = bytes([body[0] ^ 0x01]) + body[1:]
        answer = self.inner.request(method, path, headers=headers, body=body)
        self.seen.append((method, answer[0]))
        return answer


@pytest.fixture(scope="module")
def app(tmp_path_factory, example_model):
    app = make_app(tmp_path_factory.mktemp("tus-client"), example_model)
    yield app
    app.extensions["fieldsync"].engine.dispose()


@pytest.fixture
def transport(app):
    return Recording(WsgiTransport(app))


def sdk(transport, user: str = "rep-asha", **options) -> TusClient:
    sleeps: list[float] = []
    client = TusClient(Wire(transport, make_token(user), device_version=lambda: 1), chunk_size=64 * 1024,
                       backoff=Backoff(base=1, cap=8, rng=random.Random(7)), sleep=sleeps.append, **options)
    client.sleeps = sleeps
    return client


def stored(app, url: str) -> bytes:
    return app.extensions["fieldsync"].transfer.data_path(url.rsplit("/", 1)[1]).read_bytes()


DATA = os.urandom(300 * 1024)


def test_a_flipped_byte_is_refused_460_and_the_chunk_resent(app, transport):
    transport.flip_next_patch = True
    url = sdk(transport).upload(DATA, {"filename": "scan.jpg"})
    assert ("PATCH", 460) in transport.seen
    assert stored(app, url) == DATA
    assert all(h["Upload-Checksum"].startswith("sha256 ") and "Content-Encoding" not in h
               for h in transport.patch_headers)


def test_a_wrong_offset_is_409_and_the_client_resumes_from_the_servers(app, transport):
    transport.race_next_patch = True
    progress: list[int] = []
    url = sdk(transport).upload(DATA, progress=lambda sent, total: progress.append(sent))
    assert ("PATCH", 409) in transport.seen
    assert transport.seen[transport.seen.index(("PATCH", 409)) + 1] == ("HEAD", 200)
    assert progress[:2] == [64 * 1024, 128 * 1024]   # from the server's offset on, nothing sent twice
    assert stored(app, url) == DATA


def test_another_users_upload_is_404_for_the_client(transport):
    url = sdk(transport, "rep-asha").create(10, {})
    with pytest.raises(UploadGone) as gone:
        sdk(transport, "rep-ravi").offset(url)
    assert gone.value.status == 404
    with pytest.raises(UploadGone):
        sdk(transport, "rep-ravi").describe(url)


def test_an_expired_upload_is_410_and_upload_starts_a_new_one(app, transport):
    store = app.extensions["fieldsync"].transfer
    client = sdk(transport)
    old = client.create(len(DATA), {"filename": "old"})
    clock, store.clock = store.clock, (lambda: clock() + store.expires_after + 1)
    try:
        with pytest.raises(UploadGone) as gone:
            client.offset(old)
        assert gone.value.status == 410   # HEAD: no body
        with pytest.raises(UploadGone) as gone:
            client.describe(old)
        assert gone.value.status == 410 and gone.value.name == "upload-expired"
        urls: list[str] = []
        new = client.upload(DATA, {"filename": "new"}, resume_url=old, on_url=urls.append)
    finally:
        store.clock = clock
    assert new != old and urls == [new]
    assert stored(app, new) == DATA


def test_failures_back_off_then_resume_by_head(app, transport):
    client = sdk(transport)
    url = client.create(len(DATA), {})
    transport.unavailable_next = 1
    transport.seen.clear()
    assert client.upload(DATA, resume_url=url) == url
    assert transport.seen[0] == ("HEAD", 503) and transport.seen[1] == ("HEAD", 200)
    assert client.sleeps and client.sleeps[0] >= 2   # Retry-After is a minimum
    transport.fail_next = 2
    other = client.upload(DATA, {})
    assert stored(app, other) == DATA and len(client.sleeps) == 3


def test_retries_are_bounded(transport):
    client = sdk(transport, retries=2)
    transport.fail_next = 10
    with pytest.raises(TransportError):
        client.upload(b"abc", {})
    assert len(client.sleeps) == 2
    transport.fail_next = 0


def test_a_refusal_raises_protocol_error(transport):
    with pytest.raises(ProtocolError) as refused:
        sdk(transport).upload(b"abc", {"purpose": "no-such-purpose"})
    assert refused.value.status == 400


def test_a_path_file_and_a_stream_upload_alike(app, transport, tmp_path):
    path = tmp_path / "bundle.bin"
    path.write_bytes(DATA)
    client = sdk(transport)
    assert stored(app, client.upload(path)) == DATA
    with open(path, "rb") as stream:
        url = client.upload(stream, {"purpose": "file"})
    assert hashlib.sha256(stored(app, url)).digest() == hashlib.sha256(DATA).digest()
    client.delete(url)
    with pytest.raises(UploadGone):
        client.offset(url)
