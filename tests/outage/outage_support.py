"""What the dependency-outage tests share (tests/outage/): a fleet of real servers on one
database and one queue, each served over HTTP by waitress as `fieldsync serve` runs it, SDK
devices pushing and pulling through them in threads, and the latency record of each call.

A module of its own, not conftest: the test modules import it by name (the tests directory
is on sys.path through its conftest)."""

from __future__ import annotations

import statistics
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import sqlalchemy as sa

from fieldsync.api import create_app
from fieldsync.auth import issue_token
from fieldsync.client import Client, HttpTransport
from fieldsync.seed import load_seed

ROOT = Path(__file__).resolve().parents[2]
SECRET = "outage-test-secret-0123456789abcdef"
PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"
SAI = "2fd6ae15-929b-509f-9c04-01a819382ca2"      # a retailer in PUNE
REQUEST_THREADS = 8                               # as `fieldsync serve` runs by default


def visit(n: int) -> dict[str, Any]:
    return {"retailer_id": SAI, "territory_id": PUNE, "visited_at": "2026-12-01T10:00:00Z", "purpose": "order",
            "notes": f"visit {n}"}


def token(user: str) -> str:
    return issue_token(SECRET, user, "field_rep", {"territory_ids": [PUNE]}, ttl=3600)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


@dataclass
class Timings:
    """Seconds each call took, and the calls that failed, per kind (health, pull, push...)."""
    calls: dict[str, list[float]] = field(default_factory=dict)
    failures: dict[str, list[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, seconds: float, failure: str | None = None) -> None:
        with self.lock:
            self.calls.setdefault(kind, []).append(seconds)
            if failure is not None:
                self.failures.setdefault(kind, []).append(failure)

    def summary(self, kind: str) -> dict[str, float]:
        values = self.calls.get(kind, [])
        return {"n": len(values), "p50": statistics.median(values) if values else float("nan"),
                "p99": percentile(values, 99), "max": max(values) if values else float("nan")}


class Server:
    """One fieldsync server: the app, its listeners and spool relay started as `serve` starts
    them, waitress on a free port in a thread."""

    def __init__(self, config: dict[str, Any], model):
        from fieldsync.api.body_limit import make_http_server
        self.app = create_app(config, model=model)
        self.state = self.app.extensions["fieldsync"]
        self.state.sync.start()
        self.state.sync.start_relay()
        self.http = make_http_server(self.app, "127.0.0.1", 0, int(self.state.config["MAX_BODY_BYTES"]),
                                     threads=REQUEST_THREADS)
        self.thread = threading.Thread(target=self.http.run, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.http.effective_port}"

    def stop(self) -> None:
        def close_all() -> None:
            for channel in list(self.http._map.values()):
                channel.close()
        self.http.trigger.pull_trigger(close_all)
        self.thread.join(10)
        self.http.task_dispatcher.shutdown()
        self.state.sync.close()
        self.state.engine.dispose()


@contextmanager
def fleet(tmp_path: Path, model, database_url: str, queue_url: str, *, servers: int = 2,
          **config: Any) -> Iterator[list[Server]]:
    """`servers` servers on one database and one push queue (each its own DATA_DIR, one key
    directory: they share the data keys as a deployment shares its key provider)."""
    keys = tmp_path / "keys"
    made: list[Server] = []
    try:
        for i in range(servers):
            made.append(Server({"DATABASE_URL": database_url, "QUEUE_URL": queue_url, "SECRET_KEY": SECRET,
                                "DATA_DIR": str(tmp_path / f"server{i}"), "KEYS_DIR": str(keys),
                                "SYNC_LISTENERS": 2, **config}, model))
            if i == 0:
                state = made[0].state
                load_seed(state.config, ROOT / "examples" / "seed", store=state.store)
        yield made
    finally:
        for server in made:
            server.stop()


class Traffic:
    """Devices writing visits and syncing through the servers in threads, a reader pulling, and
    a prober asking /health and /ready, until `stop()`; every call timed into `timings`."""

    def __init__(self, tmp_path: Path, servers: list[Server], schema: dict, *, devices: int = 4):
        self.timings = Timings()
        self.stopping = threading.Event()
        self.phase = "before"
        self.urls = [s.url for s in servers]
        self.devices = [Client(tmp_path / f"device{i}.db", HttpTransport(self.urls[i % len(self.urls)], timeout=(5, 60)),
                               token(f"rep-{i}"), schema=schema) for i in range(devices)]
        self.reader = Client(tmp_path / "reader.db", HttpTransport(self.urls[-1], timeout=(5, 60)), token("rep-reader"),
                             schema=schema)
        self.written: dict[int, list[str]] = {i: [] for i in range(devices)}
        self.threads: list[threading.Thread] = []

    def _timed(self, kind: str, call: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            result = call()
        except Exception as exc:
            self.timings.record(f"{self.phase}:{kind}", time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
            return None
        self.timings.record(f"{self.phase}:{kind}", time.perf_counter() - started)
        return result

    def start(self) -> None:
        for device in (*self.devices, self.reader):
            device.sync()   # registered and holding the seed before the outage
        for i, device in enumerate(self.devices):
            self.threads.append(threading.Thread(target=self._device_loop, args=(i, device), daemon=True))
        self.threads.append(threading.Thread(target=self._reader_loop, daemon=True))
        self.threads.append(threading.Thread(target=self._probe_loop, daemon=True))
        for thread in self.threads:
            thread.start()

    def _device_loop(self, i: int, device: Client) -> None:
        n = 0
        while not self.stopping.is_set():
            for _ in range(3):
                self.written[i].append(device.insert("visit", visit(n)))
                n += 1
            self._timed("sync", device.sync)

    def _reader_loop(self) -> None:
        while not self.stopping.is_set():
            self._timed("pull", self.reader.sync)

    def _probe_loop(self) -> None:
        import http.client
        from urllib.parse import urlsplit
        while not self.stopping.is_set():
            for url in self.urls:
                parts = urlsplit(url)
                for path, kind in (("/api/v1/health", "health"), ("/api/v1/ready", "ready")):
                    def ask() -> int:
                        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                        try:
                            conn.request("GET", path)
                            response = conn.getresponse()
                            response.read()
                            if response.status >= 500 and kind == "health":
                                raise AssertionError(f"health answered {response.status}")
                            return response.status
                        finally:
                            conn.close()
                    self._timed(kind, ask)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(120)
            assert not thread.is_alive(), f"{thread.name} did not stop"

    def settle(self, servers: list[Server], timeout: float = 90.0) -> float:
        """Sync every device until each has nothing pending, sent or unsettled; returns seconds."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            for device in self.devices:
                device.sync()
            statuses = [d.status() for d in self.devices]
            if all((s.pending, s.sent, s.received) == (0, 0, 0) for s in statuses):
                return time.monotonic() - started
            assert time.monotonic() < deadline, f"devices did not settle in {timeout} s: {statuses}"
            for server in servers:   # wait for work in flight, not for time
                server.state.sync.relay.relay_once() if server.state.sync.relay else None
                server.state.sync.pool.wait_idle(2.0)

    def close(self) -> None:
        for device in (*self.devices, self.reader):
            device.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: Callable[[], None] | None = None) -> float:
    """Seconds until `condition()` holds, polling (between polls `poll()`, else a short wait on
    an event that never fires); fails after `timeout`."""
    started = time.monotonic()
    idle = threading.Event()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what} did not happen within {timeout} s"
        (poll or (lambda: idle.wait(0.05)))()
    return time.monotonic() - started


def server_visits(engine: sa.Engine, ids: list[str]) -> dict[str, int]:
    """How many rows the server holds of each visit id."""
    with engine.connect() as conn:
        found: dict[str, int] = {}
        for i in range(0, len(ids), 500):
            rows = conn.execute(sa.text("SELECT id, count(*) FROM visit WHERE id IN :ids GROUP BY id")
                                .bindparams(sa.bindparam("ids", expanding=True)), {"ids": ids[i:i + 500]}).all()
            found.update({r[0]: r[1] for r in rows})
    return found
