"""HttpTransport over a real socket (a small stdlib HTTP server): keep-alive, gzip both ways,
the 415 fallback, and network failures surfacing as TransportError."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import zstandard

from fieldsync.client import HttpTransport, TransportError


class Recorder(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive
    seen: list[dict] = []
    refuse_gzip = False
    refuse_zstd = False
    close_after = False
    stall = False

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        coding = self.headers.get("Content-Encoding")
        self.seen.append({"coding": coding, "raw": len(raw), "port": self.client_address[1],
                          "accept": self.headers.get("Accept-Encoding"), "path": self.path})
        if (coding == "gzip" and self.refuse_gzip) or (coding == "zstd" and self.refuse_zstd):
            return self._send(415, b'{"type": "https://fieldsync.dev/problems/unsupported-encoding"}')
        body = gzip.decompress(raw) if coding == "gzip" else raw
        if coding == "zstd":
            body = zstandard.ZstdDecompressor().stream_reader(raw).read()
        if self.stall:
            threading.Event().wait(2)
        echo = json.dumps({"got": json.loads(body), "pad": "x" * 4000}).encode()
        self._send(200, gzip.compress(echo), {"Content-Encoding": "gzip"})

    def _send(self, status, data, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_after:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    handler = type("Handler", (Recorder,), {"seen": [], "refuse_gzip": False, "refuse_zstd": False,
                                            "close_after": False, "stall": False})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def connect():
    """`connect(url, **kw)`: an HttpTransport closed after the test."""
    made = []

    def make(url, **kwargs):
        made.append(HttpTransport(url, **kwargs))
        return made[-1]
    yield make
    for transport in made:
        transport.close()


def post(transport, body):
    return transport.request("POST", "/api/v1/sync/push", headers={"Content-Type": "application/json"},
                             body=json.dumps(body).encode())


def test_small_bodies_go_plain_large_ones_gzip_and_responses_are_decoded(http_server, connect):
    server, handler = http_server
    transport = connect(f"http://127.0.0.1:{server.server_port}")
    status, headers, data = post(transport, {"n": 1})
    assert status == 200 and json.loads(data)["got"] == {"n": 1}
    assert headers["content-encoding"] == "gzip"  # decoded by the transport
    big = {"notes": "y" * 5000}
    status, _, data = post(transport, big)
    assert json.loads(data)["got"] == big
    assert [s["coding"] for s in handler.seen] == [None, "gzip"]
    assert handler.seen[1]["raw"] < 1000 and "gzip" in handler.seen[0]["accept"]
    assert handler.seen[0]["port"] == handler.seen[1]["port"]  # one kept-alive connection


def test_415_resends_uncompressed_and_remembers(http_server, connect):
    server, handler = http_server
    handler.refuse_gzip = True
    transport = connect(f"http://127.0.0.1:{server.server_port}")
    big = {"notes": "z" * 5000}
    assert post(transport, big)[0] == 200
    assert post(transport, big)[0] == 200
    assert [s["coding"] for s in handler.seen] == ["gzip", None, None]


def test_zstd_when_the_server_lists_it_and_gzip_after_a_415(http_server, connect):
    server, handler = http_server
    transport = connect(f"http://127.0.0.1:{server.server_port}")
    big = {"notes": "z" * 5000}
    assert post(transport, big)[0] == 200            # capabilities not known yet: gzip
    transport.use_encodings(["zstd", "gzip"])
    assert json.loads(post(transport, big)[2])["got"] == big
    handler.refuse_zstd = True                        # a proxy that cannot take zstd
    assert json.loads(post(transport, big)[2])["got"] == big
    assert post(transport, big)[0] == 200
    assert [s["coding"] for s in handler.seen] == ["gzip", "zstd", "zstd", "gzip", "gzip"]
    assert handler.seen[0]["accept"] == "zstd, gzip"


def test_a_connection_the_server_closed_is_reopened(http_server, connect):
    server, handler = http_server
    handler.close_after = True
    transport = connect(f"http://127.0.0.1:{server.server_port}/")
    for i in range(3):
        assert json.loads(post(transport, {"i": i})[2])["got"] == {"i": i}
    assert len({s["port"] for s in handler.seen}) == 3


def test_refused_connections_and_timeouts_are_transport_errors(http_server, connect):
    server, handler = http_server
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    with pytest.raises(TransportError):
        post(connect(f"http://127.0.0.1:{free_port}", timeout=(1, 1)), {})
    handler.stall = True
    with pytest.raises(TransportError, match="timed out|timeout"):
        post(connect(f"http://127.0.0.1:{server.server_port}", timeout=(1, 0.2)), {})


def test_only_http_urls_are_accepted():
    with pytest.raises(ValueError):
        HttpTransport("ftp://example.com")


def test_a_compressed_answer_cut_short_is_a_transport_error():
    from fieldsync.client.transport import decode_body
    page = json.dumps({"cursor": 5, "changes": ["x" * 100] * 100}).encode()
    for coding, packed in (("zstd", zstandard.ZstdCompressor(level=3).compress(page)),
                           ("gzip", gzip.compress(page))):
        assert decode_body(packed, coding) == page
        for cut in (len(packed) // 2, len(packed) - 1, 3):
            with pytest.raises(TransportError):
                decode_body(packed[:cut], coding)
    with pytest.raises(TransportError, match="cannot read"):
        decode_body(page, "br")
