"""Stock tus clients against the server over real HTTP (issue: resumable uploads, interop):
tuspy (PyPI) and tus-js-client (npm, under node) upload a file, are cut mid-way by a proxy
that drops the connection, and a new client resumes from the stored URL to a file whose
SHA-256 is the original's. The SDK's own client does the same, and meets 460 and 409."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fieldsync.client.transport import HttpTransport
from fieldsync.client.tus import TusClient
from fieldsync.client.wire import Wire
from fieldsync.errors import TransportError

from tus_support import MAX_BODY, make_token, sha256_file

ROOT = Path(__file__).resolve().parents[2]
NODE_MODULES = ROOT / ".cache" / "node"
SIZE = 3 * 1024 * 1024 + 12345
CHUNK = 256 * 1024                 # over MAX_BODY_BYTES: the body limit must let PATCHes through
assert CHUNK > MAX_BODY


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("payload") / "photo.bin"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def stored(app, url: str) -> Path:
    return app.extensions["fieldsync"].transfer.data_path(url.rstrip("/").rsplit("/", 1)[-1])


def offset_of(app, url: str) -> int:
    return stored(app, url).stat().st_size


# -- tuspy ---------------------------------------------------------------------------------------

def test_tuspy_is_cut_and_a_new_client_resumes_to_the_same_bytes(served, proxy, payload):
    from tusclient import client as tus_client
    app, base = served
    path, digest = payload
    headers = {"Authorization": f"Bearer {make_token()}"}
    first = tus_client.TusClient(f"http://127.0.0.1:{proxy.port}/api/v1/transfer/", headers=headers)
    # tuspy leaves a file it opened itself open: give it streams this test closes
    with open(path, "rb") as stream:
        uploader = first.uploader(file_stream=stream, chunk_size=CHUNK, metadata={"filename": "photo.bin"},
                                  upload_checksum=True)   # sha1 per PATCH
        proxy.cut_after(SIZE // 2)
        with pytest.raises(Exception):
            uploader.upload()
    assert proxy.cuts == 1
    url = uploader.url
    kept = offset_of(app, url)
    assert 0 < kept < SIZE and kept % CHUNK == 0   # whole chunks only: the one in flight was dropped

    second = tus_client.TusClient(f"{base}/api/v1/transfer/", headers=headers)
    with open(path, "rb") as stream:
        resumed = second.uploader(file_stream=stream, url=f"{base}{url[url.index('/api/'):]}", chunk_size=CHUNK,
                                  upload_checksum=True)
        assert resumed.get_offset() == kept
        resumed.upload()
    assert sha256_file(stored(app, url)) == digest


# -- tus-js-client under node --------------------------------------------------------------------

def _node() -> str:
    node = shutil.which("node")
    if node is None or not (NODE_MODULES / "node_modules" / "tus-js-client").is_dir():
        if os.environ.get("CI"):
            pytest.fail("node or tus-js-client is missing: ci/node_modules.sh installs it (make test runs it)")
        pytest.skip("node or tus-js-client is missing (run bash ci/node_modules.sh)")
    return node


def _run_js(node: str, endpoint: str, path: Path, resume: str | None = None) -> tuple[int, list[dict]]:
    args = [node, str(Path(__file__).parent / "tus_js" / "upload.js"), str(NODE_MODULES), endpoint, str(path),
            make_token(), str(CHUNK)] + ([resume] if resume else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return done.returncode, events


def test_tus_js_client_is_cut_and_a_new_client_resumes_to_the_same_bytes(served, proxy, payload):
    node = _node()
    app, base = served
    path, digest = payload
    proxy.cut_after(SIZE // 2)
    code, events = _run_js(node, f"http://127.0.0.1:{proxy.port}/api/v1/transfer/", path)
    assert code == 1 and "error" in events[-1], events
    assert proxy.cuts == 1
    url = next(e["url"] for e in events if "url" in e)
    kept = offset_of(app, url)
    assert 0 < kept < SIZE

    resume = f"{base}{url[url.index('/api/'):]}"
    code, events = _run_js(node, f"{base}/api/v1/transfer/", path, resume)
    assert code == 0, events
    assert events[-1] == {"done": resume}
    first_progress = next(e["progress"] for e in events if "progress" in e)
    assert first_progress[0] > kept - CHUNK   # it resumed from the server's offset, not from zero
    assert sha256_file(stored(app, url)) == digest


# -- the SDK's own client --------------------------------------------------------------------------

def _sdk(port: int, **options) -> TusClient:
    wire = Wire(HttpTransport(f"http://127.0.0.1:{port}"), make_token(), device_version=lambda: 1)
    return TusClient(wire, chunk_size=CHUNK, sleep=lambda seconds: None, **options)


def test_the_sdk_client_resumes_in_the_same_call_after_a_cut(served, proxy, payload):
    app, _ = served
    path, digest = payload
    seen: list[tuple[int, int]] = []
    proxy.cut_after(SIZE // 3)
    url = _sdk(proxy.port).upload(path, {"filename": "photo.bin"}, progress=lambda sent, total: seen.append((sent, total)))
    assert proxy.cuts == 1
    assert sha256_file(stored(app, url)) == digest
    assert seen[-1] == (SIZE, SIZE) and all(total == SIZE for _, total in seen)
    resent = sum(b - a for (a, _), (b, _) in zip(seen, seen[1:]) if b > a) - SIZE
    assert resent <= 0   # progress counts confirmed bytes only


def test_a_restarted_sdk_client_resumes_from_the_persisted_url(served, proxy, payload):
    app, base = served
    path, digest = payload
    persisted: list[str] = []
    proxy.cut_after(SIZE // 2)
    with pytest.raises(TransportError):
        _sdk(proxy.port, retries=0).upload(path, {"filename": "photo.bin"}, on_url=persisted.append)
    kept = offset_of(app, persisted[0])
    assert 0 < kept < SIZE
    seen: list[int] = []
    url = _sdk(int(base.rsplit(":", 1)[1])).upload(path, resume_url=persisted[0],
                                                   progress=lambda sent, total: seen.append(sent))
    assert url == persisted[0] and seen[0] == kept   # the first figure is the server's offset
    assert sha256_file(stored(app, url)) == digest
