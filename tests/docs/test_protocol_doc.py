"""docs/protocol.md is the wire contract a third party writes a client from: every problem type
the sync endpoints raise, every rejection type, every change kind and its members, every reset
reason, every sync endpoint and every member of the real responses must be documented there.

The names are read from the code (the AST of the modules, the app's URL map, real responses),
so a new one added to the code without a line in the doc fails here.
"""

from __future__ import annotations

import ast
import uuid
from pathlib import Path
from typing import Iterable

import pytest

from fieldsync.api import create_app
from fieldsync.auth.tokens import issue_token
from fieldsync.errors import ProblemType

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "protocol.md"
PACKAGE = ROOT / "platform" / "fieldsync"
SYNC_PREFIX = "/api/v1/sync"
SECRET = "protocol-doc-" + "s" * 19


def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _tree(relative: str) -> ast.Module:
    return ast.parse((PACKAGE / relative).read_text(encoding="utf-8"))


def _called(node: ast.AST, name: str) -> bool:
    func = getattr(node, "func", None)
    return isinstance(node, ast.Call) and (
        (isinstance(func, ast.Name) and func.id == name) or (isinstance(func, ast.Attribute) and func.attr == name))


def _const(node: ast.AST | None):
    return node.value if isinstance(node, ast.Constant) else None


def missing_names(names: Iterable[str], text: str) -> list[str]:
    """The names that do not appear in `text` as inline code (`name`)."""
    return sorted({n for n in names if f"`{n}`" not in text})


def problem_slugs() -> set[str]:
    """Every problem type name the sync endpoints can answer with: each `ProblemType.<NAME>`
    api/sync.py names (its views take every type from the registry, fieldsync.errors)."""
    return {ProblemType[node.attr].slug for node in ast.walk(_tree("api/sync.py"))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ProblemType"}


def rejection_types() -> set[str]:
    """The rejection types of results: every type of the registry with a rejection title, which
    includes every one sync/apply.py rejects a mutation with."""
    raised = {node.attr for node in ast.walk(_tree("sync/apply.py"))
              if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "ProblemType"}
    kinds = {t.slug for t in ProblemType if t.rejection is not None}
    assert {ProblemType[name].slug for name in raised} <= kinds, "apply.py rejects with a type that has no rejection title"
    return kinds


def _change_dicts() -> list[ast.Dict]:
    out = []
    for node in ast.walk(_tree("sync/pull.py")):
        if isinstance(node, ast.Dict) and any(_const(k) == "kind" for k in node.keys):
            out.append(node)
    return out


def change_kinds() -> set[str]:
    return {_const(v) for d in _change_dicts() for k, v in zip(d.keys, d.values) if _const(k) == "kind"}


def change_members() -> set[str]:
    return {_const(k) for d in _change_dicts() for k in d.keys if _const(k) is not None}


def reset_reasons() -> set[str]:
    return {_const(n.args[0]) for n in ast.walk(_tree("sync/pull.py")) if _called(n, "SyncReset") and n.args}


@pytest.fixture
def app(tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0})
    yield app
    state = app.extensions["fieldsync"]
    state.sync.stop()
    if state.sync._queue is not None:
        state.sync.queue.close()
    state.engine.dispose()


def sync_endpoints(app) -> set[str]:
    """`METHOD /api/v1/sync/...` for every route of the sync blueprint."""
    return {f"{method} {rule.rule}" for rule in app.url_map.iter_rules() if rule.rule.startswith(SYNC_PREFIX + "/")
            and rule.endpoint != "fieldsync_sync.not_an_endpoint"   # the 404/405 fallback of §2.5
            for method in rule.methods - {"HEAD", "OPTIONS"}}


# -- the checker can fail ------------------------------------------------------------------------

def test_the_checker_reports_a_name_the_doc_lacks():
    text = _doc()
    assert missing_names(["sync-reset", "clear"], text) == []
    assert missing_names(["sync-reset", "clear"], text.replace("`sync-reset`", "sync reset")) == ["sync-reset"]
    assert missing_names(["no-such-problem-type"], text) == ["no-such-problem-type"]


def test_the_names_are_read_from_the_code():
    # if the extraction broke and returned nothing, every other test here would pass vacuously
    assert {"protocol-unsupported", "sync-reset", "unsupported-encoding", "forbidden"} <= problem_slugs()
    assert {"stale", "validation", "malformed-mutation"} <= rejection_types()
    assert {"upsert", "patch", "delete", "remove", "clear"} <= change_kinds()
    assert {"from_version", "reason", "row"} <= change_members()
    assert {"cursor-too-old", "cursor-ahead"} == reset_reasons()


# -- the doc names everything --------------------------------------------------------------------

def test_every_problem_type_of_the_sync_endpoints_is_documented():
    assert missing_names(problem_slugs(), _doc()) == []


def test_every_rejection_type_is_documented():
    assert missing_names(rejection_types(), _doc()) == []


def test_every_change_kind_and_member_is_documented():
    text = _doc()
    assert missing_names(change_kinds(), text) == []
    assert missing_names(change_members(), text) == []


def test_every_reset_reason_is_documented():
    assert missing_names(reset_reasons(), _doc()) == []


def test_the_doc_is_v1_not_a_draft():
    head = _doc().split("\n## ")[0]
    assert "v1" in head and "draft" not in head.lower()


def test_every_sync_endpoint_is_documented(app):
    endpoints = sync_endpoints(app)
    assert {"POST /api/v1/sync/push", "POST /api/v1/sync/pull", "GET /api/v1/sync/devices/<device_id>"} <= endpoints
    text = _doc()
    assert sorted(e for e in endpoints if e not in text) == []


def test_every_member_of_real_responses_is_documented(app):
    """Register, push a good and a bad mutation, process them, pull, ask for results, ack and
    read the status: every top-level member of each answer, of a result and of a change is
    named in the doc."""
    client = app.test_client()
    token = issue_token(SECRET, "rep-asha", "field_rep", {"territory_ids": []})
    headers = {"Authorization": f"Bearer {token}", "Fieldsync-Protocol": "1"}

    def call(method, path, body=None, status=200):
        r = client.open(SYNC_PREFIX + path, method=method, json=body, headers=headers)
        assert r.status_code == status, r.get_json()
        return r.get_json()

    answers = {"capabilities": call("GET", "/capabilities")}
    answers["register"] = call("POST", "/devices", {"install_id": "doc-test", "schema_version": 1}, 201)
    device_id = answers["register"]["device_id"]
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    mutations = [
        {"seq": 1, "entity": "expense", "op": "insert", "id": good, "base_version": None,
         "client_time": "2026-11-20T09:00:00Z", "fields": {"spent_on": "2026-11-20", "category": "travel",
                                                          "amount": "12.00"}},
        {"seq": 2, "entity": "expense", "op": "insert", "id": bad, "base_version": None,
         "client_time": "2026-11-20T09:00:00Z", "fields": {"spent_on": "2026-11-20", "category": "travel",
                                                          "amount": "-1.00"}}]
    push = {"device_id": device_id, "schema_version": 1, "sent_at": "2026-11-20T09:00:00Z", "mutations": mutations}
    answers["push"] = call("POST", "/push", push, 202)
    assert app.extensions["fieldsync"].sync.drain() == 1
    answers["push again"] = call("POST", "/push", push, 202)
    answers["pull"] = call("POST", "/pull", {"device_id": device_id, "schema_version": 1, "cursor": 0,
                                             "scope_hash": None, "resume": None, "results_after": 0})
    answers["results"] = call("GET", f"/results?device_id={device_id}&after_seq=0")
    answers["ack"] = call("POST", "/ack", {"device_id": device_id, "cursor": answers["pull"]["cursor"],
                                           "results_through": 2})
    answers["status"] = call("GET", f"/devices/{device_id}")

    results = answers["pull"]["results"]
    assert [r["status"] for r in results] == ["applied", "rejected"]
    assert answers["push again"]["results"][0]["status"] == "duplicate"
    members = {k for answer in answers.values() for k in answer}
    members |= {k for r in results for k in r} | set(answers["push again"]["results"][0])
    members |= {k for c in answers["pull"]["changes"] for k in c}
    members |= set(answers["register"]["capabilities"])
    assert missing_names(members, _doc()) == [], missing_names(members, _doc())


def test_real_responses_match_the_openapi_schemas(app):
    """The sync schemas of the OpenAPI document (what other languages generate types from) accept
    the server's real answers, and are strict enough to refuse a wrong one."""
    import jsonschema

    from fieldsync.codegen.openapi import openapi_document

    doc = openapi_document(app.extensions["fieldsync"].model)
    client = app.test_client()
    token = issue_token(SECRET, "rep-asha", "field_rep", {"territory_ids": []})
    headers = {"Authorization": f"Bearer {token}", "Fieldsync-Protocol": "1"}

    def check(schema_name, method, path, body=None):
        r = client.open(SYNC_PREFIX + path, method=method, json=body, headers=headers)
        assert r.status_code < 300, r.get_json()
        validator = jsonschema.Draft202012Validator({**doc, "$ref": f"#/components/schemas/{schema_name}"})
        errors = [e.message for e in validator.iter_errors(r.get_json())]
        assert errors == [], (path, errors[:3])
        return r.get_json(), validator

    check("SyncCapabilities", "GET", "/capabilities")
    device_id = check("SyncRegistration", "POST", "/devices", {"install_id": "oas", "schema_version": 1})[0]["device_id"]
    push = {"device_id": device_id, "schema_version": 1, "mutations": [
        {"seq": 1, "entity": "expense", "op": "insert", "id": str(uuid.uuid4()), "base_version": None,
         "client_time": "2026-11-20T09:00:00Z", "fields": {"spent_on": "2026-11-20", "category": "travel",
                                                          "amount": "12.00"}}]}
    check("SyncPushResponse", "POST", "/push", push)
    app.extensions["fieldsync"].sync.drain()
    check("SyncPushResponse", "POST", "/push", push)                 # a duplicate result
    page, validator = check("SyncPullPage", "POST", "/pull", {"device_id": device_id, "schema_version": 1})
    assert page["changes"] and page["results"]
    assert list(validator.iter_errors(dict(page, cursor="7")))       # the schema can refuse
    check("SyncResultsPage", "GET", f"/results?device_id={device_id}")
    check("SyncAckResponse", "POST", "/ack", {"device_id": device_id, "cursor": page["cursor"]})
    check("SyncDeviceStatus", "GET", f"/devices/{device_id}")
    check("SyncDeviceSchema", "GET", "/schema")
