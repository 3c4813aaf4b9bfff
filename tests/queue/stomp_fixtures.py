"""Fixtures for the STOMP backend against a real ActiveMQ (ci/activemq.sh installs and starts it).

`stomp_queue_url` is a fresh queue on the broker for each test; `stomp_raw_bodies(url)` reads
the bodies the broker holds for a queue and its dead-letter queue with plain stomp.py (a queue
browser: nothing is consumed), for the "no plaintext on the wire" test. The broker is at
127.0.0.1:61613 unless FIELDSYNC_TEST_STOMP names another `host:port`. An unreachable broker
FAILS the tests that need it (never a silent skip).
"""

from __future__ import annotations

import os
import subprocess
import threading
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import stomp

REPO = Path(__file__).resolve().parents[2]
BROKER_SCRIPT = REPO / "ci" / "activemq.sh"
STOMP_ADDRESS = os.environ.get("FIELDSYNC_TEST_STOMP", "127.0.0.1:61613")
# the TLS connector and its self-signed certificate, both made by ci/activemq.sh
STOMP_TLS_ADDRESS = os.environ.get("FIELDSYNC_TEST_STOMP_TLS", "127.0.0.1:61614")
STOMP_TLS_CA = os.environ.get("FIELDSYNC_TEST_STOMP_TLS_CA",
                              "/etc/activemq/instances-available/main/broker-cert.pem")


def _connect(host: str, port: int, timeout: float = 5.0) -> tuple[stomp.Connection12, "_Collector"]:
    collector = _Collector()
    conn = stomp.Connection12([(host, port)], auto_decode=False, reconnect_attempts_max=1, timeout=timeout)
    conn.set_listener("collector", collector)
    conn.connect(wait=False)
    if not collector.connected.wait(timeout):
        conn.transport.disconnect_socket()
        raise ConnectionError(f"no CONNECTED frame from {host}:{port}")
    return conn, collector


class _Collector(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.connected = threading.Event()
        self.frames: list = []
        self.changed = threading.Condition()

    def on_connected(self, frame) -> None:
        self.connected.set()

    def on_message(self, frame) -> None:
        with self.changed:
            self.frames.append(frame)
            self.changed.notify_all()

    def wait_for_end(self, subscription: str, timeout: float) -> list:
        """MESSAGE frames of a browser subscription, until the broker's `browser: end`."""
        with self.changed:
            ended = self.changed.wait_for(lambda: any(
                frame.headers.get("subscription") == subscription and frame.headers.get("browser") == "end"
                for frame in self.frames), timeout)
            assert ended, f"the broker did not finish browsing within {timeout} s"
            return [frame for frame in self.frames
                    if frame.headers.get("subscription") == subscription and frame.headers.get("browser") != "end"]


def broker_address() -> tuple[str, int]:
    host, _, port = STOMP_ADDRESS.rpartition(":")
    return host, int(port)


def browse_bodies(url: str, dead: bool = False) -> list[bytes]:
    """Bodies of the messages in the queue of `url` (or its DLQ.<queue>), oldest first."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    conn, collector = _connect(parts.hostname, parts.port)
    try:
        destination = f"/queue/DLQ.{name}" if dead else f"/queue/{name}"
        conn.subscribe(destination, id="raw", ack="auto", headers={"browser": "true"})
        return [bytes(frame.body) for frame in collector.wait_for_end("raw", 10)]
    finally:
        conn.disconnect()


def run_broker_script(*args: str) -> None:
    """ci/activemq.sh with `args` (e.g. "restart"); fails the test with its output."""
    result = subprocess.run(["bash", str(BROKER_SCRIPT), *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"ci/activemq.sh {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def activemq() -> tuple[str, int]:
    """(host, port) of a broker that answers STOMP CONNECT; fails with how to start one."""
    host, port = broker_address()
    try:
        conn, _ = _connect(host, port)
    except (OSError, ConnectionError, stomp.exception.StompException) as exc:
        pytest.fail(f"ActiveMQ does not accept STOMP on {host}:{port} ({type(exc).__name__}: {exc}). "
                    f"Start it with `bash ci/activemq.sh` (installs Debian's activemq, adds the STOMP "
                    f"connector, the per-queue dead-letter queues and the statistics plugin, starts "
                    f"it), or point FIELDSYNC_TEST_STOMP at another host:port.", pytrace=False)
    conn.disconnect()
    return host, port


@pytest.fixture
def stomp_queue_url(activemq) -> str:
    """A fresh queue (unique name) on the running broker."""
    host, port = activemq
    return f"stomp://{host}:{port}/fieldsync-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def stomp_tls_url(activemq) -> str:
    """A fresh queue on the broker's TLS connector, verified against its test certificate."""
    if not Path(STOMP_TLS_CA).is_file():
        pytest.fail(f"no broker certificate at {STOMP_TLS_CA}: run `bash ci/activemq.sh`", pytrace=False)
    return f"stomp+ssl://{STOMP_TLS_ADDRESS}/fieldsync-test-{uuid.uuid4().hex[:12]}?ca_certs={STOMP_TLS_CA}"


@pytest.fixture
def stomp_raw_bodies(activemq):
    """`read(url) -> list[bytes]`: the raw bodies the broker holds for that queue and its
    dead-letter queue, read with plain stomp.py (a browser: nothing is consumed)."""
    def read(url: str) -> list[bytes]:
        return browse_bodies(url) + browse_bodies(url, dead=True)
    return read
