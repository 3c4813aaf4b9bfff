"""Helpers of the resumable-upload tests (tests/transfer/test_tus_*.py): the app, tokens, a TCP
proxy that cuts a connection after a chosen number of bytes, stopping waitress. A module of its
own, not conftest: `conftest` names another module depending on what pytest collected first."""

from __future__ import annotations

import hashlib
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

from fieldsync.api import create_app
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


def upload_id_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def staged_bytes(app, url: str) -> bytes:
    """The plaintext an upload's staged (sealed) file holds so far, decrypted by the store."""
    store = app.extensions["fieldsync"].transfer
    upload = store._unseal(store._read(upload_id_of(url)))
    return store.source(upload).read_bytes()


def staged_offset(app, url: str) -> int:
    """The plaintext offset the upload's record holds (what HEAD reports)."""
    return app.extensions["fieldsync"].transfer._read(upload_id_of(url)).offset


def make_keyring(directory: Path):
    """A key ring of its own (SQLite and a local key file under `directory`) for an UploadStore
    made without an app."""
    import sqlalchemy as sa

    from fieldsync.crypto.keyring import KeyRing, create_key_tables
    from fieldsync.crypto.keys import LocalKeyProvider
    directory.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(f"sqlite:///{directory / 'keys.db'}")
    create_key_tables(engine)
    return KeyRing(engine, LocalKeyProvider(directory / "keys"))


def stop_waitress(server, thread: threading.Thread) -> None:
    """Stop a waitress server run in `thread`: its sockets are closed inside its own loop (closing
    them from another thread makes the loop fail on a closed descriptor), then its task threads."""
    def close_all() -> None:
        for channel in list(server._map.values()):
            channel.close()
    server.trigger.pull_trigger(close_all)
    thread.join(10)
    assert not thread.is_alive(), "the waitress server did not stop"
    server.task_dispatcher.shutdown()


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


@contextmanager
def serving(app, json_limit: int):
    """The base URL of `app` served by `make_http_server` (as `fieldsync serve` runs it) on a
    free 127.0.0.1 port in a thread, with uploads up to TRANSFER_MAX; stopped and disposed after."""
    from fieldsync.api.body_limit import make_http_server
    server = make_http_server(app, "127.0.0.1", 0, json_limit, transfer_limit=TRANSFER_MAX, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stop_waitress(server, thread)
        app.extensions["fieldsync"].engine.dispose()
