"""Background sync: exponential backoff with full jitter bounded by the cap, syncs soon after
local writes, pause/resume/stop. The wait function is injected, so nothing here sleeps for
real except where a real thread must be observed (polled with a deadline)."""

from __future__ import annotations

import json
import random
import threading
import time

import pytest

from fieldsync.backoff import Backoff
from fieldsync.client import DeviceRevoked, TransportError


def eventually(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    raise AssertionError("condition not reached before the deadline")


def test_backoff_is_full_jitter_bounded_by_the_cap():
    backoff = Backoff(base=1.0, cap=300.0, rng=random.Random(1))
    for attempt in range(1, 20):
        ceiling = min(300.0, 2.0 ** attempt)
        samples = [backoff.delay(attempt) for _ in range(200)]
        assert all(0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8 and min(samples) < ceiling * 0.2  # the whole range, jittered
    assert max(backoff.delay(50) for _ in range(1000)) <= 300.0
    assert max(backoff.delay(50, cap=3600) for _ in range(1000)) > 300.0
    assert all(backoff.delay(1, retry_after=30) >= 30 for _ in range(50))  # Retry-After is a minimum


class RecordingWait:
    """An injected wait: records each (event, timeout) and answers "the time passed" at once;
    stops the client after `limit` waits."""

    def __init__(self, client_ref, limit):
        self.calls: list[float | None] = []
        self.client_ref, self.limit = client_ref, limit
        self.done = threading.Event()

    def __call__(self, event, timeout):
        self.calls.append(timeout)
        if len(self.calls) >= self.limit:
            self.client_ref[0]._background.stop()
            self.done.set()
            return True
        return False


class Flaky:
    """Fails the first `failures` requests with a network error, then passes through."""

    def __init__(self, inner, failures):
        self.inner, self.failures, self.calls = inner, failures, 0

    def request(self, method, path, *, headers, body):
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise TransportError("network unreachable")
        return self.inner.request(method, path, headers=headers, body=body)


def test_failures_back_off_exponentially_then_the_interval_resumes(make_client, server):
    ref = []
    client = make_client(Flaky(server, failures=6), rng=random.Random(3))
    ref.append(client)
    errors = []
    client.on_error(errors.append)
    wait = RecordingWait(ref, limit=9)
    client.start(interval=600, wait=wait)
    assert wait.done.wait(5)
    delays = wait.calls
    for attempt, delay in enumerate(delays[:6], start=1):
        assert 0 <= delay <= min(300, 2 ** attempt)
    assert delays[6:8] == [600, 600]
    assert len(errors) == 6 and all(isinstance(e, TransportError) for e in errors)


def test_retry_after_and_cap_with_a_server_that_stays_down(make_client, server):
    ref = []
    down = lambda m, p, b, h: (503, {"retry-after": "45"}, b"{}")
    server.hooks.append(down)
    client = make_client(server, rng=random.Random(5))
    ref.append(client)
    wait = RecordingWait(ref, limit=15)
    client.start(interval=600, wait=wait)
    assert wait.done.wait(5)
    assert all(45 <= d <= 300 for d in wait.calls[:-1])


def test_a_revoked_device_stops_the_loop(make_client, server):
    server.hooks.append(lambda m, p, b, h: (403, {}, json.dumps(
        {"type": "https://fieldsync.dev/problems/device-revoked", "status": 403}).encode()))
    client = make_client(server)
    errors = []
    client.on_error(errors.append)
    client.start(interval=600, wait=lambda event, timeout: False)
    eventually(lambda: not client._background.running)
    assert len(errors) == 1 and isinstance(errors[0], DeviceRevoked)


class ObservedWait:
    """The real wait, with each call's timeout recorded."""

    def __init__(self):
        self.calls: list[float | None] = []

    def __call__(self, event, timeout):
        self.calls.append(timeout)
        return event.wait(timeout)


def test_write_triggers_sync_and_pause_resume_stop(make_client, server, visit):
    client = make_client(server)
    wait = ObservedWait()
    client.start(interval=3600, debounce=0.01, wait=wait)
    eventually(lambda: server.paths().count("/ack") == 1)        # the sync at start

    record_id = client.insert("visit", visit())                  # a write: a sync soon after
    eventually(lambda: client.status().pending == 0 and server.paths().count("/ack") == 2)
    assert 0.01 in wait.calls                                    # debounced
    eventually(lambda: client.get("visit", record_id)["version"] == 1)

    client.pause()
    eventually(lambda: None in wait.calls)                       # parked until resumed
    requests_before = len(server.requests)
    parked = wait.calls.count(None)
    client.insert("visit", visit(notes="while paused"))
    eventually(lambda: wait.calls.count(None) > parked)          # woke, saw the pause, parked again
    assert len(server.requests) == requests_before and client.status().pending == 1

    client.resume()
    eventually(lambda: client.status().pending == 0)

    background = client._background
    client.stop()
    assert not background.running
    client.insert("visit", visit(notes="after stop"))
    assert client.status().pending == 1 and len([p for p in server.paths() if p == "/push"]) == 2


def test_start_twice_is_refused(make_client, server):
    client = make_client(server)
    client.start(interval=3600, wait=lambda event, timeout: event.wait(timeout))
    with pytest.raises(Exception, match="already running"):
        client.start()
    client.stop()
