"""The user directory (fieldsync.auth.users): adding, checking and changing users, their scrypt
hashes, TOTP (RFC 6238), the per-user revocation, and `fieldsync users`. On SQLite and
PostgreSQL where a database is involved; the auth clock is injected (no sleeps)."""

from __future__ import annotations

import base64
import json

import pytest
import sqlalchemy as sa

from fieldsync.auth import totp
from fieldsync.auth.users import (add_user, check_attributes, disable_user, enable_user, get_user, list_users,
                                  log_in, revoke_tokens, set_password, set_user, verify_password)
from fieldsync.errors import Conflict, LoginRefused, NotFound
from fieldsync.store.directory import USERS

PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"
PASSWORD = "correct horse battery"


def _add(app, user="rep-asha", role="field_rep", password=PASSWORD, **kw):
    kw.setdefault("attributes", {"territory_ids": [PUNE]} if role == "field_rep" else {})
    kw.setdefault("keyring", app.state.crypto.keyring)   # seals an enrolled TOTP secret
    return add_user(app.state.engine, app.audit, app.state.model, user, role=role, password=password,
                    actor="test", now=app.clock(), **kw)


# -- RFC 6238 ---------------------------------------------------------------------------------------

RFC_SECRET = base64.b32encode(b"12345678901234567890").decode()


@pytest.mark.parametrize("at, code", [(59, "287082"), (1111111109, "081804"), (1234567890, "005924"),
                                      (2000000000, "279037")])
def test_totp_matches_the_rfc_6238_vectors(at, code):
    assert totp.totp(RFC_SECRET, at) == code      # the RFC's 8-digit values, last 6 digits (SHA-1)


def test_a_totp_code_is_accepted_one_step_either_side_and_no_further():
    code = totp.totp(RFC_SECRET, 1_800_000_000)
    for offset in (-30, 0, 30):
        assert totp.matching_step(RFC_SECRET, code, 1_800_000_000 + offset) == 1_800_000_000 // 30
    assert totp.matching_step(RFC_SECRET, code, 1_800_000_000 + 60) is None
    assert totp.matching_step(RFC_SECRET, "12345", 1_800_000_000) is None
    assert totp.provisioning_uri(RFC_SECRET, "admin-meera").startswith("otpauth://totp/fieldsync:admin-meera?")


# -- the directory ---------------------------------------------------------------------------------

def test_a_user_is_added_and_their_password_verified(auth_app):
    assert _add(auth_app) is None
    user = get_user(auth_app.state.engine, "rep-asha")
    assert (user.role, dict(user.attributes), user.enabled, user.totp) == ("field_rep", {"territory_ids": [PUNE]},
                                                                          True, False)
    assert verify_password(auth_app.state.engine, "rep-asha", PASSWORD) == user
    assert verify_password(auth_app.state.engine, "rep-asha", PASSWORD + "!") is None
    assert verify_password(auth_app.state.engine, "nobody", PASSWORD) is None
    assert [u.user_id for u in list_users(auth_app.state.engine)] == ["rep-asha"]
    with pytest.raises(Conflict):
        _add(auth_app)
    [entry] = auth_app.auth_entries("user_added")
    assert entry.detail["attributes"] == ["territory_ids"] and PASSWORD not in json.dumps(entry.detail)


def test_only_a_scrypt_hash_is_stored_never_the_password(lite_app, tmp_path):
    _add(lite_app)
    with lite_app.state.engine.connect() as conn:
        stored = conn.execute(sa.select(USERS.c.password_hash)).scalar()
    assert stored.startswith("scrypt:") and PASSWORD not in stored
    lite_app.state.engine.dispose()
    database = lite_app.state.config.data_dir / "fieldsync.db"
    raw = b"".join(p.read_bytes() for p in database.parent.glob("fieldsync.db*"))
    assert b"scrypt:" in raw and PASSWORD.encode() not in raw


@pytest.mark.parametrize("attributes, message", [
    ({"shoe_size": "42"}, "not declared"),
    ({"territory_ids": "not-a-list"}, "a list of uuid"),
    ({"territory_ids": ["not-a-uuid"]}, "a list of uuid"),
    ({"region": 7}, "a string"),
    ({"role": "admin"}, "not declared"),
])
def test_attributes_are_checked_against_roles_yaml(auth_app, attributes, message):
    with pytest.raises(ValueError, match=message):
        check_attributes(auth_app.state.model, attributes)
    with pytest.raises(ValueError, match=message):
        _add(auth_app, attributes=attributes)
    assert list_users(auth_app.state.engine) == []


def test_a_bad_role_password_or_id_is_refused(auth_app):
    with pytest.raises(ValueError, match="unknown role"):
        _add(auth_app, role="pirate")
    with pytest.raises(ValueError, match="password"):
        _add(auth_app, password="short")
    with pytest.raises(ValueError, match="user id"):
        _add(auth_app, user=" padded ")
    with pytest.raises(ValueError, match="second factor"):
        _add(auth_app, totp=True)          # not for field reps


def test_a_disabled_user_cannot_log_in_and_can_be_enabled(auth_app):
    _add(auth_app)
    engine = auth_app.state.engine
    assert disable_user(engine, auth_app.audit, "rep-asha", actor="test") is True
    assert disable_user(engine, auth_app.audit, "rep-asha", actor="test") is False
    with pytest.raises(LoginRefused) as refused:
        log_in(engine, "rep-asha", PASSWORD)
    assert refused.value.reason == "disabled"
    with pytest.raises(LoginRefused) as refused:
        log_in(engine, "rep-asha", "wrong password!")
    assert refused.value.reason == "invalid_credentials"   # a disabled user is named only to the right password
    assert enable_user(engine, auth_app.audit, "rep-asha", actor="test") is True
    assert log_in(engine, "rep-asha", PASSWORD).user_id == "rep-asha"
    assert [e.detail["event"] for e in auth_app.auth_entries() if e.detail.get("user") == "rep-asha"] == \
        ["user_added", "user_disabled", "user_enabled"]
    with pytest.raises(NotFound):
        disable_user(engine, auth_app.audit, "nobody", actor="test")


def test_a_second_factor_is_needed_once_enrolled_and_a_code_is_used_once(auth_app):
    secret = _add(auth_app, user="admin-meera", role="admin", totp=True)
    engine, now, keys = auth_app.state.engine, auth_app.clock(), auth_app.state.crypto.keyring
    assert get_user(engine, "admin-meera").totp
    with pytest.raises(LoginRefused) as refused:
        log_in(engine, "admin-meera", PASSWORD, now=now, keyring=keys)
    assert refused.value.reason == "totp_required"
    with pytest.raises(LoginRefused) as refused:
        log_in(engine, "admin-meera", PASSWORD, "000000" if totp.totp(secret, now) != "000000" else "111111", now=now,
               keyring=keys)
    assert refused.value.reason == "totp_invalid"
    code = totp.totp(secret, now)
    assert log_in(engine, "admin-meera", PASSWORD, code, now=now, keyring=keys).role == "admin"
    with pytest.raises(LoginRefused):
        log_in(engine, "admin-meera", PASSWORD, code, now=now, keyring=keys)      # replayed
    assert log_in(engine, "admin-meera", PASSWORD, totp.totp(secret, now + 30), now=now + 30, keyring=keys)
    # moved to a role without a second factor: the enrolment goes with it
    set_user(engine, auth_app.audit, auth_app.state.model, "admin-meera", role="supervisor", actor="test")
    assert not get_user(engine, "admin-meera").totp


def test_changes_revoke_the_users_tokens_and_sessions(auth_app):
    _add(auth_app)
    engine, model = auth_app.state.engine, auth_app.state.model
    old = auth_app.token("rep-asha", "field_rep", territory_ids=[PUNE])
    assert auth_app.request("GET", "/retailer", old).status_code == 200
    assert set_user(engine, auth_app.audit, model, "rep-asha", attributes={"territory_ids": [PUNE]},
                    actor="test", now=auth_app.clock()) is None   # no change, nothing revoked
    assert auth_app.request("GET", "/retailer", old).status_code == 200
    set_user(engine, auth_app.audit, model, "rep-asha", attributes={"territory_ids": []}, actor="test",
             now=auth_app.clock())
    r = auth_app.request("GET", "/retailer", old)
    assert r.status_code == 401 and r.get_json()["reason"] == "revoked"
    fresh = auth_app.token("rep-asha", "field_rep", territory_ids=[])   # issued after: accepted
    assert auth_app.request("GET", "/retailer", fresh).status_code == 200
    auth_app.clock.advance(5)
    set_password(engine, auth_app.audit, model, "rep-asha", "another good password", actor="test",
                 now=auth_app.clock())
    assert auth_app.request("GET", "/retailer", fresh).status_code == 401
    [changed, *_] = auth_app.auth_entries("user_changed")
    assert changed.detail["changed"] == ["attributes"] and changed.detail["tokens_revoked"] is True
    assert auth_app.auth_entries("user_changed")[-1].detail["changed"] == ["password"]


def test_revoke_tokens_refuses_the_users_tokens_and_changes_nothing_else(auth_app):
    _add(auth_app)
    engine = auth_app.state.engine
    old = auth_app.token("rep-asha", "field_rep", territory_ids=[PUNE])
    assert auth_app.request("GET", "/retailer", old).status_code == 200
    before = get_user(engine, "rep-asha")
    auth_app.clock.advance(1)
    revoke_tokens(engine, auth_app.audit, "rep-asha", actor="ada", channel="admin", now=auth_app.clock())
    r = auth_app.request("GET", "/retailer", old)
    assert r.status_code == 401 and r.get_json()["reason"] == "revoked"
    after = get_user(engine, "rep-asha")
    assert (after.role, after.attributes, after.enabled) == (before.role, before.attributes, before.enabled)
    assert after.tokens_after == int(auth_app.clock())
    assert verify_password(engine, "rep-asha", PASSWORD) is not None
    [entry] = auth_app.auth_entries("tokens_revoked")
    assert entry.actor == "ada" and entry.channel == "admin" and entry.detail["user"] == "rep-asha"
    with pytest.raises(NotFound):
        revoke_tokens(engine, auth_app.audit, "nobody", actor="ada")


def test_a_token_of_a_disabled_user_is_refused_even_unused(auth_app):
    _add(auth_app)
    unused = auth_app.token("rep-asha", "field_rep", territory_ids=[PUNE])
    auth_app.clock.advance(1)
    disable_user(auth_app.state.engine, auth_app.audit, "rep-asha", actor="test", now=auth_app.clock())
    r = auth_app.request("GET", "/retailer", unused)
    assert r.status_code == 401 and r.get_json()["reason"] == "revoked"
    assert "disabled" in r.get_json()["detail"]


def test_a_user_outside_the_directory_keeps_working_with_token_create_tokens(auth_app):
    token = auth_app.token("admin-1", "admin")
    assert auth_app.request("GET", "/territory", token).status_code == 200


# -- fieldsync users ------------------------------------------------------------------------------

def _users_cli(app, *argv, input=None):
    from click.testing import CliRunner
    from fieldsync.cli import fieldsync
    where = ["--database-url", app.state.config.database_url, "--data-dir", str(app.state.config.data_dir)]
    return CliRunner().invoke(fieldsync, ["users", *argv, *where], input=input)


def test_the_cli_adds_changes_disables_and_lists_users(lite_app):
    done = _users_cli(lite_app, "add", "rep-17", "--role", "field_rep", "--attr", f"territory_ids={PUNE}",
                      "--password-stdin", input=PASSWORD + "\n")
    assert done.exit_code == 0, done.output
    assert "user rep-17 added (role field_rep)" in done.output and PASSWORD not in done.output
    assert verify_password(lite_app.state.engine, "rep-17", PASSWORD).attributes == {"territory_ids": [PUNE]}
    # from the hidden prompt, asked twice
    done = _users_cli(lite_app, "add", "admin-meera", "--role", "admin", "--totp",
                      input=f"{PASSWORD}\n{PASSWORD}\n")
    assert done.exit_code == 0, done.output
    assert "otpauth://totp/fieldsync:admin-meera?secret=" in done.output and PASSWORD not in done.output
    done = _users_cli(lite_app, "add", "rep-18", "--role", "field_rep", "--attr", "shoe_size=42",
                      "--password-stdin", input=PASSWORD + "\n")
    assert done.exit_code == 2 and "shoe_size" in done.output
    done = _users_cli(lite_app, "add", "rep-17", "--role", "field_rep", "--password-stdin", input=PASSWORD + "\n")
    assert done.exit_code == 1 and "exists" in done.output

    done = _users_cli(lite_app, "set", "rep-17", "--attr", "region=west")
    assert done.exit_code == 0 and "their tokens are revoked" in done.output
    assert get_user(lite_app.state.engine, "rep-17").attributes == {"territory_ids": [PUNE], "region": "west"}
    done = _users_cli(lite_app, "set", "rep-17", "--unset-attr", "region", "--reset-password", "--password-stdin",
                      input="a brand new password\n")
    assert done.exit_code == 0, done.output
    assert verify_password(lite_app.state.engine, "rep-17", "a brand new password").attributes == \
        {"territory_ids": [PUNE]}
    assert _users_cli(lite_app, "set", "nobody", "--role", "admin").exit_code == 1

    assert _users_cli(lite_app, "disable", "rep-17").exit_code == 0
    done = _users_cli(lite_app, "list", "--json")
    assert done.exit_code == 0
    listed = {u["user"]: u for u in json.loads(done.output)}
    assert listed["rep-17"]["enabled"] is False and listed["admin-meera"]["totp"] is True
    assert _users_cli(lite_app, "enable", "rep-17").exit_code == 0
    table = _users_cli(lite_app, "list").output
    assert table.splitlines()[0].split() == ["user", "role", "enabled", "totp", "attributes"]
    assert "scrypt" not in table
    events = [e.detail["event"] for e in lite_app.auth_entries() if e.channel == "cli"]
    assert events == ["user_added", "user_added", "user_changed", "user_changed", "user_disabled", "user_enabled"]
