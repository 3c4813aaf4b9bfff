"""The OpenAPI 3.1 document of the generated REST API (pure: no Flask, no database).

`openapi_document(model)` describes exactly what `fieldsync.api` serves under /api/v1: per
entity a collection (list with filters, sort and keyset pagination; create), an item (get with
ETag, PATCH/PUT with a required If-Match, DELETE), and for parents the nested child collection.
Errors are RFC 9457 problem documents. The same model always gives the same document
(`json.dumps(doc, sort_keys=True)` is byte-identical), so the generated file can be checked in.

The query vocabulary (which fields filter with which operators, which sort) lives in
`fieldsync.defs.query`, which the document, the API and the record store all read.
"""

from __future__ import annotations

import copy
from typing import Any

from fieldsync.codegen.json_schema import field_schema, object_schema
from fieldsync.defs.model import Entity, Field, Model
from fieldsync.defs.query import CONTROL_PARAMETERS, operators_for, query_fields, sortable

API_PREFIX = "/api/v1"
PROBLEM_MEDIA_TYPE = "application/problem+json"

# -- components -----------------------------------------------------------------------------

def _problem_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "An RFC 9457 problem document.",
        "properties": {
            "type": {"type": "string", "format": "uri"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
            "errors": {
                "type": "array",
                "description": "Every offending field of a validation failure.",
                "items": {
                    "type": "object",
                    "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
                    "required": ["field", "reason"],
                },
            },
        },
        "required": ["type", "title", "status"],
    }


_RESPONSES = {
    "BadRequest": ("400", "Malformed JSON or a bad query parameter."),
    "Unauthorized": ("401", "Missing, malformed, forged, expired, idle or revoked bearer token; `reason` says which."),
    "Forbidden": ("403", "The token's role may not do this."),
    "NotFound": ("404", "No such record, or not one the role can reach."),
    "Conflict": ("409", "A record with this id exists, or a concurrent write won."),
    "PreconditionFailed": ("412", "If-Match names a version that is no longer current."),
    "PayloadTooLarge": ("413", "The body is larger than the server accepts."),
    "UnsupportedMediaType": ("415", "The body is not application/json."),
    "UnprocessableContent": ("422", "The record has invalid or unknown fields; `errors` lists each one."),
    "PreconditionRequired": ("428", "If-Match is required for this change."),
    "TooManyRequests": ("429", "Too many failed authentications from this address or device; retry after "
                               "Retry-After seconds (the token was not checked)."),
}


def _problem_response(name: str) -> dict[str, Any]:
    description = _RESPONSES[name][1]
    response: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if name == "Unauthorized":
        response["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    if name == "TooManyRequests":
        response["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}
    return response


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _responses(*names: str) -> dict[str, Any]:
    if "Unauthorized" in names:   # every authenticated operation may meet the auth rate limit
        names = names + ("TooManyRequests",)
    return {_RESPONSES[n][0]: {"$ref": f"#/components/responses/{n}"} for n in names}


_BREAK_GLASS = {"name": "X-Fieldsync-Break-Glass", "in": "header", "required": False,
                "description": "Emergency access for a role granted `break_glass`: the reason (audited, stored "
                               "encrypted); the answer shows every field, PHI included. Without the grant 403.",
                "schema": {"type": "string", "minLength": 1, "maxLength": 500}}


def _break_glass_parameters(entity: Entity) -> list[dict[str, Any]]:
    """The break-glass header, on reads of an entity some role may break the glass on."""
    return [_BREAK_GLASS] if any(p.break_glass for p in entity.permissions) else []


_HEADERS = {
    "ETag": {"description": "The record's version, quoted.", "schema": {"type": "string"}},
    "Location": {"description": "The new record's URL.", "schema": {"type": "string"}},
}


def _entity_schemas(entity: Entity, model: Model) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    read = object_schema(entity, "read")
    create = object_schema(entity, "create")
    for child_name in entity.children:
        child = model.entity(child_name)
        read["properties"][child.collection] = {
            "type": "array", "description": f"Present with ?expand={child.collection}.",
            "items": _ref(f"{child.name}.read")}
        create["properties"][child.collection] = {
            "type": "array", "description": f"{child.label or child.name} records created in the same transaction.",
            "items": _ref(f"{child.name}.nested_create")}
    replace = copy.deepcopy(create)
    replace["title"] = f"{entity.label or entity.name} (replace)"
    replace["properties"].pop("id", None)
    for child_name in entity.children:
        replace["properties"].pop(model.entity(child_name).collection, None)
    schemas[f"{entity.name}.read"] = read
    schemas[f"{entity.name}.create"] = create
    schemas[f"{entity.name}.replace"] = replace
    schemas[f"{entity.name}.update"] = object_schema(entity, "update")
    if entity.parent is not None:
        schemas[f"{entity.name}.nested_create"] = object_schema(
            entity, "create", omit=(entity.parent_field,))
    schemas[f"{entity.name}.page"] = {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": _ref(f"{entity.name}.read")},
            "next_cursor": {"type": ["string", "null"],
                            "description": "Pass as ?cursor= for the next page; null on the last page."},
            "total": {"type": "integer", "minimum": 0, "description": "Present with ?total=true."},
        },
        "required": ["items", "next_cursor"],
        "additionalProperties": False,
    }
    return schemas


# -- operations -----------------------------------------------------------------------------

def _filter_value_schema(field: Field) -> dict[str, Any]:
    """A filter value: the field's type without its length/pattern/range constraints, since
    filtering by a value no record could hold is legal and simply matches nothing."""
    loose = field_schema(Field(name=field.name, type=field.type, values=field.values,
                               precision=field.precision, scale=field.scale), "create")
    loose.pop("maxLength", None)
    loose.pop("minLength", None)
    if field.type == "integer":
        loose.pop("minimum", None)
        loose.pop("maximum", None)
    return loose


def _list_parameters(entity: Entity, page_size_max: int) -> list[dict[str, Any]]:
    fields = query_fields(entity)
    sort_values: list[str] = []
    for name, f in fields.items():
        if sortable(f):
            sort_values += [name, "-" + name]
    params: list[dict[str, Any]] = [
        {"name": "sort", "in": "query", "required": False,
         "description": "Sort column, `-` for descending; ties are broken by id.",
         "schema": {"type": "string", "enum": sort_values}},
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": page_size_max}},
        {"name": "cursor", "in": "query", "required": False,
         "description": "The next_cursor of the previous page (opaque).", "schema": {"type": "string"}},
        {"name": "total", "in": "query", "required": False,
         "description": "Also count every matching record.", "schema": {"type": "boolean"}},
    ]
    for name, f in fields.items():
        value = _filter_value_schema(f)
        for op in operators_for(f):
            bare = op == "eq" and name not in CONTROL_PARAMETERS
            param: dict[str, Any] = {"name": name if bare else f"{name}__{op}", "in": "query",
                                     "required": False}
            if op == "in":
                param.update(style="form", explode=False,
                             description=f"{name} is one of these (comma-separated).",
                             schema={"type": "array", "items": value, "minItems": 1})
            else:
                param["schema"] = value
            params.append(param)
    return params


def _json_body(schema_name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _record_response(entity: Entity, description: str, *, location: bool = False) -> dict[str, Any]:
    headers: dict[str, Any] = {"ETag": {"$ref": "#/components/headers/ETag"}}
    if location:
        headers["Location"] = {"$ref": "#/components/headers/Location"}
    return {"description": description, "headers": headers,
            "content": {"application/json": {"schema": _ref(f"{entity.name}.read")}}}


def _collection_ops(entity: Entity, page_size_max: int, *, nested_in: Entity | None = None) -> dict[str, Any]:
    tag = entity.name
    suffix = f"_in_{nested_in.name}" if nested_in else ""
    body = f"{entity.name}.nested_create" if nested_in else f"{entity.name}.create"
    missing = ("NotFound",) if nested_in else ()
    return {
        "get": {
            "tags": [tag], "operationId": f"list_{entity.name}{suffix}",
            "summary": f"List {entity.label or entity.name} records",
            "parameters": _list_parameters(entity, page_size_max) + _break_glass_parameters(entity),
            "responses": {
                "200": {"description": "One page of records.",
                        "content": {"application/json": {"schema": _ref(f"{entity.name}.page")}}},
                **_responses("BadRequest", "Unauthorized", "Forbidden", *missing),
            },
        },
        "post": {
            "tags": [tag], "operationId": f"create_{entity.name}{suffix}",
            "summary": f"Create a {entity.label or entity.name}",
            "requestBody": _json_body(body),
            "responses": {
                "201": _record_response(entity, "Created.", location=True),
                **_responses("BadRequest", "Unauthorized", "Forbidden", *missing, "Conflict",
                             "PayloadTooLarge", "UnsupportedMediaType", "UnprocessableContent"),
            },
        },
    }


_ID_PARAM = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
_IF_MATCH = {"name": "If-Match", "in": "header", "required": True,
             "description": "The ETag of the version being changed.", "schema": {"type": "string"}}
_IF_MATCH_OPTIONAL = dict(_IF_MATCH, required=False)
_IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}


def _item_ops(entity: Entity, model: Model) -> dict[str, Any]:
    tag, name = entity.name, entity.name
    get_params: list[dict[str, Any]] = [_IF_NONE_MATCH, *_break_glass_parameters(entity)]
    collections = [model.entity(c).collection for c in entity.children]
    if collections:
        get_params.append({"name": "expand", "in": "query", "required": False,
                           "description": "Child collections to include.",
                           "style": "form", "explode": False,
                           "schema": {"type": "array", "items": {"type": "string", "enum": collections}}})
    write_errors = _responses("BadRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict", "PreconditionFailed",
                              "PayloadTooLarge", "UnsupportedMediaType", "UnprocessableContent",
                              "PreconditionRequired")
    return {
        "parameters": [_ID_PARAM],
        "get": {
            "tags": [tag], "operationId": f"get_{name}", "parameters": get_params,
            "responses": {
                "200": _record_response(entity, "The record."),
                "304": {"description": "Not modified (If-None-Match matched)."},
                **_responses("BadRequest", "Unauthorized", "Forbidden", "NotFound"),
            },
        },
        "patch": {
            "tags": [tag], "operationId": f"update_{name}", "parameters": [_IF_MATCH],
            "requestBody": _json_body(f"{name}.update"),
            "responses": {"200": _record_response(entity, "Updated."), **write_errors},
        },
        "put": {
            "tags": [tag], "operationId": f"replace_{name}", "parameters": [_IF_MATCH],
            "requestBody": _json_body(f"{name}.replace"),
            "responses": {"200": _record_response(entity, "Replaced."), **write_errors},
        },
        "delete": {
            "tags": [tag], "operationId": f"delete_{name}", "parameters": [_IF_MATCH_OPTIONAL],
            "responses": {
                "204": {"description": "Deleted (a tombstone is kept for sync)."},
                **_responses("BadRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict", "PreconditionFailed"),
            },
        },
    }


def openapi_document(model: Model, *, page_size_max: int = 1000) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `model`'s REST API (deterministic for a given model)."""
    paths: dict[str, Any] = {
        f"{API_PREFIX}/health": {"get": {
            "tags": ["meta"], "operationId": "health", "security": [],
            "responses": {"200": {"description": "The server is up.", "content": {"application/json": {
                "schema": {"type": "object", "properties": {"status": {"const": "ok"}},
                           "required": ["status"]}}}}},
        }},
        f"{API_PREFIX}/ready": {"get": {
            "tags": ["meta"], "operationId": "ready", "security": [],
            "responses": {code: {"description": text, "content": {"application/json": {"schema": {
                "type": "object", "required": ["status", "dependencies"], "properties": {
                    "status": {"enum": ["ready", "degraded", "unready"]},
                    "dependencies": {"type": "object", "additionalProperties": {
                        "type": "object", "required": ["state"], "properties": {
                            "state": {"enum": ["up", "degraded", "down", "unknown"]},
                            "since": {"type": ["string", "null"]},
                            "last_success": {"type": ["string", "null"]},
                            "last_failure": {"type": ["string", "null"]}}}},
                    "spool": {"type": "object", "properties": {
                        "batches": {"type": "integer"}, "devices": {"type": "integer"},
                        "oldest_age_seconds": {"type": ["number", "null"]}}}}}}}}
                for code, text in (("200", "The server can serve (the database answers)."),
                                   ("503", "The database does not answer: take this server out."))},
        }},
        f"{API_PREFIX}/openapi.json": {"get": {
            "tags": ["meta"], "operationId": "openapi", "security": [],
            "responses": {"200": {"description": "This document.",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        }},
    }
    from fieldsync.codegen.openapi_sync import login_paths, login_schemas, sync_paths, sync_schemas
    paths.update(login_paths())    # the user directory's login (docs/access.md)
    paths.update(sync_paths())     # the sync protocol (docs/protocol.md §2.6)
    from fieldsync.codegen.openapi_media import media_paths, media_schemas
    paths.update(media_paths())    # media objects (docs/protocol.md §16)
    from fieldsync.codegen.openapi_transfer import transfer_paths, transfer_schemas
    paths.update(transfer_paths())  # resumable uploads over tus 1.0 (docs/protocol.md §15)
    schemas: dict[str, Any] = {"Problem": _problem_schema(), **login_schemas(), **sync_schemas(), **media_schemas(),
                              **transfer_schemas()}
    for entity in model.entities:
        schemas.update(_entity_schemas(entity, model))
        paths[f"{API_PREFIX}/{entity.name}"] = _collection_ops(entity, page_size_max)
        paths[f"{API_PREFIX}/{entity.name}/{{id}}"] = _item_ops(entity, model)
        for child_name in entity.children:
            child = model.entity(child_name)
            nested = _collection_ops(child, page_size_max, nested_in=entity)
            nested["parameters"] = [_ID_PARAM]
            paths[f"{API_PREFIX}/{entity.name}/{{id}}/{child.collection}"] = nested
    return {
        "openapi": "3.1.0",
        "info": {
            "title": model.title or model.app,
            "version": str(model.schema_version),
            "description": (model.description or "").strip(),
            "x-fieldsync-fingerprint": model.fingerprint(),
        },
        "tags": [{"name": "meta"}, {"name": "auth", "description": "Login with the user directory"}, {"name": "sync", "description": "The sync protocol (docs/protocol.md)"},
                 {"name": "media", "description": "Media objects (docs/protocol.md §16)"},
                 {"name": "transfer", "description": "Resumable uploads, tus 1.0 (docs/protocol.md §15)"}] + [
            {"name": e.name, "description": e.description or e.label or e.name} for e in model.entities],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {name: _problem_response(name) for name in _RESPONSES},
            "headers": _HEADERS,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "A token from `fieldsync token` / issue_token."}},
        },
    }
