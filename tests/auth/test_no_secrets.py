"""No token, no token signature and no secret reaches the logs, the audit rows or the database
file, whatever authentication path a request takes; failures are audited with a reason code."""

from __future__ import annotations

import logging
from pathlib import Path

import sqlalchemy as sa

from auth_support import SECRET
from fieldsync.auth.tokens import issue_token


def _secrets_of(tokens: list[str]) -> set[str]:
    """Each token, and separately its signature and payload (a token cut in two must not leak either)."""
    out = {SECRET}
    for token in tokens:
        out.add(token)
        out.update(part for part in token.split(".")[1:] if len(part) > 16)
    return out


def test_tokens_are_never_logged_audited_or_stored(lite_app, caplog):
    app = lite_app
    caplog.set_level(logging.DEBUG)
    rep, admin = app.rep_token(), app.token("admin-1", "admin")
    expired = app.token("admin-2", "admin", ttl=1)
    forged = issue_token("some-other-secret-0000000000000000", "rep-asha", "field_rep", {}, now=app.clock())
    registered = app.register(rep)
    device = registered["device_token"]
    app.push(device, registered["device_id"])
    app.pull(device, registered["device_id"])
    app.clock.advance(2)
    for token in (expired, forged, "v1.garbage", rep + "x"):
        assert app.request("GET", "/territory", token).status_code == 401
    assert app.request("GET", "/territory", None).status_code == 401
    app.sync("POST", f"/devices/{registered['device_id']}/revoke", admin, {"reason": "lost"})
    assert app.pull(device, registered["device_id"]).status_code == 401
    for _ in range(12):                                     # up to the rate limit and beyond
        app.request("GET", "/territory", forged, address="10.9.9.9")
    app.clock.advance(1000)
    assert app.request("GET", "/territory", rep).status_code == 401     # idle

    secrets = _secrets_of([rep, admin, expired, forged, device])
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert [s for s in secrets if s in logged] == []

    entries = app.entries()
    reasons = {e.detail.get("reason") for e in entries if e.detail.get("event") == "token_refused"}
    assert {"expired", "bad_signature", "malformed", "missing", "revoked", "idle"} <= reasons
    audited = repr(entries)
    assert [s for s in secrets if s in audited] == []

    app.state.engine.dispose()
    database = Path(app.state.config.database_url.removeprefix("sqlite:///"))
    raw = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    assert [s for s in secrets if s.encode() in raw] == []


def test_the_session_table_holds_ids_and_times_only(lite_app):
    app = lite_app
    token = app.rep_token()
    app.register(token)
    with app.state.engine.connect() as conn:
        columns = [c["name"] for c in sa.inspect(conn).get_columns("fs_sessions")]
        rows = conn.execute(sa.text("SELECT * FROM fs_sessions")).all()
    assert columns == ["token_id", "kind", "user_id", "device_id", "issued_at", "expires_at", "last_used_at",
                       "revoked_at", "revoked_by"]
    assert rows and not any(token.split(".")[2] in repr(row) for row in rows)
