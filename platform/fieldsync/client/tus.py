"""Resumable uploads from the device: a tus 1.0 client over the SDK's own transport (TLS, pins,
the device token), for media files and large outbox bundles (docs/protocol.md "Transfer").

    tus = TusClient(wire)
    url = tus.create(size, {"purpose": "media", "filename": "receipt.jpg"})
    remember(url)                                  # persisted by the caller: a restart resumes
    tus.upload("receipt.jpg", resume_url=url, progress=lambda sent, total: ...)
    tus.describe(url)["result"]                    # what the purpose's handler answered

`upload` sends chunks of `chunk_size` bytes, each with `Upload-Checksum: sha256`. After a cut
(no answer, 5xx, 408/429, 423) it waits a jittered backoff (`fieldsync.backoff`), asks the
server for its offset with HEAD and goes on from there; a 409 (offset mismatch) or 460 (a chunk
damaged on its way) resumes the same way at once. So a cut costs at most the chunk in flight.
An upload the server no longer has (404, 410 expired) is started again when it was given as
`resume_url` before any byte of this call was sent; other refusals raise `ProtocolError`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.parse
from typing import IO, Any, Callable, Mapping

from fieldsync.backoff import Backoff
from fieldsync.client.wire import retry_after_seconds
from fieldsync.errors import ProtocolError, ServerUnavailable, TransportError, UploadGone

__all__ = ["TRANSFER_PATH", "TusClient", "UploadGone"]

TUS_VERSION = "1.0.0"
TRANSFER_PATH = "/api/v1/transfer"
OFFSET_STREAM = "application/offset+octet-stream"
DEFAULT_CHUNK = 4 * 1024 * 1024
RETRY_NOW = (409, 460)                 # resume from the server's offset without waiting
RETRY_LATER = (408, 423, 429)          # and every 5xx, and no answer at all

Progress = Callable[[int, int], None]
Source = bytes | bytearray | memoryview | str | os.PathLike | IO[bytes]


def _problem(data: bytes) -> dict[str, Any]:
    try:
        document = json.loads(data) if data else None
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def _metadata_header(metadata: Mapping[str, str]) -> str:
    return ",".join(f"{key} {base64.b64encode(str(value).encode()).decode()}" for key, value in metadata.items())


class _Source:
    """Random access to the bytes to upload: in memory, a file path, or a seekable binary file."""

    def __init__(self, source: Source):
        self._close = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._bytes: memoryview | None = memoryview(source)
            self.size = len(self._bytes)
            return
        self._bytes = None
        if isinstance(source, (str, os.PathLike)):
            self._file: IO[bytes] = open(source, "rb")
            self._close = self._file.close
        else:
            self._file = source
        self._file.seek(0, os.SEEK_END)
        self.size = self._file.tell()

    def read(self, offset: int, count: int) -> bytes:
        if self._bytes is not None:
            return bytes(self._bytes[offset:offset + count])
        self._file.seek(offset)
        return self._file.read(count)

    def close(self) -> None:
        if self._close is not None:
            self._close()


class TusClient:
    """tus uploads through `wire` (`fieldsync.client.wire.Wire`: its transport and tokens).

    `chunk_size`: bytes per PATCH (what a cut may cost). `retries`: consecutive failed attempts
    before the last error is raised (a chunk that lands resets the count). `backoff` and `sleep`
    are injectable for tests."""

    def __init__(self, wire, *, chunk_size: int = DEFAULT_CHUNK, retries: int = 8,
                 backoff: Backoff | None = None, sleep: Callable[[float], None] = time.sleep):
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1 byte")
        self.wire = wire
        self.chunk_size = chunk_size
        self.retries = retries
        self.backoff = backoff or Backoff(base=0.5, cap=30.0)
        self.sleep = sleep

    # -- requests

    def _request(self, method: str, path: str, headers: Mapping[str, str] | None = None,
                 body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        return self.wire.exchange(method, path, {"Tus-Resumable": TUS_VERSION, **(headers or {})}, body)

    @staticmethod
    def _path(url: str) -> str:
        """The request path of an upload URL (absolute, or the server's Location as given)."""
        path = urllib.parse.urlsplit(url).path
        marker = path.find(TRANSFER_PATH + "/")
        return path[marker:] if marker >= 0 else path

    @staticmethod
    def _refusal(status: int, data: bytes, what: str) -> ProtocolError:
        problem = _problem(data)
        if status in (404, 410):
            return UploadGone(status, problem, f"{what}: HTTP {status}: the upload is gone")
        return ProtocolError(status, problem)

    def _failed(self, status: int, headers: Mapping[str, str], data: bytes, what: str) -> TransportError:
        return ServerUnavailable(status, f"{what}: HTTP {status}", retry_after=retry_after_seconds(
            headers.get("retry-after")), problem=_problem(data))

    # -- the API

    def create(self, length: int, metadata: Mapping[str, str] | None = None) -> str:
        """A new upload of `length` bytes; its URL (persist it to resume after a restart)."""
        status, headers, data = self._request("POST", TRANSFER_PATH + "/", {
            "Upload-Length": str(length), "Upload-Metadata": _metadata_header(metadata or {})})
        if status != 201 or not headers.get("location"):
            if status in RETRY_LATER or status >= 500:
                raise self._failed(status, headers, data, "create an upload")
            raise self._refusal(status, data, "create an upload")
        return headers["location"]

    def offset(self, url: str) -> int:
        """The server's offset of the upload at `url` (HEAD)."""
        status, headers, data = self._request("HEAD", self._path(url))
        if status == 200 and headers.get("upload-offset", "").isdigit():
            return int(headers["upload-offset"])
        if status in RETRY_LATER or status >= 500 or status == 200:
            raise self._failed(status, headers, data, "HEAD an upload")
        raise self._refusal(status, data, "HEAD an upload")

    def describe(self, url: str) -> dict[str, Any]:
        """The server's JSON description of the upload: offset, length, complete, metadata,
        and the purpose's `result` or the `problem` that failed it."""
        status, headers, data = self.wire.exchange("GET", self._path(url), {"Accept": "application/json"}, None)
        if status != 200:
            if status in RETRY_LATER or status >= 500:
                raise self._failed(status, headers, data, "describe an upload")
            raise self._refusal(status, data, "describe an upload")
        return json.loads(data)

    def delete(self, url: str) -> None:
        """Terminate the upload (its bytes are removed); an upload already gone is fine."""
        status, headers, data = self._request("DELETE", self._path(url))
        if status not in (204, 404, 410):
            raise self._refusal(status, data, "delete an upload")

    def upload(self, source: Source, metadata: Mapping[str, str] | None = None, *,
               progress: Progress | None = None, resume_url: str | None = None,
               on_url: Callable[[str], None] | None = None) -> str:
        """Upload `source` (bytes, a file path, or a seekable binary file) and return its URL.

        With `resume_url` the upload continues from the server's offset (a new one is created
        when that upload is gone); otherwise one is created with `metadata`. `on_url(url)` is
        called with the URL as soon as it exists, for the caller to persist. `progress(sent,
        total)` after every chunk the server confirmed."""
        data = _Source(source)
        try:
            return self._upload(data, metadata or {}, progress, resume_url, on_url)
        finally:
            data.close()

    def _upload(self, data: _Source, metadata: Mapping[str, str], progress: Progress | None,
                url: str | None, on_url: Callable[[str], None] | None) -> str:
        failures = 0
        offset: int | None = None   # unknown until the server says (HEAD) or confirms a chunk
        fresh = url is None
        while True:
            try:
                if url is None:
                    url = self.create(data.size, metadata)
                    offset = 0
                    if on_url is not None:
                        on_url(url)
                if offset is None:
                    try:
                        offset = self.offset(url)
                    except UploadGone:
                        if fresh:
                            raise
                        url, fresh = None, True   # expired or removed before this call: start again
                        continue
                    if progress is not None:
                        progress(offset, data.size)
                if offset >= data.size:
                    return url
                offset = self._send_chunk(url, data, offset)
                failures = 0
                if progress is not None:
                    progress(offset, data.size)
            except TransportError as exc:
                failures += 1
                if failures > self.retries:
                    raise
                self.sleep(self.backoff.delay(failures - 1, retry_after=exc.retry_after))
                offset = None   # ask the server where it got to
            except _ResumeNow:
                failures += 1
                if failures > self.retries:
                    raise TransportError(f"{url}: the server refused the same chunk {failures} times") from None
                offset = None

    def _send_chunk(self, url: str, data: _Source, offset: int) -> int:
        chunk = data.read(offset, min(self.chunk_size, data.size - offset))
        digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
        status, headers, body = self._request("PATCH", self._path(url), {
            "Upload-Offset": str(offset), "Content-Type": OFFSET_STREAM, "Upload-Checksum": f"sha256 {digest}"},
            chunk)
        if status == 204 and headers.get("upload-offset", "").isdigit():
            return int(headers["upload-offset"])
        if status in RETRY_NOW:
            raise _ResumeNow()
        if status in RETRY_LATER or status >= 500 or status == 204:
            raise self._failed(status, headers, body, "PATCH an upload")
        raise self._refusal(status, body, "PATCH an upload")


class _ResumeNow(Exception):
    """The server refused the chunk at that offset (409, 460): ask it for its offset again."""
