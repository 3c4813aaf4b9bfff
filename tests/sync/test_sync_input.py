"""No client input produces a 5xx on the sync endpoints (issue 10, item 3).

Push, pull, results, ack, registration and revocation with deep JSON, integers past 64 bits,
Unicode digits, out-of-range datetimes, NUL characters and odd refetch entries: each is a
4xx problem naming the member (or, for a mutation's field values, which the protocol checks
when the batch is applied, a permanent rejection naming the field), and nothing is written.
Then hypothesis throws arbitrary JSON and bytes at push, pull and REST create.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from fieldsync.untrusted import MAX_JSON_DEPTH

PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"
PROBLEM = "application/problem+json"


def _state_of(server) -> dict[str, list]:
    """Every row of every table but the read bookkeeping (audit trail, sessions): what no refused
    request may change. Device contact times are left out (any authenticated sync touches them)."""
    meta = sa.MetaData()
    meta.reflect(server.engine)
    out = {}
    with server.engine.connect() as conn:
        for name, table in sorted(meta.tables.items()):
            if name.startswith(("fs_audit", "fs_sessions")):
                continue
            columns = [c for c in table.c if c.name != "last_contact_at"]
            out[name] = sorted(tuple(str(v) for v in r) for r in conn.execute(sa.select(*columns)).all())
    return out


class Raw:
    """A protocol speaker sending exactly the bytes a test gives it."""

    def __init__(self, server, user="rep-input", role="field_rep"):
        self.server = server
        self.token = server.token(user, role, territory_ids=[PUNE_CENTRAL])
        r = self.post("/devices", {"install_id": f"i-{user}", "schema_version": 1})
        assert r.status_code == 201, r.get_json()
        self.device_id = r.get_json()["device_id"]

    def headers(self, **extra):
        return {"Authorization": f"Bearer {self.token}", "Fieldsync-Protocol": "1", **extra}

    def post(self, path, body=None, *, data=None):
        if data is None:
            data = json.dumps(body)
        return self.server.http.post("/api/v1/sync" + path, data=data,
                                     headers=self.headers(**{"Content-Type": "application/json"}))

    def get(self, path, **query):
        return self.server.http.get("/api/v1/sync" + path, query_string=query, headers=self.headers())

    def push(self, mutations, **extra):
        return self.post("/push", {"device_id": self.device_id, "schema_version": 1,
                                   "sent_at": "2026-11-27T10:00:00Z", "mutations": mutations, **extra})

    def pull(self, **extra):
        return self.post("/pull", {"device_id": self.device_id, "schema_version": 1, "cursor": 0, **extra})


def _refused(r, name: str, statuses=(400, 422)) -> dict:
    assert r.status_code in statuses, (r.status_code, r.get_data(as_text=True)[:300])
    assert r.mimetype == PROBLEM
    body = r.get_json()
    named = " ".join([e["field"] for e in body.get("errors") or []] + [body["detail"]])
    assert name in named, (name, body)
    return body


def _visit(server, **fields):
    retailer = next(r for r in server.store.list("retailer", limit=100).items if r["territory_id"] == PUNE_CENTRAL)
    out = {"retailer_id": retailer["id"], "territory_id": PUNE_CENTRAL, "visited_at": "2026-11-27T09:00:00Z",
           "purpose": "order"}
    out.update(fields)
    return out


def _mutation(seq, fields, record_id="0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d", **extra):
    return {"seq": seq, "entity": "visit", "op": "insert", "id": record_id, "base_version": None,
            "client_time": "2026-11-27T10:00:00Z", "fields": fields, **extra}


@pytest.fixture
def raw(sync_server):
    return Raw(sync_server)


def test_deep_json_in_sync_bodies(sync_server, raw):
    before = _state_of(sync_server)
    deep = "[" * 100_000 + "]" * 100_000
    for path in ("/push", "/pull", "/ack", "/devices"):
        _refused(raw.post(path, data=deep), "nested", statuses=(400,))
    wrapped = json.dumps({"device_id": raw.device_id, "schema_version": 1, "mutations": []})[:-3] + deep + "}"
    _refused(raw.post("/push", data=wrapped), "nested", statuses=(400,))
    _refused(raw.post("/pull", data='{"device_id": "x", "refetch": ' + "[" * 5000 + "]" * 5000 + "}"), "nested",
             statuses=(400,))
    assert _state_of(sync_server) == before


def test_huge_and_unicode_integers(sync_server, raw):
    before = _state_of(sync_server)
    for seq in (2 ** 64, 2 ** 63, -1, "1", "²"):
        _refused(raw.push([_mutation(seq, _visit(sync_server))]), "mutations[0].seq", statuses=(400,))
    for name in ("cursor", "results_after", "limit"):
        for value in ("²", "١٢", 2 ** 64, "99999999999999999999999", " 1"):
            _refused(raw.pull(**{name: value}), name, statuses=(400,))
    for name in ("cursor", "results_through"):
        for value in ("²", 2 ** 64):
            _refused(raw.post("/ack", {"device_id": raw.device_id, name: value}), name, statuses=(400,))
    for name in ("after_seq", "limit"):
        for value in ("²", "99999999999999999999999", "-1", "1_0"):
            _refused(raw.get("/results", device_id=raw.device_id, **{name: value}), name, statuses=(400,))
    assert _state_of(sync_server) == before


def test_token_with_a_huge_or_nested_claim(sync_server, raw):
    import base64
    from fieldsync.auth.tokens import _sign
    secret = "sync-tests-" + "s" * 21   # the servers' (conftest.py)

    def token(payload: str) -> str:
        body = base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")
        return f"v1.{body}.{_sign(secret, 'v1.' + body)}"

    good = {"sub": "u", "role": "field_rep", "attrs": {}, "iat": 0, "jti": "j"}
    for payload in (json.dumps({**good, "exp": 2 ** 70}), json.dumps({**good, "exp": 2 ** 40, "iat": -2 ** 70}),
                    "[" * 100_000, json.dumps({**good, "exp": 2 ** 40, "attrs": {"a": "[" * 10}})[:-1]
                    + ', "x": ' + "[" * 100_000 + "}"):
        r = sync_server.http.get("/api/v1/sync/devices/" + raw.device_id,
                                 headers={"Authorization": f"Bearer {token(payload)}", "Fieldsync-Protocol": "1"})
        assert r.status_code == 401, (r.status_code, r.get_json())
        assert r.get_json()["reason"] == "malformed"
    # the same bodies under a signature that does not match are refused before any parsing
    r = sync_server.http.get("/api/v1/sync/capabilities",
                             headers={"Authorization": "Bearer v1." + "W" * 100_000 + ".x", "Fieldsync-Protocol": "1"})
    assert r.status_code < 500


def test_out_of_range_datetimes_in_a_push(sync_server, raw):
    r = raw.push([_mutation(1, _visit(sync_server, visited_at="9999-12-31T23:59:59-14:00")),
                  _mutation(2, _visit(sync_server), record_id="0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0e",
                            client_time="0001-01-01T00:00:00+14:00"),
                  _mutation(3, _visit(sync_server), record_id="0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0f",
                            client_time="9999-12-31T23:59:59Z")],
                 sent_at="0001-01-01T00:00:00Z")
    assert r.status_code == 202, r.get_json()
    sync_server.drain()
    ledger = {row["seq"]: row for row in sync_server.ledger(raw.device_id)}
    assert ledger[1]["status"] == "rejected" and "visited_at" in ledger[1]["errors"]
    assert ledger[2]["status"] == "applied" and ledger[3]["status"] == "applied"
    assert sync_server.queued() == 0


def test_nul_and_lone_surrogates_are_refused(sync_server, raw):
    before = _state_of(sync_server)
    for path, body, name in (
            ("/devices", {"install_id": "a\u0000", "schema_version": 1}, "install_id"),
            ("/devices", {"install_id": "i-9", "platform": "\u0000", "schema_version": 1}, "platform"),
            ("/devices", {"install_id": "i-9", "device_id": "\u0000", "schema_version": 1}, "device_id"),
            ("/pull", {"device_id": "a\u0000", "schema_version": 1}, "device_id"),
            ("/pull", {"device_id": raw.device_id, "schema_version": 1, "scope_hash": "\u0000"}, "scope_hash"),
            ("/pull", {"device_id": raw.device_id, "schema_version": 1,
                       "refetch": [{"entity": "visit", "id": "\u0000"}]}, "refetch[0].id"),
            ("/ack", {"device_id": "\u0000"}, "device_id"),
            ("/pull", {"device_id": "\ud800", "schema_version": 1}, "device_id"),
            ("/devices", {"install_id": "\udc00x", "schema_version": 1}, "install_id"),
            ("/push", {"device_id": raw.device_id, "schema_version": 1,
                       "mutations": [_mutation(1, {}, entity="vi\u0000sit")]}, "mutations[0].entity")):
        _refused(raw.post(path, body), name, statuses=(400,))
    _refused(raw.get("/results", device_id="\u0000"), "device_id", statuses=(400,))
    _refused(raw.get("/devices/a%00b"), "path", statuses=(400,))
    assert _state_of(sync_server) == before
    # a mutation's field values are checked when its batch is applied: rejected alone, naming the field
    r = raw.push([_mutation(1, _visit(sync_server, notes="a\u0000b")),
                  _mutation(2, _visit(sync_server, notes="\ud800"), record_id="0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0e"),
                  # a reference is looked up before it is judged: a lone surrogate must not reach the database
                  _mutation(3, _visit(sync_server, retailer_id="\ud800"), record_id="0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0f")])
    assert r.status_code == 202
    sync_server.drain()
    rows = sync_server.ledger(raw.device_id)
    assert [(row["status"], field in row["errors"]) for row, field in zip(rows, ("notes", "notes", "retailer_id"))] \
        == [("rejected", True)] * 3, rows
    assert sync_server.records("visit") == {}


def test_refetch_skips_entries_that_are_not_objects(sync_server, raw):
    visit = sync_server.store.create("visit", _visit(sync_server), server_values={"rep_id": "rep-input"})
    r = raw.pull(refetch=[1, "visit", None, [], True, {"entity": "visit", "id": visit["id"]},
                          {"entity": "visit", "id": "not-a-uuid"}, {"entity": 3, "id": []}])
    assert r.status_code == 200, r.get_json()
    refetched = [(c["kind"], c["id"]) for c in r.get_json()["changes"] if c.get("position") is None
                 and c["kind"] in ("upsert", "remove") and c["entity"] == "visit"]
    assert ("remove", "not-a-uuid") in refetched
    assert any(kind == "upsert" and i == visit["id"] for kind, i in refetched)
