"""Fixtures of the resumable-upload tests: a real server over HTTP (waitress through
`make_http_server`, as `fieldsync serve` runs it, on a free port in a thread), tokens, and a
TCP proxy that cuts a connection after a chosen number of bytes."""

from __future__ import annotations

import hashlib
import socket
import threading
from pathlib import Path

import pytest

from fieldsync.api import create_app
from fieldsync.api.body_limit import make_http_server
from fieldsync.auth import issue_token

SECRET = "transfer-test-secret-0123456789abcdef"
MAX_BODY = 64 * 1024               # the JSON limit: upload chunks larger than this must pass
TRANSFER_MAX = 16 * 1024 * 1024    # Tus-Max-Size of the test server


def make_app(data_dir: Path, model, **config):
    return create_app({"DATABASE_URL": f"sqlite:///{data_dir / 'server.db'}", "SECRET_KEY": SECRET,
                       "DATA_DIR": str(data_dir), "SYNC_LISTENERS": 0, "MAX_BODY_BYTES": MAX_BODY,
                       "TRANSFER_MAX_BYTES": TRANSFER_MAX, **config}, model=model)


def make_token(user: str = "rep-asha", device: str | None = None) -> str:
    return issue_token(SECRET, user, "field_rep", {"territory_ids": []}, ttl=3600, device_id=device)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def served(tmp_path_factory, example_model):
    """(app, base URL) of a server on 127.0.0.1, shared by the tests of a module."""
    data = tmp_path_factory.mktemp("transfer-server")
    app = make_app(data, example_model)
    server = make_http_server(app, "127.0.0.1", 0, MAX_BODY, transfer_limit=TRANSFER_MAX, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{server.effective_port}"
    server.close()
    thread.join(10)
    app.extensions["fieldsync"].engine.dispose()


class CuttingProxy:
    """A TCP proxy to `target` port on 127.0.0.1. `cut_after(n)`: the next connection that
    carries more than `n` bytes towards the server is closed both ways at that point (once; later
    connections pass untouched). `cuts` counts the cuts made."""

    def __init__(self, target: int):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._budget: int | None = None
        self._lock = threading.Lock()
        self.cuts = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut_after(self, n: int) -> None:
        with self._lock:
            self._budget = n

    def _take(self, n: int) -> bool:
        """Count `n` upstream bytes; False when the armed budget is spent (cut now)."""
        with self._lock:
            if self._budget is None:
                return True
            self._budget -= n
            if self._budget >= 0:
                return True
            self._budget = None
            self.cuts += 1
            return False

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if counted and not self._take(len(data)):
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()


@pytest.fixture
def proxy(served):
    app, base = served
    cutting = CuttingProxy(int(base.rsplit(":", 1)[1]))
    yield cutting
    cutting.close()
