"""Refusing a request body on its `Content-Length` before reading it (docs/protocol.md §2.4).

A request whose `Content-Length` alone exceeds `MAX_BODY_BYTES` gets 413 `payload-too-large`
(problem+json with `max_bytes`) at three levels, because where the body is read differs by server:

- `BodyLimit`, WSGI middleware in front of the Flask app: answers before the app can touch
  `wsgi.input`, for every server that calls the app as soon as the head has arrived (cheroot,
  gunicorn, the test client);
- waitress (`make_http_server`, plain HTTP) reads the whole body into a buffer before it calls
  the app, so the app cannot refuse it first: its own `max_request_body_size` refuses on the
  header, with our problem document instead of its text page, and without the `100 Continue`
  waitress would otherwise send a client that asked for one;
- cheroot (`limit_cheroot`, HTTPS) sends `100 Continue` before it calls the app: its
  `max_request_body_size` check runs before that, and answers our problem document too.

A chunked body (no `Content-Length`) is cut off by the servers when it passes the limit, and
checked by the app after decompression like every body.

Resumable uploads (`/api/v1/transfer/`, docs/protocol.md "Transfer") carry file bytes, not JSON:
their limit is `TRANSFER_MAX_BYTES` (`Tus-Max-Size`) at every level, so a PATCH of a large chunk
is not cut at `MAX_BODY_BYTES`; the servers are built with the larger limit and refuse the other
paths on the smaller one themselves.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

from fieldsync.codegen.openapi import PROBLEM_MEDIA_TYPE
from fieldsync.errors import ProblemType

__all__ = ["BodyLimit", "limit_cheroot", "make_http_server", "too_large_detail", "too_large_document"]

SYNC_PREFIX = "/api/v1/sync/"
TRANSFER_PREFIX = "/api/v1/transfer"
# waitress reads sockets 8 KiB at a time by default; upload chunks of megabytes went 1.3-2x faster
# with 64 KiB reads (bench/tus_bench.py), and JSON bodies lose nothing
RECV_BYTES = 64 * 1024
_OVER_PATH_LIMIT = "fieldsync: body over this path's limit"


def limit_for(path: str, limit: int, transfer_limit: int | None) -> int:
    """The body limit of a request path: `transfer_limit` for the upload endpoints, else `limit`."""
    if transfer_limit is not None and (path == TRANSFER_PREFIX or path.startswith(TRANSFER_PREFIX + "/")):
        return transfer_limit
    return limit


def too_large_detail(limit: int) -> str:
    return f"the request body is over {limit} bytes (compressed or decompressed); split the batch"


def too_large_document(limit: int, path: str) -> bytes:
    """The 413 problem document, as the app's own size check answers it."""
    kind = ProblemType.PAYLOAD_TOO_LARGE
    return json.dumps({"type": kind.uri, "title": kind.title, "status": kind.status,
                       "detail": too_large_detail(limit), "instance": path, "max_bytes": limit}).encode("utf-8")


def _headers(body: bytes, path: str) -> list[tuple[str, str]]:
    headers = [("Content-Type", PROBLEM_MEDIA_TYPE), ("Content-Length", str(len(body))), ("Connection", "close")]
    if path.startswith(SYNC_PREFIX):
        headers.append(("Fieldsync-Protocol", "1"))   # every sync response carries it (§2.2)
    return headers


class BodyLimit:
    """WSGI middleware: 413 for a `Content-Length` over `limit`, before the app reads anything."""

    def __init__(self, app: Callable, limit: int, *, transfer_limit: int | None = None):
        self.app = app
        self.limit = limit
        self.transfer_limit = transfer_limit

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or ""
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        limit = limit_for(path, self.limit, self.transfer_limit)
        if length.isascii() and length.isdigit() and int(length) > limit:
            body = too_large_document(limit, path)
            start_response("413 Request Entity Too Large", _headers(body, path))
            return [body]
        return self.app(environ, start_response)


def make_http_server(app, host: str, port: int, limit: int, *, transfer_limit: int | None = None,
                     threads: int = 8, ident: str = "fieldsync"):
    """A waitress server for `app` (plain HTTP) that refuses bodies over `limit` on the header
    (`transfer_limit` for the upload endpoints)."""
    import waitress
    from waitress.channel import HTTPChannel
    from waitress.parser import HTTPRequestParser
    from waitress.task import ErrorTask
    from waitress.utilities import RequestEntityTooLarge

    class Parser(HTTPRequestParser):
        def received(self, data):
            headers_were_finished = self.headers_finished
            consumed = super().received(data)
            if self.headers_finished and self.error is None:
                path_limit = limit_for(self.path or "/", limit, transfer_limit)
                # on the header; and for a chunked body as it arrives (waitress counts against
                # the larger limit only)
                if (not headers_were_finished and self.content_length > path_limit) \
                        or self.body_bytes_received > path_limit:
                    self.error = RequestEntityTooLarge("over the path's limit")
                    self.completed = True
            if self.error is not None:
                # refused on the header: a `100 Continue` would invite the body we refuse
                self.expect_continue = False
            return consumed

    class ProblemErrorTask(ErrorTask):
        def execute(self):
            if not isinstance(self.request.error, RequestEntityTooLarge):
                return super().execute()
            path = self.request.path or "/"
            body = too_large_document(limit_for(path, limit, transfer_limit), path)
            self.status = "413 Request Entity Too Large"
            self.response_headers.extend(h for h in _headers(body, path) if h[0] not in ("Content-Length", "Connection"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class Channel(HTTPChannel):
        parser_class = Parser
        error_task_class = ProblemErrorTask

    # waitress refuses when Content-Length >= max_request_body_size
    listeners: dict = {}   # waitress's socket map: one listening server per address of `host`
    server = waitress.create_server(app, map=listeners, host=host, port=port, threads=threads, ident=ident,
                                    max_request_body_size=max(limit, transfer_limit or 0) + 1,
                                    recv_bytes=RECV_BYTES)
    for listener in list(listeners.values()) + [server]:
        if hasattr(listener, "channel_class"):
            listener.channel_class = Channel
    return server


def limit_cheroot(server, limit: int, *, transfer_limit: int | None = None) -> None:
    """Make a cheroot `wsgi.Server` refuse bodies over `limit` (`transfer_limit` for the upload
    endpoints) on the header, before it sends `100 Continue`, with the problem document."""
    from cheroot.server import HTTPConnection, HTTPRequest

    class Request(HTTPRequest):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            read_headers = self.header_reader

            def header_reader(rfile, headers):
                # cheroot checks its one max_request_body_size (the larger limit) after this and
                # sends 100 Continue after that: a path's own smaller limit is checked here
                result = read_headers(rfile, headers)
                length = headers.get(b"Content-Length", b"0")
                if length.isdigit() and int(length) > limit_for(self._path_text(), limit, transfer_limit):
                    raise ValueError(_OVER_PATH_LIMIT)
                return result
            self.header_reader = header_reader

        def _path_text(self) -> str:
            path = self.path.decode("utf-8", "replace") if isinstance(self.path, bytes) else str(self.path or "/")
            return path.split("?", 1)[0]

        def simple_response(self, status, msg=""):
            if msg == _OVER_PATH_LIMIT:
                status = "413 Request Entity Too Large"
            if not str(status).startswith("413"):
                return super().simple_response(status, msg)
            path = self._path_text()
            body = too_large_document(limit_for(path, limit, transfer_limit), path)
            self.close_connection = True
            lines = [f"{self.server.protocol} 413 Request Entity Too Large"]
            lines += [f"{k}: {v}" for k, v in _headers(body, path)]
            self.conn.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    class Connection(HTTPConnection):
        RequestHandlerClass = Request

    server.max_request_body_size = max(limit, transfer_limit or 0)
    server.ConnectionClass = Connection
