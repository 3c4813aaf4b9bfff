"""The OpenAPI document and JSON Schemas: valid, deterministic, and true to the running API
(a bounded schemathesis run finds no 5xx and no response the document does not allow)."""

from __future__ import annotations

import json
import time

import jsonschema
import pytest
import schemathesis
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


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz")
    app = create_app({"DATABASE_URL": f"sqlite:///{data / 'fuzz.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(data), "PAGE_SIZE_MAX": 100})
    c = app.test_client()
    auth = {"Authorization": "Bearer " + issue_token(SECRET, "admin-1", "admin", {}, ttl=3600, now=time.time())}
    t = c.post("/api/v1/territory", json={"code": "F-1", "name": "F", "region": "west"}, headers=auth).get_json()
    c.post("/api/v1/retailer", json={"name": "R", "territory_id": t["id"]}, headers=auth)
    c.post("/api/v1/product", json={"sku": "S", "name": "n", "category": "otc", "unit_price": "1"}, headers=auth)
    yield app, auth
    app.extensions["fieldsync"].engine.dispose()


FUZZED = ("/api/v1/health", "/api/v1/territory", "/api/v1/territory/{id}", "/api/v1/product",
          "/api/v1/order", "/api/v1/order/{id}", "/api/v1/order/{id}/lines", "/api/v1/prescription")


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_schemathesis_finds_no_contradiction(fuzz_app, mode):
    """Valid requests must get documented statuses and bodies; invalid ones never a 5xx."""
    from schemathesis import GenerationMode

    app, auth = fuzz_app
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)
    operations = [op.ok() for op in schema.get_all_operations() if op.ok().path in FUZZED]
    assert len(operations) >= 15
    generation = GenerationMode.POSITIVE if mode == "positive" else GenerationMode.NEGATIVE
    checks = CHECKS if mode == "positive" else [not_a_server_error]
    failures, statuses = [], []
    for operation in operations:
        @settings(max_examples=8, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(generation_mode=generation))
        def run(case):
            try:
                response = case.call_and_validate(headers=auth, checks=checks)
                statuses.append(response.status_code)
            except AssertionError as exc:  # collect, so one run reports every operation's failure
                failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
                raise
        try:
            run()
        except Exception:
            pass
    assert not failures, "\n\n".join(failures[:5])
    assert len(statuses) >= 5 * len(operations)  # the run really exercised the API
    if mode == "positive":
        assert 200 in statuses and 201 in statuses


def test_every_sync_route_is_in_the_document(tmp_path, example_model):
    """Clients in other languages generate their types from the document: each route of the sync
    blueprint (but the 404/405 fallback) is there with its method, a request body where it takes
    one, and a JSON schema for its success answer."""
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(tmp_path), "SYNC_LISTENERS": 0}, model=example_model)
    doc = openapi_document(example_model)
    validate(doc)
    rules = [r for r in app.url_map.iter_rules()
             if r.endpoint.startswith("fieldsync_sync.") and r.endpoint != "fieldsync_sync.not_an_endpoint"]
    assert len(rules) >= 10
    for rule in rules:
        path = rule.rule.replace("<device_id>", "{device_id}")
        assert path in doc["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = doc["paths"][path].get(method.lower())
            assert operation is not None, (method, path)
            success = [s for s in operation["responses"] if s.startswith("2")]
            assert success and all("application/json" in operation["responses"][s]["content"] for s in success)
            if method == "POST":
                assert "application/json" in operation["requestBody"]["content"], (method, path)
    schemas = doc["components"]["schemas"]
    assert {"SyncPushRequest", "SyncPullPage", "SyncResult", "SyncChange"} <= set(schemas)
    app.extensions["fieldsync"].engine.dispose()
