"""docs/protocol.md §2.4: a request whose `Content-Length` alone exceeds `MAX_BODY_BYTES` gets
413 `payload-too-large` (problem+json with `max_bytes`) before its body is read, without a
`100 Continue`, from the real servers: `fieldsync serve` (waitress, in a process of its own) and
the HTTPS server (cheroot). Nothing of the body is sent in these tests: a server that waited
for it would never answer."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time

import pytest

from fieldsync.api import create_app
from tls_helpers import ROOT

LIMIT = 64 * 1024
SECRET = "body-limit-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`fieldsync serve` on 127.0.0.1 with MAX_BODY_BYTES=64 KiB; yields its port."""
    data = tmp_path_factory.mktemp("serve")
    port = _free_port()
    env = dict(os.environ, FIELDSYNC_MAX_BODY_BYTES=str(LIMIT), FIELDSYNC_SECRET_KEY=SECRET,
               FIELDSYNC_SYNC_LISTENERS="0")
    proc = subprocess.Popen([sys.executable, "-m", "fieldsync.cli", "serve", "--host", "127.0.0.1",
                             "--port", str(port), "--data-dir", str(data / "var")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:           # blocks until the server says it is serving
            lines.append(line)
            if "serving on" in line:
                break
        else:
            pytest.fail("fieldsync serve exited:\n" + "".join(lines))
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()


def _exchange(sock: socket.socket, head: str, timeout: float = 5.0) -> tuple[list[bytes], bytes]:
    """Send only the request head; read until the server answers a final status and closes or
    the body is complete. Returns (status lines seen, in order; the final response's body)."""
    sock.settimeout(timeout)
    sock.sendall(head.encode("ascii"))
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
        final = _final_response(data)
        if final is not None:
            return final
    final = _final_response(data)
    assert final is not None, f"no final answer within {timeout} s (the server is waiting for the body): {data!r}"
    return final


def _final_response(data: bytes) -> tuple[list[bytes], bytes] | None:
    statuses = []
    rest = data
    while b"\r\n\r\n" in rest:
        head, rest = rest.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        statuses.append(lines[0])
        if b" 100 " in lines[0] + b" ":
            continue
        length = next((int(line.split(b":", 1)[1]) for line in lines[1:]
                       if line.lower().startswith(b"content-length:")), None)
        if length is None or len(rest) < length:
            return None
        return statuses, rest[:length]
    return None


def _head(path: str, length: int, *, expect: bool) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
             "Fieldsync-Protocol: 1", f"Content-Length: {length}"]
    if expect:
        lines.append("Expect: 100-continue")
    return "\r\n".join(lines) + "\r\n\r\n"


def _assert_refused(statuses: list[bytes], body: bytes, path: str) -> None:
    assert statuses[0].startswith(b"HTTP/1.1 413"), statuses   # no 100 Continue before it
    assert len(statuses) == 1, statuses
    problem = json.loads(body)
    assert problem["type"] == "https://fieldsync.dev/problems/payload-too-large"
    assert problem["status"] == 413 and problem["max_bytes"] == LIMIT and problem["instance"] == path


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
@pytest.mark.parametrize("length", [LIMIT + 1, 10 ** 12], ids=["just-over", "huge"])
@pytest.mark.parametrize("path", ["/api/v1/sync/push", "/api/v1/visit"])
def test_waitress_refuses_on_the_header(served, path, length, expect):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", served)) as sock:
        statuses, body = _exchange(sock, _head(path, length, expect=expect))
    _assert_refused(statuses, body, path)
    assert time.monotonic() - started < 5


def test_waitress_still_continues_a_body_within_the_limit(served):
    with socket.create_connection(("127.0.0.1", served)) as sock:
        sock.settimeout(10)
        sock.sendall(_head("/api/v1/sync/push", 2, expect=True).encode())
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"{}")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 401")   # the body was read; no token


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
def test_cheroot_refuses_on_the_header(tmp_path, issue, ca, https_server, example_model, expect):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(tmp_path / "var"), "SYNC_LISTENERS": 0, "MAX_BODY_BYTES": LIMIT},
                     model=example_model)
    port = https_server(app, issue("127.0.0.1"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        statuses, body = _exchange(sock, _head("/api/v1/sync/push", LIMIT + 1, expect=expect))
    _assert_refused(statuses, body, "/api/v1/sync/push")
    app.extensions["fieldsync"].engine.dispose()


def test_the_app_refuses_on_the_header_under_any_wsgi_server(tmp_path, example_model):
    """The WSGI middleware answers before the app (or a route that never reads the body)."""
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(tmp_path / "var"), "SYNC_LISTENERS": 0, "MAX_BODY_BYTES": LIMIT},
                     model=example_model)
    response = app.test_client().get("/api/v1/sync/capabilities", environ_overrides={"CONTENT_LENGTH": str(LIMIT + 1)})
    assert response.status_code == 413 and response.get_json()["max_bytes"] == LIMIT
    assert response.headers["Fieldsync-Protocol"] == "1"
    app.extensions["fieldsync"].engine.dispose()
