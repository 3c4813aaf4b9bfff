"""Failed authentications are limited per client address and per device: the limit reached
answers 429 with Retry-After to every request without a valid token (a valid one is let
through), and is released as the window slides
(injected clock). The limiter is thread-safe and matches a reference model (hypothesis)."""

from __future__ import annotations

import threading

from hypothesis import given, settings, strategies as st

from auth_support import SecondsClock
from fieldsync.auth.ratelimit import FailureLimiter
from fieldsync.auth.tokens import issue_token


def test_the_limit_is_reached_answered_with_retry_after_and_released(lite_app):
    app = lite_app
    good = app.token("admin-1", "admin")
    for i in range(10):
        app.clock.advance(1)
        r = app.request("GET", "/territory", "v1.forged.token", address="10.0.0.7")
        assert r.status_code == 401, i
    # the 11th bad request from that address gets 429, a missing token too ...
    r = app.request("GET", "/territory", "v1.forged.token", address="10.0.0.7")
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "51"             # the first failure (t=1) leaves the window at t=61
    assert r.get_json()["type"].endswith("/too-many-requests") and r.get_json()["retry_after"] == 51
    assert app.request("GET", "/territory", None, address="10.0.0.7").status_code == 429
    # ... but a valid token from the same address (a NAT, an office) is let through: the limit
    # slows guessing, it does not lock out the users behind that address
    assert app.request("GET", "/territory", good, address="10.0.0.7").status_code == 200
    assert app.request("GET", "/territory", app.token("admin-2", "admin"), address="10.0.0.7").status_code == 200
    # another address is not affected
    assert app.request("GET", "/territory", "v1.forged.token", address="10.0.0.8").status_code == 401
    app.clock.advance(50)
    assert app.request("GET", "/territory", "v1.forged.token", address="10.0.0.7").status_code == 429
    app.clock.advance(1)                                  # the oldest failure left the window
    assert app.request("GET", "/territory", "v1.forged.token", address="10.0.0.7").status_code == 401


def test_the_sync_api_is_limited_too_and_a_missing_token_counts(lite_app):
    app = lite_app
    for _ in range(10):
        assert app.sync("GET", "/schema", None, address="10.1.1.1").status_code == 401
    r = app.sync("GET", "/schema", None, address="10.1.1.1")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) == 60
    assert r.get_json()["type"].endswith("/too-many-requests")
    assert app.sync("GET", "/schema", app.rep_token(), address="10.1.1.1").status_code == 200


def test_failures_are_counted_per_device_across_addresses(lite_app):
    app = lite_app
    registered = app.register(app.rep_token())
    device_id = registered["device_id"]
    forged = issue_token("not-the-server-secret-at-all-000000", "rep-asha", "field_rep", {}, now=app.clock(),
                         device_id=device_id)
    for i in range(10):   # ten addresses, one failure each: only the device's count reaches the limit
        r = app.sync("POST", "/push", forged, {"device_id": device_id}, address=f"10.2.0.{i}")
        assert r.status_code == 401 and r.get_json()["reason"] == "bad_signature"
    # another forged token claiming the device, from a fresh address, waits
    r = app.sync("POST", "/push", forged, {"device_id": device_id}, address="10.2.1.1")
    assert r.status_code == 429
    # the device's real token is let through: failures of others do not lock the device out
    assert app.push(registered["device_token"], device_id).status_code == 202
    # the user's own token (no device claim) from that address, and another device, are not limited
    assert app.sync("GET", f"/devices/{device_id}", app.rep_token(), address="10.2.1.1").status_code == 200
    other = app.register(app.rep_token("rep-bina"), install="install-2")
    assert app.push(other["device_token"], other["device_id"]).status_code == 202


def test_reaching_the_limit_is_audited_once_and_each_failure_with_its_reason(lite_app):
    app = lite_app
    expired = app.token("admin-1", "admin", ttl=1)
    app.clock.advance(5)
    for _ in range(12):
        app.request("GET", "/territory", expired, address="10.3.3.3")
    failures = [e for e in app.auth_entries("token_refused") if e.detail["source_ip"] == "10.3.3.3"]
    assert len(failures) == 10                                     # the two 429s were not checked
    assert {(e.action, e.outcome, e.detail["reason"]) for e in failures} == {("auth", "failure", "expired")}
    limited = app.auth_entries("rate_limited")
    assert len(limited) == 1 and limited[0].outcome == "denied" and limited[0].detail["source_ip"] == "10.3.3.3"
    assert "address:10.3.3.3" in limited[0].detail["keys"]


def test_the_limit_is_configurable(make_app):
    app = make_app(AUTH_FAILURE_LIMIT=2, AUTH_FAILURE_WINDOW_SECONDS=10)
    for _ in range(2):
        assert app.request("GET", "/territory", "garbage").status_code == 401
    r = app.request("GET", "/territory", "garbage")
    assert r.status_code == 429 and r.headers["Retry-After"] == "10"


def test_concurrent_failures_are_all_counted():
    clock = SecondsClock()
    limiter = FailureLimiter(limit=1000, window=60, clock=clock)
    barrier = threading.Barrier(8)

    def fail() -> None:
        barrier.wait()
        for _ in range(100):
            limiter.failed([("address", "a")])
    threads = [threading.Thread(target=fail) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert limiter.retry_after([("address", "a")]) is None     # 800 < 1000
    limiter.failed([("address", "a")] * 200)
    assert limiter.retry_after([("address", "a")]) == 60


def test_idle_keys_are_swept_and_memory_is_bounded():
    clock = SecondsClock()
    limiter = FailureLimiter(limit=3, window=60, clock=clock, max_keys=50)
    for i in range(500):
        limiter.failed([("address", f"10.9.{i // 256}.{i % 256}")])
    assert len(limiter) <= 51
    clock.advance(61)
    limiter.failed([("address", "fresh")])
    limiter._sweep(clock())
    assert len(limiter) == 1


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(1, 6), window=st.integers(1, 30),
       steps=st.lists(st.tuples(st.integers(0, 20), st.booleans()), max_size=40))
def test_the_limiter_matches_a_sliding_window_model(limit, window, steps):
    """Invariant: a key is blocked exactly when `limit` failures of it lie within the last
    `window` seconds, counting only failures that were allowed through (a blocked request is
    never checked, so it cannot fail)."""
    clock = SecondsClock(0)
    limiter = FailureLimiter(limit=limit, window=window, clock=clock)
    counted: list[float] = []
    for wait, attempt_fails in steps:
        clock.advance(wait)
        now = clock()
        recent = [t for t in counted if t > now - window]
        blocked = len(recent) >= limit
        retry = limiter.retry_after([("k", 1)])
        assert (retry is not None) == blocked, (counted, now)
        if blocked:
            assert retry == max(1, -(-(sorted(recent)[-limit] + window - now) // 1))
            continue
        if attempt_fails:
            limiter.failed([("k", 1)])
            counted.append(now)
