"""Idle timeout and expiry of user and device tokens (HIPAA automatic logoff), on SQLite and
PostgreSQL, with the auth clock injected: no sleeps."""

from __future__ import annotations

import pytest

from auth_support import token_id


def _reason(response) -> str | None:
    return (response.get_json() or {}).get("reason")


def test_a_token_is_refused_after_it_expires(auth_app):
    token = auth_app.token("admin-1", "admin", ttl=300)
    assert auth_app.request("GET", "/territory", token).status_code == 200
    auth_app.clock.advance(299)
    assert auth_app.request("GET", "/territory", token).status_code == 200
    auth_app.clock.advance(1)
    r = auth_app.request("GET", "/territory", token)
    assert r.status_code == 401 and _reason(r) == "expired"
    assert 'error_description="expired"' in r.headers["WWW-Authenticate"]


def test_a_user_token_unused_past_the_idle_limit_is_refused_before_it_expires(auth_app):
    token = auth_app.token("admin-1", "admin")          # 12 hours of life, 900 s idle limit
    assert auth_app.request("GET", "/territory", token).status_code == 200
    auth_app.clock.advance(900)
    assert auth_app.request("GET", "/territory", token).status_code == 200   # exactly the limit: still in
    auth_app.clock.advance(901)
    r = auth_app.request("GET", "/territory", token)
    assert r.status_code == 401 and _reason(r) == "idle"
    assert "unused for more than 900 s" in r.get_json()["detail"]
    auth_app.clock.advance(1)   # a refused use does not revive it
    assert _reason(auth_app.request("GET", "/territory", token)) == "idle"


def test_use_keeps_a_token_alive_past_the_idle_limit(auth_app):
    token = auth_app.token("admin-1", "admin")
    for _ in range(6):          # 6 x 800 s = 80 minutes, never 900 s idle
        auth_app.clock.advance(800)
        assert auth_app.request("GET", "/territory", token).status_code == 200
    assert auth_app.session_row(token_id(token))["last_used_at"] == int(auth_app.clock())


def test_last_use_is_written_at_most_once_a_minute(auth_app):
    token = auth_app.token("admin-1", "admin")
    start = int(auth_app.clock())
    assert auth_app.request("GET", "/territory", token).status_code == 200
    assert auth_app.session_row(token_id(token))["last_used_at"] == start
    for _ in range(5):
        auth_app.clock.advance(10)
        assert auth_app.request("GET", "/territory", token).status_code == 200
    assert auth_app.session_row(token_id(token))["last_used_at"] == start      # 50 s: not rewritten
    auth_app.clock.advance(10)
    assert auth_app.request("GET", "/territory", token).status_code == 200
    assert auth_app.session_row(token_id(token))["last_used_at"] == start + 60


def test_the_idle_limit_counts_from_issue_until_the_first_use(auth_app):
    fresh = auth_app.token("admin-1", "admin")
    auth_app.clock.advance(901)
    r = auth_app.request("GET", "/territory", fresh)
    assert r.status_code == 401 and _reason(r) == "idle"
    assert auth_app.session_row(token_id(fresh)) is None   # no session was started


def test_a_device_token_has_the_longer_device_idle_limit(auth_app):
    rep = auth_app.rep_token()
    registered = auth_app.register(rep)
    device_token, device_id = registered["device_token"], registered["device_id"]
    assert auth_app.push(device_token, device_id).status_code == 202
    auth_app.clock.advance(3600)
    assert _reason(auth_app.push(rep, device_id)) == "idle"             # the user's own token is idle
    assert auth_app.push(device_token, device_id, seq=2).status_code == 202   # the device token is not
    auth_app.clock.advance(13 * 86400)           # thirteen days offline
    assert auth_app.push(device_token, device_id, seq=3).status_code == 202
    auth_app.clock.advance(14 * 86400 + 1)
    r = auth_app.pull(device_token, device_id)
    assert r.status_code == 401 and _reason(r) == "idle"


def test_the_idle_limits_are_configurable(make_app):
    app = make_app(TOKEN_IDLE_SECONDS=120, DEVICE_TOKEN_IDLE_SECONDS=600)
    token = app.token("admin-1", "admin")
    assert app.request("GET", "/territory", token).status_code == 200
    app.clock.advance(121)
    assert _reason(app.request("GET", "/territory", token)) == "idle"
    with pytest.raises(Exception, match="must be positive"):
        make_app(TOKEN_IDLE_SECONDS=0)


def test_the_first_use_starts_a_session_audited_once(auth_app):
    token = auth_app.token("admin-1", "admin")
    for _ in range(3):
        assert auth_app.request("GET", "/territory", token).status_code == 200
    starts = [e for e in auth_app.auth_entries("session_start") if e.detail["token_id"] == token_id(token)]
    assert len(starts) == 1
    start = starts[0]
    assert (start.action, start.outcome, start.actor, start.role, start.detail["kind"]) == \
        ("auth", "success", "admin-1", "admin", "user")


def test_expired_session_rows_are_swept(lite_app):
    token = lite_app.token("admin-1", "admin", ttl=60)
    assert lite_app.request("GET", "/territory", token).status_code == 200
    sessions = lite_app.state.sessions
    assert sessions.sweep() == 0                           # not expired yet
    lite_app.clock.advance(60 + 86400 + 1)
    assert sessions.sweep() >= 1
    assert lite_app.session_row(token_id(token)) is None
    assert lite_app.request("GET", "/territory", token).get_json()["reason"] == "expired"   # still refused


def test_concurrent_first_uses_start_one_session(auth_app):
    """Several requests of a new token at once (on PostgreSQL, several transactions insert the
    session row together): all are served, one session start is recorded and audited."""
    import threading
    token = auth_app.token("admin-1", "admin")
    barrier = threading.Barrier(6)
    statuses: list[int] = []

    def call() -> None:
        client = auth_app.app.test_client()
        barrier.wait()
        statuses.append(client.get("/api/v1/territory", headers={"Authorization": f"Bearer {token}"}).status_code)
    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 6
    starts = [e for e in auth_app.auth_entries("session_start") if e.detail["token_id"] == token_id(token)]
    assert len(starts) == 1
