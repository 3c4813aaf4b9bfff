"""Body limits at the HTTP server (waitress, as `fieldsync serve` runs it): upload requests are
limited by TRANSFER_MAX_BYTES (`Tus-Max-Size`), every other path still by MAX_BODY_BYTES — on the
header, and for a chunked body as it arrives. (That a PATCH larger than MAX_BODY_BYTES passes is
shown by every interop test: their chunks are larger.)"""

from __future__ import annotations

import json
import socket

from tus_support import MAX_BODY, TRANSFER_MAX, make_token


def _answer(sock: socket.socket) -> tuple[int, dict]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split(b" ")[1]), json.loads(body)


def _send_head(port: int, lines: list[str]) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def test_an_upload_over_tus_max_size_is_refused_on_its_header(served):
    _, base = served
    port = int(base.rsplit(":", 1)[1])
    with _send_head(port, ["PATCH /api/v1/transfer/" + "0" * 32 + " HTTP/1.1", "Host: x",
                           f"Authorization: Bearer {make_token()}", "Tus-Resumable: 1.0.0",
                           "Content-Type: application/offset+octet-stream", "Upload-Offset: 0",
                           f"Content-Length: {TRANSFER_MAX + 1}"]) as sock:
        status, problem = _answer(sock)
    assert status == 413 and problem["max_bytes"] == TRANSFER_MAX


def test_other_paths_keep_max_body_bytes_on_the_header(served):
    _, base = served
    port = int(base.rsplit(":", 1)[1])
    with _send_head(port, ["POST /api/v1/sync/push HTTP/1.1", "Host: x", "Content-Type: application/json",
                           f"Content-Length: {MAX_BODY + 1}"]) as sock:
        status, problem = _answer(sock)
    assert status == 413 and problem["max_bytes"] == MAX_BODY


def test_a_chunked_body_on_another_path_is_cut_at_max_body_bytes(served):
    _, base = served
    port = int(base.rsplit(":", 1)[1])
    piece = b"x" * 16384
    with _send_head(port, ["POST /api/v1/sync/push HTTP/1.1", "Host: x", "Content-Type: application/json",
                           "Transfer-Encoding: chunked"]) as sock:
        try:
            for _ in range(MAX_BODY // len(piece) + 2):
                sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
        except OSError:
            pass   # the server stopped reading once it refused
        status, problem = _answer(sock)
    assert status == 413 and problem["max_bytes"] == MAX_BODY


def test_the_https_server_takes_upload_chunks_over_max_body_bytes(tmp_path, example_model):
    """cheroot (TLS) refuses other paths over MAX_BODY_BYTES before `100 Continue`
    (tests/transport/test_body_limit.py); upload chunks pass up to Tus-Max-Size."""
    import os
    import threading

    import trustme

    from fieldsync.api.https_server import make_https_server
    from fieldsync.client import HttpTransport, TusClient
    from fieldsync.client.wire import Wire
    from tus_support import make_app

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    app = make_app(tmp_path, example_model)
    server = make_https_server(app, "127.0.0.1", 0, cert, key, threads=2)
    server.prepare()
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    transport = HttpTransport(f"https://127.0.0.1:{server.bind_addr[1]}", ca_file=ca_file)
    try:
        data = os.urandom(4 * MAX_BODY + 5)
        client = TusClient(Wire(transport, make_token(), device_version=lambda: 1), chunk_size=2 * MAX_BODY)
        url = client.upload(data, {})
        assert app.extensions["fieldsync"].transfer.data_path(url.rsplit("/", 1)[1]).read_bytes() == data
    finally:
        transport.close()
        server.stop()
        thread.join(10)
        app.extensions["fieldsync"].engine.dispose()
