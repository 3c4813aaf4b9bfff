"""No client input produces a 5xx on the REST API (issue 10, item 3).

Each input below once raised in the server (RecursionError, OverflowError, a ValueError from
int() on a Unicode digit, a PostgreSQL refusal of NUL) or was accepted against the published
schema. Each must now be a 400/422 problem+json naming the parameter or field, with nothing
written; on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
import sqlalchemy as sa

from fieldsync.codegen.json_schema import field_schema

PROBLEM = "application/problem+json"


def _counts(app) -> dict[str, int]:
    """Rows per table but the read bookkeeping (audit trail, sessions)."""
    engine = app.extensions["fieldsync"].engine
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        return {name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for name, t in meta.tables.items() if not name.startswith(("fs_audit", "fs_sessions"))}


def _refused(r, names: str | tuple[str, ...], statuses=(400, 422)) -> dict:
    """`r` is a 400/422 problem naming each of `names` (in an error's field, or the detail)."""
    assert r.status_code in statuses, (r.status_code, r.get_data(as_text=True)[:300])
    assert r.mimetype == PROBLEM
    body = r.get_json()
    named = " ".join([e["field"] for e in body.get("errors") or []] + [body["detail"]])
    for name in (names,) if isinstance(names, str) else names:
        assert name in named, (name, body)
    return body


@pytest.fixture
def visit(api, world):
    return api.ok("POST", "/visit", {"retailer_id": world["r_north"]["id"], "territory_id": world["north"]["id"],
                                     "visited_at": "2026-11-27T09:00:00Z", "purpose": "order",
                                     "duration_minutes": 30})


def _visit_body(world, **extra):
    body = {"retailer_id": world["r_north"]["id"], "territory_id": world["north"]["id"],
            "visited_at": "2026-11-27T09:00:00Z", "purpose": "order"}
    body.update(extra)
    return body


def _expense_body(**extra):
    body = {"spent_on": "2026-11-27", "category": "travel", "amount": "12.00"}
    body.update(extra)
    return body


# -- bodies ----------------------------------------------------------------------------------

def test_deep_nesting_in_a_body_or_a_json_field(app, api, world):
    before = _counts(app)
    deep = "[" * 20_000 + "]" * 20_000   # within the app's body limit (64 KiB)
    r = api.request("POST", "/expense", data=deep, headers={"Content-Type": "application/json"})
    _refused(r, "nested", statuses=(400,))
    body = json.dumps(_expense_body())[:-1] + ', "details": ' + deep + "}"
    r = api.request("POST", "/expense", data=body, headers={"Content-Type": "application/json"})
    _refused(r, "nested", statuses=(400,))
    nested = {}
    for _ in range(40):   # within the body's bound, over a JSON field's
        nested = {"x": nested}
    _refused(api.post("/expense", _expense_body(details=nested)), "details")
    assert _counts(app) == before


def test_huge_and_unicode_integers_in_queries_and_headers(app, api, world, visit):
    before = _counts(app)
    for query, name in (("duration_minutes=99999999999999999999999", "duration_minutes"),
                        ("duration_minutes__gte=-99999999999999999999999", "duration_minutes"),
                        ("duration_minutes=%D9%A1%D9%A2", "duration_minutes"),   # Arabic-Indic 12
                        ("duration_minutes=%EF%BC%91", "duration_minutes"),      # fullwidth 1
                        ("duration_minutes=%201", "duration_minutes"),
                        ("duration_minutes__in=1,99999999999999999999999", "duration_minutes"),
                        ("version=99999999999999999999999", "version"),
                        ("version=3000000000", "version"),
                        ("limit=%C2%B2", "limit"),
                        ("limit=99999999999999999999999", "limit")):
        _refused(api.get(f"/visit?{query}"), name, statuses=(400,))
    for tag in ('"²"', '"99999999999999999999999"', '"١"', "W/\"²\"", '"1", "²"'):
        r = api.patch(f"/visit/{visit['id']}", {"notes": "x"}, headers={"If-Match": tag})
        _refused(r, "If-Match", statuses=(400,))
        r = api.delete(f"/visit/{visit['id']}", headers={"If-Match": tag})
        _refused(r, "If-Match", statuses=(400,))
        r = api.get(f"/visit/{visit['id']}", headers={"If-None-Match": tag})
        _refused(r, "If-None-Match", statuses=(400,))
    assert _counts(app) == before
    assert api.get(f"/visit/{visit['id']}").get_json()["version"] == visit["version"]


def _cursor(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_bad_list_cursors(app, api, visit):
    before = _counts(app)
    cursors = [("duration_minutes", _cursor({"s": "duration_minutes", "v": 10 ** 30, "i": visit["id"]})),
               ("duration_minutes", _cursor({"s": "duration_minutes", "v": "\u00b2", "i": visit["id"]})),
               ("id", _cursor({"s": "id", "v": None, "i": "a\u0000b"})),
               ("visited_at", _cursor({"s": "visited_at", "v": "9999-12-31T23:59:59-14:00", "i": visit["id"]})),
               ("id", base64.urlsafe_b64encode(b"[" * 50_000).decode()),
               ("id", _cursor({"s": "id", "v": json.loads("[" * 70 + "]" * 70), "i": visit["id"]})),
               ("id", "\u00b2")]
    for sort, cursor in cursors:
        _refused(api.get("/visit", query_string={"cursor": cursor, "sort": sort}), "cursor", statuses=(400,))
    assert _counts(app) == before


def test_datetimes_that_leave_the_utc_range(app, api, world, visit):
    before = _counts(app)
    for value in ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"):
        _refused(api.post("/visit", _visit_body(world, visited_at=value)), "visited_at", statuses=(422,))
        _refused(api.get("/visit", query_string={"visited_at__gte": value}), "visited_at", statuses=(400,))
    assert _counts(app) == before


def test_decimals_and_ids_the_schema_refuses(app, api, world, example_model):
    before = _counts(app)
    # the string form the published schema allows for amount
    [text, _number] = field_schema(example_model.entity("expense").field("amount"), "create")["anyOf"]
    pattern = text["pattern"]
    for value in ("１２.00", " 12.00", "12.00 ", "1_000.00", "+12.00", "1e3", "12.", ".5", "12.001", "NaN", "Infinity",
                  "٣.00"):
        assert not re.search(pattern, value), value   # the published schema refuses it too
        _refused(api.post("/expense", _expense_body(amount=value)), "amount", statuses=(422,))
    for value in ("12.5", "12.50", "0", "-0.5", 12, 12.5):   # and these are accepted, as the schema says
        if isinstance(value, str):
            assert re.search(pattern, value), value
    assert api.post("/expense", _expense_body(amount="12.5")).status_code == 201
    before = _counts(app)
    _refused(api.post("/expense", _expense_body(id=None)), "id", statuses=(422,))
    _refused(api.post("/expense", _expense_body(id=12)), "id", statuses=(422,))
    for other_form in ("{0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d}", "urn:uuid:0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d",
                       "0190a4c27d1e7a3b9c4d5e6f7a8b9c0d", " 0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d"):
        # the schema's format uuid is the hyphenated form only, as for references
        _refused(api.post("/expense", _expense_body(id=other_form)), "id", statuses=(422,))
        _refused(api.post("/visit", _visit_body(world, retailer_id=other_form)), "retailer_id", statuses=(422,))
    assert _counts(app) == before


def test_media_fields_take_http_urls_and_object_keys_only(app, api, example_model):
    pattern = field_schema(example_model.entity("expense").field("receipt"), "create")["pattern"]
    before = _counts(app)
    for value in ("javascript:alert(1)", "JavaScript:alert(1)", " javascript:alert(1)", "data:text/html,<b>x</b>",
                  "file:///etc/passwd", "vbscript:x", "//evil.example/x", "https://", "http:/x", "ftp://x.example/y",
                  "https://ex ample.com/x", "https://example.com/\u0000", "/etc/passwd", "../up", "a/../b", ".env",
                  "https://user@evil.example/x", "x:y"):
        _refused(api.post("/expense", _expense_body(receipt=value)), "receipt", statuses=(422,))
        assert not re.search(pattern, value), value   # the published schema refuses it too
    assert _counts(app) == before
    for value in ("https://media.example.com/receipts/1.jpg", "http://10.0.0.5:9000/bucket/a%20b.png?X-Sig=1",
                  "receipts/2026/11/abc-1.jpg"):
        assert re.search(pattern, value), value
        assert api.post("/expense", _expense_body(receipt=value)).status_code == 201, value


def test_nul_and_lone_surrogates_are_refused_naming_the_field(app, api, world, visit):
    before = _counts(app)
    _refused(api.post("/visit", _visit_body(world, notes="a\u0000b")), "notes", statuses=(422,))
    _refused(api.post("/expense", _expense_body(details={"k": "a\u0000b"})), "details", statuses=(422,))
    _refused(api.post("/expense", _expense_body(details={"a\u0000": 1})), "details", statuses=(422,))
    _refused(api.post("/expense", _expense_body(currency="I\u0000R")), "currency", statuses=(422,))
    # a lone surrogate half (JSON's "\ud800" escape) is no text any database stores either
    _refused(api.post("/visit", _visit_body(world, notes="a\ud800")), "notes", statuses=(422,))
    _refused(api.post("/expense", _expense_body(details={"k": ["\udfff"]})), "details", statuses=(422,))
    _refused(api.patch(f"/visit/{visit['id']}", {"notes": "\u0000"}, headers={"If-Match": f'"{visit["version"]}"'}),
             "notes", statuses=(422,))
    # in the URL: a path segment or a query parameter
    _refused(api.get("/visit/a%00b"), "path", statuses=(400,))
    _refused(api.get("/visit", query_string={"notes": "a\u0000"}), "notes", statuses=(400,))
    _refused(api.get("/visit", query_string={"rep_id": "a\u0000"}), "rep_id", statuses=(400,))
    assert _counts(app) == before


def test_admin_worker_endpoints(app, api):
    before = _counts(app)
    r = api.request("POST", "/admin/workers", data="[" * 20_000 + "]" * 20_000,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.mimetype == PROBLEM, r.status_code
    _refused(api.post("/admin/workers", {"queue": "push", "threads": 2 ** 64}), "threads", statuses=(422,))
    for limit in ("%C2%B2", "%201", "99999999999999999999999"):
        _refused(api.get(f"/admin/workers/log?limit={limit}"), "limit", statuses=(422,))
    assert _counts(app) == before
