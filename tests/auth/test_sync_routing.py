"""docs/protocol.md §2.5: a path under /api/v1/sync/ that is no sync endpoint is 404 `not-found`,
and a real sync endpoint asked with a method it does not take is 405 `method-not-allowed` with
`Allow` — with a device token, a user token or none (never REST's device-token refusal)."""

from __future__ import annotations

import pytest

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _sync_rules(app):
    return [r for r in app.url_map.iter_rules()
            if r.endpoint.startswith("fieldsync_sync.") and r.endpoint != "fieldsync_sync.not_an_endpoint"]


def _concrete(rule: str) -> str:
    return rule.replace("<device_id>", "0192c1d4-0b7e-7a21-8f00-3c2d9b1a0042")


@pytest.fixture
def tokens(lite_app):
    rep = lite_app.rep_token()
    return {"none": None, "user": rep, "device": lite_app.register(rep)["device_token"]}


def test_every_sync_route_answers_405_with_allow_for_other_methods(lite_app, tokens):
    rules = _sync_rules(lite_app.app)
    assert len(rules) >= 10
    by_path: dict[str, set[str]] = {}
    for rule in rules:     # one path may have several rules (GET and POST /devices)
        by_path.setdefault(rule.rule, set()).update(rule.methods)
    checked = 0
    for path, allowed in by_path.items():
        for method in METHODS:
            if method in allowed:
                continue
            for kind, token in tokens.items():
                headers = {"Fieldsync-Protocol": "1"}
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                r = lite_app.client.open(_concrete(path), method=method, headers=headers)
                body = r.get_json()
                assert r.status_code == 405, (method, path, kind, body)
                assert body["type"] == "https://fieldsync.dev/problems/method-not-allowed"
                assert set(r.headers["Allow"].split(", ")) == allowed, (method, path)
                assert r.headers["Fieldsync-Protocol"] == "1"
                checked += 1
    assert checked >= 30


@pytest.mark.parametrize("path", ["/api/v1/sync/nothing", "/api/v1/sync/", "/api/v1/sync/push/more",
                                  "/api/v1/sync/devices/a/b/c", "/api/v1/sync/capabilities/x"])
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE", "OPTIONS"])
def test_unknown_sync_paths_are_404(lite_app, tokens, path, method):
    for kind, token in tokens.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = lite_app.client.open(path, method=method, headers=headers, json={})
        body = r.get_json()
        assert r.status_code == 404, (kind, body)
        assert body["type"] == "https://fieldsync.dev/problems/not-found", (kind, body)
        assert body["instance"] == path
