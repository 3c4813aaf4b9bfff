"""Helpers of the PostgreSQL and KMS outage tests (test_postgres_outage.py, test_kms_outage.py,
test_outage_answers.py): a private PostgreSQL cluster a test may stop and start, the app served
over real HTTP, SDK devices whose every answer is recorded, and the figures the tests print
(the queue outage tests have theirs in outage_support.py). A module of its own, not conftest: `conftest` names another module
depending on what pytest collected first.

Why a private cluster: the shared PostgreSQL at 127.0.0.1:5432 serves every other test running
at the same time (xdist workers); restarting it would fail them. A cluster of our own, made
with initdb in a temporary directory on a free port, is a real PostgreSQL whose restart affects
this test only (docs/decisions.md)."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "outage-test-secret-0123456789abcdef"
PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"     # a seed territory (examples/seed)
SAI = "2fd6ae15-929b-509f-9c04-01a819382ca2"      # a retailer in PUNE
BOUND = 5.0          # seconds: the longest any answer may take while a dependency is out
UNAVAILABLE = "https://fieldsync.dev/problems/unavailable"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        which = shutil.which("pg_ctl")
        if which is None:
            pytest.fail("PostgreSQL's server binaries (initdb, pg_ctl) are not installed; the outage test "
                        "runs a private cluster with them (apt-get install postgresql)")
        return Path(which).parent
    return Path(found[-1]).parent


class PrivateCluster:
    """A PostgreSQL cluster of this test alone: initdb in a temporary directory, served on a free
    port of 127.0.0.1 with its socket in that directory; `stop()`, `start()`, `destroy()`.
    As root the server runs as the `postgres` user (PostgreSQL refuses to run as root)."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.root = Path(tempfile.mkdtemp(prefix="fieldsync-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                  "--encoding=UTF8", "--locale=C")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise AssertionError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}\n{log}")

    def _options(self) -> str:
        return (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c max_connections=60 -c shared_buffers=16MB")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self._options(), "-w", "-t", "30", "start")

    def stop(self) -> None:
        """A fast shutdown: sessions are ended at once (as in a restart or a failover)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def destroy(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30", "stop")
        except AssertionError:
            pass   # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def serving(app, threads: int = 6):
    """The base URL of `app` served by waitress as `fieldsync serve` runs it, on a free port."""
    from fieldsync.api.body_limit import make_http_server
    server = make_http_server(app, "127.0.0.1", 0, 4 * 1024 * 1024, threads=threads)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        def close_all() -> None:
            for channel in list(server._map.values()):
                channel.close()
        server.trigger.pull_trigger(close_all)
        thread.join(10)
        server.task_dispatcher.shutdown()


@dataclass
class Answer:
    at: float              # monotonic seconds when the request started
    seconds: float
    method: str
    path: str
    status: int | None     # None: no answer (connection refused or cut)
    content_type: str = ""
    problem: dict = field(default_factory=dict)
    retry_after: str | None = None


class Recorder:
    """Every answer the devices and the health poller got, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.answers: list[Answer] = []

    def add(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def between(self, start: float, end: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if start <= a.at <= end]

    def count(self, predicate) -> int:
        with self._lock:
            return sum(1 for a in self.answers if predicate(a))


class RecordingTransport:
    """An SDK transport that records each request's answer and how long it took."""

    def __init__(self, inner, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def request(self, method, path, *, headers, body):
        started = time.monotonic()
        try:
            status, answer_headers, answer = self.inner.request(method, path, headers=headers, body=body)
        except Exception:
            self.recorder.add(Answer(started, time.monotonic() - started, method, path, None))
            raise
        lowered = {k.lower(): v for k, v in answer_headers.items()}
        content_type = lowered.get("content-type", "")
        problem = {}
        if status >= 400 and "problem+json" in content_type:
            try:
                problem = json.loads(answer)
            except ValueError:
                problem = {"unparsed": True}
        self.recorder.add(Answer(started, time.monotonic() - started, method, path, status, content_type,
                                 problem, lowered.get("retry-after")))
        return status, answer_headers, answer


def bad_answers(answers: list[Answer]) -> list[Answer]:
    """Answers that are neither a success nor a quick 503 `unavailable` problem with Retry-After."""
    bad = []
    for a in answers:
        if a.seconds > BOUND:
            bad.append(a)
        elif a.status is None or 200 <= a.status < 300:
            continue   # no answer: the server was refusing connections, never slow
        elif a.status == 503 and a.problem.get("type") == UNAVAILABLE and a.retry_after:
            continue
        else:
            bad.append(a)
    return bad


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def figures(answers: list[Answer], path_end: str) -> str:
    times = [a.seconds * 1000 for a in answers if a.path.endswith(path_end)]
    return (f"{path_end}: n={len(times)} p50={percentile(times, 0.5):.1f} ms "
            f"p99={percentile(times, 0.99):.1f} ms max={max(times, default=float('nan')):.1f} ms")


def poll_health(base_url: str, recorder: Recorder, stop: threading.Event) -> threading.Thread:
    """A thread asking GET /api/v1/health every 50 ms (a load balancer's liveness check)."""
    import urllib.error
    import urllib.request

    def run() -> None:
        while not stop.is_set():
            started = time.monotonic()
            status, content_type, problem, retry = None, "", {}, None
            try:
                with urllib.request.urlopen(base_url + "/api/v1/health", timeout=30) as answer:
                    status = answer.status
            except urllib.error.HTTPError as exc:
                status, content_type, retry = exc.code, exc.headers.get("Content-Type", ""), exc.headers.get("Retry-After")
                try:
                    problem = json.loads(exc.read())
                except ValueError:
                    problem = {}
            except OSError:
                status = None
            recorder.add(Answer(started, time.monotonic() - started, "GET", "/api/v1/health", status,
                                content_type, problem, retry))
            stop.wait(0.05)
    thread = threading.Thread(target=run, name="health-poller", daemon=True)
    thread.start()
    return thread


def device_schema() -> dict:
    return json.loads((ROOT / "generated" / "device" / "schema.json").read_text())


def rep_token(user: str) -> str:
    from fieldsync.auth import issue_token
    return issue_token(SECRET, user, "field_rep", {"territory_ids": [PUNE]}, ttl=3600)


def visit_fields(note: str) -> dict:
    return {"retailer_id": SAI, "territory_id": PUNE, "visited_at": "2026-11-26T10:00:00Z", "purpose": "order",
            "notes": note}
