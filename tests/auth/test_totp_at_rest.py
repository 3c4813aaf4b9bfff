"""TOTP secrets at rest (fieldsync.auth.totp_secrets): sealed under the key ring's
`directory:totp` key and bound to their user, never in the database file in clear; a sealed
secret moved to another user's row is refused at login (not a 500); rows of a database from
before are sealed at start and on first login without locking anyone out."""

from __future__ import annotations

import base64
import json
import logging
import re

import pytest
import sqlalchemy as sa

from fieldsync.auth import totp
from fieldsync.auth.totp_secrets import SCOPE, is_sealed, seal_plaintext_secrets
from fieldsync.auth.users import add_user, get_user, log_in, set_user
from fieldsync.errors import LoginRefused
from fieldsync.store.directory import USERS, create_user_tables

PASSWORD = "correct horse battery"


def _admin(app, user="admin-meera", **kw):
    return add_user(app.state.engine, app.audit, app.state.model, user, role="admin", password=PASSWORD, totp=True,
                    actor="test", now=app.clock(), keyring=app.state.crypto.keyring, **kw)


def _stored(app, user):
    with app.state.engine.connect() as conn:
        return conn.execute(sa.select(USERS.c.totp_secret).where(USERS.c.user_id == user)).scalar_one()


def _put(app, user, value):
    with app.state.engine.begin() as conn:
        conn.execute(USERS.update().where(USERS.c.user_id == user).values(totp_secret=value))


def _login(app, user, code, password=PASSWORD):
    body = {"user": user, "password": password, **({"totp": code} if code else {})}
    return app.client.post("/api/v1/auth/login", json=body, environ_overrides={"REMOTE_ADDR": "10.0.0.9"})


def _forms(secret: str) -> list[bytes]:
    """The secret as the base32 text (as given, lower-case, padded) and as its raw key bytes."""
    padded = secret + "=" * (-len(secret) % 8)
    return [secret.encode(), secret.lower().encode(), padded.encode(), base64.b32decode(padded)]


def test_the_database_file_holds_no_totp_secret_in_any_form(lite_app, caplog):
    caplog.set_level(logging.DEBUG)
    app = lite_app
    first = _admin(app)
    second = set_user(app.state.engine, app.audit, app.state.model, "admin-meera", totp=True, actor="test",
                      now=app.clock(), keyring=app.state.crypto.keyring)   # re-enrolled: a new secret
    other = add_user(app.state.engine, app.audit, app.state.model, "analyst-joe", role="analyst", password=PASSWORD,
                     totp=True, actor="test", keyring=app.state.crypto.keyring)
    assert len({first, second, other}) == 3
    stored = _stored(app, "admin-meera")
    assert is_sealed(stored) and second not in stored and len(stored) <= USERS.c.totp_secret.type.length
    # the user can still log in with the code of the secret shown once
    assert _login(app, "admin-meera", totp.totp(second, app.clock())).status_code == 200
    audit_text = json.dumps([e.detail for e in app.auth_entries()])
    app.state.engine.dispose()
    database = app.state.config.data_dir / "fieldsync.db"
    raw = b"".join(p.read_bytes() for p in database.parent.glob("fieldsync.db*"))
    assert stored.encode() in raw                   # positive control: the search reads the row
    for secret in (first, second, other):
        for form in _forms(secret):
            assert form not in raw
        assert secret not in caplog.text and secret not in audit_text
    assert stored not in caplog.text and stored not in audit_text
    # the key is the key ring's, wrapped by the key provider: the database holds it wrapped only
    assert [k["scope"] for k in app.state.crypto.keyring.describe()].count(SCOPE) == 1


def test_a_sealed_secret_moved_to_another_users_row_is_refused_not_a_500(auth_app, caplog):
    app = auth_app
    meera, joe = _admin(app), _admin(app, user="admin-joe")
    _put(app, "admin-joe", _stored(app, "admin-meera"))   # someone with write access to the table
    now = app.clock()
    for code in (totp.totp(meera, now), totp.totp(joe, now)):
        r = _login(app, "admin-joe", code)
        assert r.status_code == 401 and r.get_json()["reason"] == "totp_invalid"
    with pytest.raises(LoginRefused) as refused:
        log_in(app.state.engine, "admin-joe", PASSWORD, totp.totp(meera, now), now=now,
               keyring=app.state.crypto.keyring)
    assert refused.value.reason == "totp_invalid"
    assert "admin-joe" in caplog.text and "does not open" in caplog.text and meera not in caplog.text
    [failed, *_] = [e for e in app.auth_entries("login_failed") if e.actor == "admin-joe"]
    assert failed.detail["reason"] == "totp_invalid"
    # an altered ciphertext, and a key id this database does not hold: refused the same way
    stored = _stored(app, "admin-meera")
    body = base64.b64decode(stored.split(".", 2)[2])
    flipped = stored.split(".", 2)
    _put(app, "admin-joe", ".".join(flipped[:2] + [base64.b64encode(body[:-1] + bytes([body[-1] ^ 1])).decode()]))
    assert _login(app, "admin-joe", totp.totp(joe, now)).get_json()["reason"] == "totp_invalid"
    _put(app, "admin-joe", ".".join([flipped[0], "0123456789ab", flipped[2]]))
    assert _login(app, "admin-joe", totp.totp(joe, now)).get_json()["reason"] == "totp_invalid"
    # meera's own row still works, and joe is back after a new enrolment
    assert _login(app, "admin-meera", totp.totp(meera, now)).status_code == 200
    fresh = set_user(app.state.engine, app.audit, app.state.model, "admin-joe", totp=True, actor="test",
                     keyring=app.state.crypto.keyring)
    assert _login(app, "admin-joe", totp.totp(fresh, now)).status_code == 200


def _users_cli(app, *argv, input=None):
    from click.testing import CliRunner
    from fieldsync.cli import fieldsync
    where = ["--database-url", app.state.config.database_url, "--data-dir", str(app.state.config.data_dir)]
    return CliRunner().invoke(fieldsync, ["users", *argv, *where], input=input)


def test_a_cli_enrolled_user_logs_in_with_totp_through_the_api(lite_app):
    app = lite_app
    done = _users_cli(app, "add", "admin-meera", "--role", "admin", "--totp", "--password-stdin",
                      input=PASSWORD + "\n")
    assert done.exit_code == 0, done.output
    secret = re.search(r"secret: ([A-Z2-7]+)", done.output).group(1)
    stored = _stored(app, "admin-meera")
    assert is_sealed(stored) and secret not in stored
    assert _login(app, "admin-meera", None).get_json()["reason"] == "totp_required"
    r = _login(app, "admin-meera", totp.totp(secret, app.clock()))
    assert r.status_code == 200 and r.get_json()["role"] == "admin"
    assert app.request("GET", "/territory", r.get_json()["token"]).status_code == 200
    # re-enrolled by the CLI: the old secret's codes stop working, the new one's work
    app.clock.advance(30)
    done = _users_cli(app, "set", "admin-meera", "--totp")
    assert done.exit_code == 0, done.output
    renewed = re.search(r"secret: ([A-Z2-7]+)", done.output).group(1)
    assert _login(app, "admin-meera", totp.totp(secret, app.clock())).get_json()["reason"] == "totp_invalid"
    assert _login(app, "admin-meera", totp.totp(renewed, app.clock())).status_code == 200


def test_a_plaintext_row_of_before_is_sealed_at_its_first_login(auth_app):
    app = auth_app
    _admin(app)
    old = totp.new_secret()
    _put(app, "admin-meera", old)                  # as a database from before sealing stored it
    assert get_user(app.state.engine, "admin-meera").totp
    r = _login(app, "admin-meera", totp.totp(old, app.clock()))
    assert r.status_code == 200                    # not locked out
    stored = _stored(app, "admin-meera")
    assert is_sealed(stored) and old not in stored
    app.clock.advance(30)
    assert _login(app, "admin-meera", totp.totp(old, app.clock())).status_code == 200   # the same app secret
    # a wrong code does not seal (nor change) a plaintext row
    _put(app, "admin-meera", old)
    code = totp.totp(old, app.clock() + 90)
    assert _login(app, "admin-meera", code).get_json()["reason"] == "totp_invalid"
    assert _stored(app, "admin-meera") == old


def test_plaintext_rows_are_sealed_at_server_start(lite_app, example_model, clock):
    from auth_support import SECRET
    from fieldsync.api import create_app
    _admin(lite_app)
    plain = totp.new_secret()
    _put(lite_app, "admin-meera", plain)          # as a database from before sealing stored it
    add_user(lite_app.state.engine, lite_app.audit, lite_app.state.model, "rep-asha", role="field_rep",
             password=PASSWORD, attributes={"territory_ids": []}, actor="test")
    lite_app.state.engine.dispose()
    # the server started again on that database
    restarted = create_app({"SECRET_KEY": SECRET, "DATA_DIR": str(lite_app.state.config.data_dir),
                            "SYNC_LISTENERS": 0}, model=example_model, auth_clock=clock)
    state = restarted.extensions["fieldsync"]
    try:
        with state.engine.connect() as conn:
            rows = dict(conn.execute(sa.select(USERS.c.user_id, USERS.c.totp_secret)).all())
        assert is_sealed(rows["admin-meera"]) and plain not in rows["admin-meera"] and rows["rep-asha"] is None
        assert seal_plaintext_secrets(state.engine, state.crypto.keyring) == 0   # done once
        r = restarted.test_client().post("/api/v1/auth/login", json={
            "user": "admin-meera", "password": PASSWORD, "totp": totp.totp(plain, clock())})
        assert r.status_code == 200                # the authenticator app's secret still works
    finally:
        state.sync.close()
        state.engine.dispose()


def test_a_totp_column_of_before_is_widened_for_the_sealed_form(auth_app):
    engine = auth_app.state.engine
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE fs_users ALTER COLUMN totp_secret TYPE VARCHAR(64)"))
    create_user_tables(engine)
    create_user_tables(engine)   # again: nothing to do
    _admin(auth_app)             # a sealed secret (~96 characters) fits
    assert len(_stored(auth_app, "admin-meera")) > 64
    if engine.dialect.name == "postgresql":
        [column] = [c for c in sa.inspect(engine).get_columns("fs_users") if c["name"] == "totp_secret"]
        assert column["type"].length == 255


def test_enrolling_or_checking_a_second_factor_without_the_key_ring_is_a_programming_error(auth_app):
    with pytest.raises(TypeError, match="keyring"):
        add_user(auth_app.state.engine, auth_app.audit, auth_app.state.model, "admin-meera", role="admin",
                 password=PASSWORD, totp=True, actor="test")
    with auth_app.state.engine.connect() as conn:
        assert conn.execute(sa.select(USERS.c.user_id)).all() == []   # nothing half-added
    _admin(auth_app)
    with pytest.raises(TypeError, match="keyring"):
        log_in(auth_app.state.engine, "admin-meera", PASSWORD, "123456")
