"""The SDK registers with the user's token and syncs with the device token it gets back: sync goes
on while the user's token is idle, a refused device token falls back to the user's token and is
replaced at the next cycle, a new user token gets a fresh device token, a revoked device raises
DeviceRevoked with its outbox kept. Against the real server in process, auth clock injected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from auth_support import token_id
from fieldsync.client import Client
from fieldsync.errors import DeviceRevoked
from fieldsync.client.transport import WsgiTransport

ROOT = Path(__file__).resolve().parents[2]


class RecordingTransport(WsgiTransport):
    """Remembers (path, bearer token) of every request."""

    def __init__(self, app):
        super().__init__(app)
        self.sent: list[tuple[str, str]] = []

    def _exchange(self, method, path, headers, body):
        self.sent.append((path.split("?")[0].removeprefix("/api/v1/sync"),
                          headers.get("Authorization", "").removeprefix("Bearer ")))
        return super()._exchange(method, path, headers, body)


class UserTokens:
    """The app's sign-in: a callable token source whose token the test replaces."""

    def __init__(self, auth_app, **attributes):
        self.auth_app = auth_app
        self.current = ""
        self.sign_in(**attributes)

    def sign_in(self, **attributes) -> str:
        attributes.setdefault("territory_ids", [self.auth_app.territory["id"]])
        self.current = self.auth_app.token("rep-asha", "field_rep", **attributes)
        return self.current

    def __call__(self) -> str:
        return self.current


@pytest.fixture
def device(make_app, tmp_path):
    """(auth_app, client, transport, user tokens) with a device idle limit of 600 s, below the
    user's 900 s, so each token can be made idle alone."""
    app = make_app(DEVICE_TOKEN_IDLE_SECONDS=600)
    transport = RecordingTransport(app.app)
    tokens = UserTokens(app)
    schema = json.loads((ROOT / "generated" / "device" / "schema.json").read_text())
    client = Client(tmp_path / "device.db", transport, tokens, schema=schema)
    yield app, client, transport, tokens
    client.close()


def _visit(app) -> dict:
    return {"retailer_id": app.retailer["id"], "territory_id": app.territory["id"],
            "visited_at": "2026-11-26T15:00:00Z", "purpose": "order"}


def test_the_sdk_registers_with_the_user_token_then_syncs_with_the_device_token(device):
    app, client, transport, tokens = device
    client.insert("visit", _visit(app))
    client.sync()
    paths = [p for p, _ in transport.sent]
    assert paths[0] == "/devices" and "/push" in paths and "/pull" in paths
    assert transport.sent[0][1] == tokens.current
    device_tokens = {t for p, t in transport.sent[1:]}
    assert len(device_tokens) == 1 and tokens.current not in device_tokens
    device_token = device_tokens.pop()
    assert app.session_row(token_id(device_token))["kind"] == "device"


def test_sync_goes_on_while_the_user_token_is_idle(device):
    app, client, transport, tokens = device
    client.sync()
    app.clock.advance(500)
    client.sync()
    app.clock.advance(500)               # the user token is 1000 s idle; the device token 500 s
    client.insert("visit", _visit(app))
    transport.sent.clear()
    report = client.sync()
    assert report.pushed == 1 and client.status().pending == 0
    assert "/devices" not in [p for p, _ in transport.sent]


def test_a_refused_device_token_falls_back_to_the_user_token_and_is_replaced(device):
    app, client, transport, tokens = device
    client.sync()
    first_device_token = transport.sent[-1][1]
    app.clock.advance(700)               # device token idle (600), user token not (900)
    client.insert("visit", _visit(app))
    transport.sent.clear()
    assert client.sync().pushed == 1
    sent = transport.sent
    assert sent[0] == ("/push", first_device_token)             # refused: idle
    assert sent[1] == ("/push", tokens.current)                 # the same request with the user's token
    transport.sent.clear()
    client.sync()                                               # the next cycle gets a new device token
    assert transport.sent[0] == ("/devices", tokens.current)
    assert transport.sent[-1][1] not in (first_device_token, tokens.current)


def test_a_new_user_token_gets_a_device_token_with_the_new_attributes(device):
    app, client, transport, tokens = device
    client.sync()
    other = app.ok("POST", "/territory", app.token("admin-1", "admin"), {"code": "E-1", "name": "East",
                                                                        "region": "east"})
    tokens.sign_in(territory_ids=[app.territory["id"], other["id"]])
    transport.sent.clear()
    client.sync()
    assert transport.sent[0] == ("/devices", tokens.current)
    from fieldsync.auth.tokens import unverified_claims
    assert unverified_claims(transport.sent[-1][1])["attrs"]["territory_ids"] == [app.territory["id"], other["id"]]


def test_a_revoked_device_raises_device_revoked_and_keeps_its_outbox(device):
    app, client, transport, tokens = device
    client.sync()
    device_id = client.status().device_id
    r = app.sync("POST", f"/devices/{device_id}/revoke", app.token("admin-1", "admin"), {"reason": "lost"})
    assert r.status_code == 200
    client.insert("visit", _visit(app))
    with pytest.raises(DeviceRevoked):
        client.sync()
    status = client.status()
    assert (status.pending, status.sent, status.quarantined) == (0, 1, 0)   # kept, to be resent as is
