"""The OpenAPI document and JSON Schemas: valid, deterministic, and true to the running API.

A bounded schemathesis run over every operation of the document, REST and sync, for an admin
and a field rep, on SQLite and PostgreSQL (`make test` runs it: about a minute on 2 cores)
finds no 5xx and no status, content type or body the document does not allow."""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import jsonschema
import pytest
import schemathesis
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_schema_conformance, status_code_conformance,
)

from fieldsync.api import create_app
from fieldsync.auth import issue_token
from fieldsync.codegen.json_schema import entity_schema
from fieldsync.codegen.openapi import openapi_document
from fieldsync.defs import load_model
from fieldsync.defs.values import validate_record

SECRET = "schemathesis-secret"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_document_is_valid_openapi_31_and_deterministic(example_model):
    doc = openapi_document(example_model)
    validate(doc)
    again = openapi_document(load_model("entity_defs"))
    assert json.dumps(doc, sort_keys=True) == json.dumps(again, sort_keys=True)
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    order_item = doc["paths"]["/api/v1/order/{id}"]
    assert {"get", "patch", "put", "delete"} <= set(order_item)
    assert order_item["patch"]["responses"]["428"] == {"$ref": "#/components/responses/PreconditionRequired"}
    # the owner is server-set, so the create schema does not offer it
    assert "rep_id" not in doc["components"]["schemas"]["order.create"]["properties"]


@pytest.mark.parametrize("mode", ["read", "create", "update"])
def test_entity_schemas_are_valid_2020_12(example_model, mode):
    for entity in example_model.entities:
        schema = entity_schema(entity, mode, model=example_model)
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["additionalProperties"] is False


def test_json_schema_agrees_with_validation(example_model):
    product = example_model.entity("product")
    create = jsonschema.Draft202012Validator(entity_schema(product, "create"),
                                             format_checker=jsonschema.FormatChecker())
    good = {"sku": "A1", "name": "n", "category": "otc", "unit_price": "12.50"}
    assert create.is_valid(good) and not validate_record(product, good, partial=False)[1]
    assert create.is_valid(dict(good, unit_price=12.5))
    for bad in (dict(good, unit_price="1.234"), dict(good, category="food"), dict(good, colour="red"),
                {"name": "missing sku"}, dict(good, sku="x" * 33)):
        assert not create.is_valid(bad)
        assert validate_record(product, bad, partial=False)[1], bad
    read = entity_schema(product, "read")
    assert {"id", "version", "created_at", "updated_at", "deleted"} <= set(read["required"])


PG_ADMIN_URL = os.environ.get("FIELDSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"
EXAMPLES = {"positive": 6, "negative": 4}   # per operation and run: about 70 s for the 8 runs on 2 cores


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def fuzz_app(request, tmp_path_factory):
    """The API on SQLite or PostgreSQL (a schema of its own) with a few records, an admin and a
    field rep token, and a registered device of each (the sync operations fuzz a real device)."""
    data = tmp_path_factory.mktemp("fuzz")
    url, admin_engine, schema = f"sqlite:///{data / 'fuzz.db'}", None, None
    if request.param == "postgresql":
        schema = "t_" + uuid.uuid4().hex[:12]
        admin_engine = sa.create_engine(PG_ADMIN_URL)
        with admin_engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": SECRET, "DATA_DIR": str(data), "PAGE_SIZE_MAX": 100,
                      "SYNC_LISTENERS": 0, "AUTH_FAILURE_LIMIT": 100000})
    c = app.test_client()
    tokens = {"admin": issue_token(SECRET, "admin-1", "admin", {}, ttl=3600, now=time.time()),
              "field_rep": issue_token(SECRET, "rep-1", "field_rep", {"territory_ids": [PUNE]}, ttl=3600,
                                       now=time.time())}
    admin = {"Authorization": "Bearer " + tokens["admin"]}
    t = c.post("/api/v1/territory", json={"id": PUNE, "code": "F-1", "name": "F", "region": "west"},
               headers=admin).get_json()
    c.post("/api/v1/retailer", json={"name": "R", "territory_id": t["id"]}, headers=admin)
    c.post("/api/v1/product", json={"sku": "S", "name": "n", "category": "otc", "unit_price": "1"}, headers=admin)
    devices = {}
    for role, token in tokens.items():
        r = c.post("/api/v1/sync/devices", json={"install_id": f"fuzz-{role}", "schema_version": 1},
                   headers={"Authorization": "Bearer " + token, "Fieldsync-Protocol": "1"})
        devices[role] = r.get_json()["device_id"]
    yield app, tokens, devices
    app.extensions["fieldsync"].sync.close()
    app.extensions["fieldsync"].engine.dispose()
    if admin_engine is not None:
        with admin_engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin_engine.dispose()


def _aim_at_the_device(case, device_id: str) -> None:
    """Most sync requests name a device; a random id is only ever `unknown-device`, so the
    fuzzed request names the caller's real device (its other members stay as generated)."""
    if "/sync/" not in case.operation.path:
        return
    if isinstance(case.body, dict) and "device_id" in case.body:
        case.body["device_id"] = device_id
    if isinstance(case.body, dict) and isinstance(case.body.get("schema_version"), int):
        case.body["schema_version"] = 1   # the server's: else nearly every pull is a 409
    if case.query and "device_id" in case.query:
        case.query["device_id"] = device_id
    if case.path_parameters and "device_id" in case.path_parameters and "revoke" not in case.operation.path:
        case.path_parameters["device_id"] = device_id


@pytest.mark.parametrize("role", ["admin", "field_rep"])
@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_contradiction(fuzz_app, mode, role):
    """Every operation of the document, REST and sync: valid requests get documented statuses,
    content types and bodies; invalid ones documented statuses and content types, never a 5xx."""
    from schemathesis import GenerationMode

    app, tokens, devices = fuzz_app
    # identity: the WSGI transport hands schemathesis the bytes as sent, and sync answers over
    # 1 KiB are compressed for a client that accepts gzip (protocol §2.3)
    auth = {"Authorization": "Bearer " + tokens[role], "Accept-Encoding": "identity"}
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 60 and any("/sync/pull" in op.path for op in operations)
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    checks = CHECKS if mode == "positive" else [not_a_server_error, status_code_conformance, content_type_conformance]
    failures, statuses = [], []
    for operation in operations:
        @settings(max_examples=EXAMPLES[mode], deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=generation))
        def run(case):
            _aim_at_the_device(case, devices[role])
            try:
                response = case.call_and_validate(headers=auth, checks=checks)
                statuses.append(response.status_code)
            except (AssertionError, BaseExceptionGroup) as exc:  # collect: one run reports every failure
                failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
                raise
        try:
            run()
        except (Exception, BaseExceptionGroup):
            pass
    summary = "\n".join(sorted({f.split(":", 1)[0] + " -> " + ", ".join(sorted(set(re.findall(r"ST\d+ [A-Za-z ]+", f))))
                                 for f in failures}))
    assert not failures, f"{len(failures)} failing operation(s):\n{summary}\n\n" + "\n\n".join(failures[:3])
    assert len(statuses) >= 3 * len(operations)  # the run really exercised the API
    if mode == "positive":
        assert 200 in statuses and 202 in statuses


def test_every_sync_route_is_in_the_document(tmp_path, example_model):
    """Clients in other languages generate their types from the document: each route of the sync
    blueprint (but the 404/405 fallback) is there with its method, a request body where it takes
    one, and a JSON schema for its success answer (bytes, for a snapshot bundle's chunks)."""
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(tmp_path), "SYNC_LISTENERS": 0}, model=example_model)
    doc = openapi_document(example_model)
    validate(doc)
    rules = [r for r in app.url_map.iter_rules()
             if r.endpoint.startswith("fieldsync_sync.") and r.endpoint != "fieldsync_sync.not_an_endpoint"]
    assert len(rules) >= 10
    for rule in rules:
        path = rule.rule.replace("<device_id>", "{device_id}").replace("<bundle_id>", "{bundle_id}")
        assert path in doc["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = doc["paths"][path].get(method.lower())
            assert operation is not None, (method, path)
            success = [s for s in operation["responses"] if s.startswith("2")]
            media = "application/octet-stream" if "{bundle_id}" in path else "application/json"
            assert success and all(media in operation["responses"][s]["content"] for s in success)
            if method == "POST":
                assert "application/json" in operation["requestBody"]["content"], (method, path)
    schemas = doc["components"]["schemas"]
    assert {"SyncPushRequest", "SyncPullPage", "SyncResult", "SyncChange"} <= set(schemas)
    app.extensions["fieldsync"].engine.dispose()
