"""Device tokens and their revocation: registration issues a token bound to the device; an admin
revokes a device (API or CLI) and its next push and pull are refused while other devices sync
on; `fieldsync token revoke` refuses one token. Each step is audited."""

from __future__ import annotations

import pytest

from auth_support import SECRET, token_id
from fieldsync.auth.tokens import verify_token
from fieldsync.cli import main


def _reason(response) -> str | None:
    return (response.get_json() or {}).get("reason")


def test_registration_issues_a_device_token_bound_to_the_device(auth_app):
    rep = auth_app.rep_token()
    registered = auth_app.register(rep)
    principal = verify_token(SECRET, registered["device_token"], now=auth_app.clock())
    assert (principal.device_id, principal.user_id, principal.role) == (registered["device_id"], "rep-asha", "field_rep")
    assert principal.attributes == {"territory_ids": [auth_app.territory["id"]]}
    assert principal.expires_at == int(auth_app.clock()) + 30 * 86400
    assert registered["device_token_expires_at"].startswith("2027-")
    issued = auth_app.auth_entries("device_token_issued")
    assert [(e.actor, e.device, e.detail["token_id"]) for e in issued] == \
        [("rep-asha", registered["device_id"], principal.token_id)]
    # registering again (same install) answers the same device with a new token
    again = auth_app.register(rep)
    assert again["device_id"] == registered["device_id"] and again["device_token"] != registered["device_token"]


def test_a_device_token_syncs_its_own_device_only(lite_app):
    app = lite_app
    rep = app.rep_token()
    first = app.register(rep)
    second = app.register(rep, install="install-2")
    assert app.push(first["device_token"], first["device_id"]).status_code == 202
    assert app.pull(first["device_token"], first["device_id"]).status_code == 200
    r = app.push(first["device_token"], second["device_id"])
    assert r.status_code == 403 and r.get_json()["type"].endswith("/device-token-mismatch")
    assert app.sync("GET", f"/devices/{second['device_id']}", first["device_token"]).status_code == 404
    assert app.sync("GET", f"/devices/{first['device_id']}", first["device_token"]).status_code == 200


def test_a_device_token_cannot_register_list_revoke_or_use_the_entity_api(lite_app):
    app = lite_app
    admin = app.token("admin-1", "admin")
    admin_device = app.register(admin)["device_token"]
    for r in (app.sync("POST", "/devices", admin_device, {"install_id": "x", "schema_version": 1}),
              app.sync("GET", "/devices", admin_device),
              app.sync("POST", "/devices/whatever/revoke", admin_device, {"reason": "r"}),
              app.request("GET", "/territory", admin_device),
              app.request("GET", "/admin/workers", admin_device)):
        assert r.status_code == 403 and r.get_json()["type"].endswith("/device-token-not-allowed"), r.get_json()


def test_a_revoked_device_is_refused_and_other_devices_are_not(auth_app):
    rep, admin = auth_app.rep_token(), auth_app.token("admin-1", "admin")
    lost = auth_app.register(rep)
    kept = auth_app.register(rep, install="install-2")
    colleague = auth_app.register(auth_app.rep_token("rep-bina"), install="install-3")
    assert auth_app.push(lost["device_token"], lost["device_id"]).status_code == 202

    r = auth_app.sync("POST", f"/devices/{lost['device_id']}/revoke", admin, {"reason": "phone stolen on the bus"})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "revoked" and r.get_json()["already_revoked"] is False

    push, pull = auth_app.push(lost["device_token"], lost["device_id"], seq=2), auth_app.pull(lost["device_token"],
                                                                                              lost["device_id"])
    assert (push.status_code, _reason(push)) == (401, "revoked")
    assert (pull.status_code, _reason(pull)) == (401, "revoked")
    # a token of the device issued before it was ever used is refused as well
    with_user = auth_app.push(rep, lost["device_id"], seq=2)
    assert with_user.status_code == 403 and with_user.get_json()["type"].endswith("/device-revoked")
    assert auth_app.sync("POST", "/devices", rep, {"install_id": "install-1", "schema_version": 1}).status_code == 403
    # the user's other device and another user's device sync on
    assert auth_app.push(kept["device_token"], kept["device_id"]).status_code == 202
    assert auth_app.pull(kept["device_token"], kept["device_id"]).status_code == 200
    assert auth_app.push(colleague["device_token"], colleague["device_id"]).status_code == 202

    revoked = auth_app.auth_entries("device_revoked")
    assert len(revoked) == 1
    entry = revoked[0]
    assert (entry.action, entry.actor, entry.channel, entry.device, entry.has_reason) == \
        ("admin", "admin-1", "admin", lost["device_id"], True)
    decrypted = [e for e in auth_app.audit.entries(decrypt_reasons=True) if e.detail.get("event") == "device_revoked"]
    assert decrypted[0].reason == "phone stolen on the bus"
    refused = [e for e in auth_app.auth_entries("token_refused") if e.detail["reason"] == "revoked"]
    assert {e.device for e in refused} == {lost["device_id"]} and len(refused) == 2

    again = auth_app.sync("POST", f"/devices/{lost['device_id']}/revoke", admin, {"reason": "twice"})
    assert again.status_code == 200 and again.get_json()["already_revoked"] is True
    assert len(auth_app.auth_entries("device_revoked")) == 1


def test_revoking_needs_an_admin_a_reason_and_a_known_device(lite_app):
    app = lite_app
    device_id = app.register(app.rep_token())["device_id"]
    admin = app.token("admin-1", "admin")
    r = app.sync("POST", f"/devices/{device_id}/revoke", app.token("sup-1", "supervisor"), {"reason": "x"})
    assert r.status_code == 403
    for body in ({}, {"reason": "   "}, {"reason": "x" * 501}):
        r = app.sync("POST", f"/devices/{device_id}/revoke", admin, body)
        assert r.status_code == 400 and r.get_json()["errors"][0]["field"] == "reason"
    r = app.sync("POST", "/devices/no-such-device/revoke", admin, {"reason": "x"})
    assert r.status_code == 404 and r.get_json()["type"].endswith("/unknown-device")
    assert app.auth_entries("device_revoked") == []


def _cli(app, *argv: str) -> int:
    url = app.state.config.database_url
    return main([*argv[:2], *argv[2:], "--database-url", url, "--data-dir", str(app.state.config.data_dir)])


def test_the_cli_revokes_a_device_and_a_token(lite_app, capsys, monkeypatch):
    app = lite_app
    monkeypatch.setenv("FIELDSYNC_SECRET_KEY", SECRET)
    registered = app.register(app.rep_token())
    assert _cli(app, "devices", "revoke", registered["device_id"], "--reason", "left the company") == 0
    assert "revoked" in capsys.readouterr().out
    assert _reason(app.pull(registered["device_token"], registered["device_id"])) == "revoked"
    entry = app.auth_entries("device_revoked")[0]
    assert entry.channel == "cli" and entry.actor.endswith("(cli)") and entry.has_reason
    assert _cli(app, "devices", "revoke", "nope", "--reason", "x") == 1

    admin = app.token("admin-1", "admin")
    assert app.request("GET", "/territory", admin).status_code == 200
    unused = app.token("admin-2", "admin")
    assert _cli(app, "token", "revoke", token_id(admin)) == 0
    assert _cli(app, "token", "revoke", token_id(unused), "--reason", "printed in a ticket") == 0
    assert "not used yet" in capsys.readouterr().out
    assert _reason(app.request("GET", "/territory", admin)) == "revoked"
    assert _reason(app.request("GET", "/territory", unused)) == "revoked"
    other = app.token("admin-1", "admin")     # the same user's next token is not affected
    assert app.request("GET", "/territory", other).status_code == 200
    events = {e.detail["token_id"]: e for e in app.auth_entries("token_revoked")}
    assert set(events) == {token_id(admin), token_id(unused)}
    assert events[token_id(admin)].detail["token_user"] == "admin-1" and not events[token_id(admin)].has_reason
    assert events[token_id(unused)].has_reason


def test_token_create_prints_the_token_id(tmp_path, capsys, monkeypatch):
    from fieldsync.auth.tokens import unverified_claims
    monkeypatch.setenv("FIELDSYNC_SECRET_KEY", SECRET)
    monkeypatch.setenv("FIELDSYNC_DATA_DIR", str(tmp_path))
    assert main(["token", "create", "--user", "rep-1", "--role", "field_rep"]) == 0
    out, err = capsys.readouterr()
    assert f"token id {unverified_claims(out.strip())['jti']}" in err


@pytest.mark.parametrize("command", [["devices", "revoke", "d1"], ["token", "revoke"]])
def test_the_revoke_commands_need_their_arguments(command, capsys):
    assert main(command) == 2
    assert "Missing" in capsys.readouterr().err


def test_registering_again_supersedes_the_devices_earlier_device_tokens(auth_app):
    """protocol §3.1: every registration answers a new device token and refuses the device's
    earlier ones (401 `superseded`, used or not), so a token with the user's old attributes
    (an old territory) stops working; other devices' tokens and the user's token are untouched."""
    app = auth_app
    rep = app.rep_token()
    first = app.register(rep)
    assert app.pull(first["device_token"], first["device_id"]).status_code == 200   # used
    unused = app.register(rep)["device_token"]                                     # never used
    other = app.register(rep, install="install-2")
    newest = app.register(rep)
    assert newest["device_id"] == first["device_id"]
    for old in (first["device_token"], unused):
        r = app.pull(old, first["device_id"])
        assert r.status_code == 401 and _reason(r) == "superseded", r.get_json()
    assert app.pull(newest["device_token"], first["device_id"]).status_code == 200
    assert app.pull(other["device_token"], other["device_id"]).status_code == 200
    assert app.pull(rep, first["device_id"]).status_code == 200
    refused = [e for e in app.auth_entries("token_refused") if e.detail["reason"] == "superseded"]
    assert {e.detail["token_id"] for e in refused} == {token_id(first["device_token"]), token_id(unused)}
