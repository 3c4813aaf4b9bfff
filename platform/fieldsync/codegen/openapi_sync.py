"""The sync endpoints in the OpenAPI document (docs/protocol.md §2.6), so that clients in other
languages can generate their request and response types (pure: builds data).

The schemas say what the server sends and accepts; the protocol's rules that a schema cannot
say (seqs strictly ascending, a cursor not above the head, …) are answered by the documented
400 problems. Members a later protocol version adds are allowed (no `additionalProperties:
false` on responses), so a v1 client keeps parsing them.
"""

from __future__ import annotations

from typing import Any

API_SYNC = "/api/v1/sync"
PROBLEM_MEDIA_TYPE = "application/problem+json"
TAG = "sync"

_INT = {"type": "integer", "minimum": 0}
_POSITION = {"type": "integer", "minimum": 0, "maximum": 2 ** 53}
_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_TIME = {"type": "string", "description": "ISO 8601 UTC, e.g. 2026-11-20T09:00:00.000000Z"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], required: list[str], description: str = "", *,
            closed: bool = False) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if description:
        schema["description"] = description
    if closed:
        schema["additionalProperties"] = False
    return schema


def sync_schemas() -> dict[str, Any]:
    """The request and response schemas of the sync endpoints, by component name."""
    capabilities = _object({
        "protocol": {"type": "array", "items": {"type": "integer"}, "description": "protocol versions spoken"},
        "encodings": {"type": "array", "items": _STRING, "description": "request codings read, preferred first"},
        "max_request_bytes": _INT, "max_mutations": _INT, "max_pull_limit": _INT, "retention_days": _INT,
        "schema_version": _INT,
        "bundles": {"type": "boolean", "description": "snapshots as bundles to devices that ask (§14)"},
        "manifest_keys": {"type": "object", "additionalProperties": _STRING,
                          "description": "Ed25519 public keys of bundle manifests by key id (§14.2)"},
        "push_bundle": _object({"max_mutations": _INT, "max_bytes": _INT}, ["max_mutations", "max_bytes"],
                               "outbox bundles: mutations per bundle, bytes per upload (protocol §4.7)"),
    }, ["protocol", "encodings", "max_request_bytes", "max_mutations", "max_pull_limit", "retention_days",
        "schema_version"], "Limits and codings (protocol §3.3).")
    status_props = {
        "device_id": _STRING, "user_id": _STRING, "status": {"enum": ["active", "revoked"]},
        "platform": _NULLABLE_STRING, "app_version": _NULLABLE_STRING, "schema_version": _INT,
        "registered_at": _NULLABLE_STRING, "last_contact_at": _NULLABLE_STRING, "scope_hash": _NULLABLE_STRING,
        "acked_cursor": _INT, "head": _INT, "behind": _INT, "last_received_seq": _INT, "results_through": _INT,
        "unsettled": _INT, "rejected_permanent": _INT,
        "device_reported": {"type": ["object", "null"], "description": "the device's counts at its last ack"},
        "write_checkpoint": _INT,
        "already_revoked": {"type": "boolean", "description": "revoke only: it was revoked before"},
    }
    status_required = ["device_id", "user_id", "status", "schema_version", "acked_cursor", "head", "behind",
                       "last_received_seq", "results_through", "unsettled", "rejected_permanent", "write_checkpoint"]
    result_props: dict[str, Any] = {
        "seq": {"type": "integer", "minimum": 1}, "status": {"enum": ["applied", "rejected", "duplicate"]},
        "entity": _STRING, "id": _STRING, "op": _STRING,
        "position": {"type": ["integer", "null"]}, "version": {"type": ["integer", "null"]},
        "effect": {"enum": ["changed", "unchanged", "partial", "discarded"]},
        "overridden": {"type": "array", "items": _STRING},
        "permanent": {"type": "boolean"}, "type": _STRING, "title": _STRING, "detail": _STRING,
        "errors": {"type": "array", "items": _ref("SyncFieldError")},
        "current_version": {"type": ["integer", "null"]},
        "row": {"type": ["object", "null"], "description": "the record as this device may read it"},
        "first": {"$ref": "#/components/schemas/SyncResult", "description": "duplicate: the stored result"},
        "payload_mismatch": {"type": "boolean"},
    }
    return {
        "SyncCapabilities": capabilities,
        "SyncFieldError": _object({"field": _STRING, "reason": _STRING}, ["field", "reason"]),
        "SyncRegisterRequest": _object({
            "install_id": {"type": "string", "minLength": 1, "maxLength": 64},
            "schema_version": {"type": "integer"},
            "platform": {"type": ["string", "null"], "maxLength": 64},
            "app_version": {"type": ["string", "null"], "maxLength": 64},
            "device_id": {"type": ["string", "null"], "maxLength": 36,
                          "description": "only to re-create a registration the server lost (§3.2)"},
            "issue_secret": {"type": "boolean"},
        }, ["install_id", "schema_version"], "Registration (protocol §3.1)."),
        "SyncRegistration": _object({
            "device_id": _STRING, "user_id": _STRING, "registered_at": _TIME, "schema_version": _INT,
            "capabilities": _ref("SyncCapabilities"), "device_token": _STRING, "device_token_expires_at": _TIME,
            "device_secret": {"type": "string", "description": "only with issue_secret: standard base64"},
        }, ["device_id", "user_id", "registered_at", "schema_version", "capabilities", "device_token",
            "device_token_expires_at"]),
        "SyncDeviceStatus": _object(status_props, status_required, "A device's status (protocol §3.4)."),
        "SyncDeviceList": _object({"items": {"type": "array", "items": _ref("SyncDeviceStatus")}}, ["items"]),
        "SyncRevokeRequest": _object({"reason": {"type": "string", "minLength": 1, "maxLength": 500}}, ["reason"]),
        "SyncMutation": _object({
            "seq": {"type": "integer", "minimum": 1, "description": "strictly ascending within the request"},
            "entity": _STRING, "op": {"enum": ["insert", "update", "delete"]}, "id": _STRING,
            "base_version": {"type": ["integer", "null"], "minimum": 0}, "client_time": _TIME,
            "fields": {"type": "object", "description": "field values in wire form"},
        }, ["seq", "entity", "op", "id", "fields"], "One local write (protocol §4.1)."),
        "SyncPushRequest": _object({
            "device_id": _STRING, "schema_version": {"type": "integer"}, "sent_at": _TIME,
            "mutations": {"type": "array", "items": _ref("SyncMutation")},
        }, ["device_id", "schema_version", "mutations"]),
        "SyncResult": _object(result_props, ["seq", "status"], "The outcome of one mutation (protocol §5.1)."),
        "SyncPushResponse": _object({
            "device_id": _STRING, "received": {"type": "array", "items": {"type": "integer"}},
            "results": {"type": "array", "items": _ref("SyncResult")}, "write_checkpoint": _INT, "unsettled": _INT,
        }, ["device_id", "received", "results", "write_checkpoint", "unsettled"]),
        "SyncPushBundleRequest": _object({
            "device_id": _STRING, "schema_version": {"type": "integer"}, "sent_at": _TIME,
            "upload": {"type": "string", "description": "the tus upload's URL (its Location) or id"},
            "key": {"type": "string", "description": "the bundle's AES-256 key, base64url (never stored)"},
            "manifest": {"type": "object", "description": "the fieldsync-chunks/1 manifest, kind outbox"},
        }, ["device_id", "schema_version", "upload", "key", "manifest"],
            "Commit an outbox bundle uploaded over tus (protocol §4.7)."),
        "SyncPushBundleResponse": _object({
            "device_id": _STRING, "bundle_id": _STRING, "mutations": _INT,
            "received": {"type": "array", "items": {"type": "integer"}},
            "results": {"type": "array", "items": _ref("SyncResult")}, "write_checkpoint": _INT, "unsettled": _INT,
        }, ["device_id", "bundle_id", "mutations", "received", "results", "write_checkpoint", "unsettled"]),
        "SyncResultsPage": _object({
            "results": {"type": "array", "items": _ref("SyncResult")}, "has_more": {"type": "boolean"},
            "write_checkpoint": _INT, "unsettled": _INT, "last_received_seq": _INT,
        }, ["results", "has_more", "write_checkpoint", "unsettled", "last_received_seq"]),
        "SyncRefetchItem": _object({"entity": _STRING, "id": _STRING}, ["entity", "id"]),
        "SyncPullRequest": _object({
            "device_id": _STRING, "schema_version": {"type": "integer"},
            "cursor": {"type": ["integer", "string"], "description": "0 … 2^53 (or a string of digits)"},
            "resume": _NULLABLE_STRING, "scope_hash": _NULLABLE_STRING,
            "limit": {"type": "integer", "minimum": 1, "description": "at most max_pull_limit"},
            "results_after": {"type": ["integer", "string"], "description": "0 … 2^53"},
            "refetch": {"type": "array", "maxItems": 1000, "items": _ref("SyncRefetchItem")},
            "bundles": {"type": "boolean", "description": "true: the device reads snapshot bundles (§14)"},
        }, ["device_id", "schema_version"], "Pull (protocol §6.1)."),
        "SyncBundle": _object({
            "id": _STRING, "url": _STRING, "key": {"type": "string", "description": "base64url, 32 bytes"},
            "manifest": {"type": "object", "description": "fieldsync-chunks/1 manifest (§14.2)"},
            "signature": _STRING, "signing_key": _STRING, "clear": {"type": "array", "items": _STRING},
            "scope_hash": _STRING, "size": _INT, "rows": _INT,
        }, ["id", "url", "key", "manifest", "signature", "signing_key", "clear", "scope_hash", "size", "rows"],
            "A snapshot bundle to fetch and apply (protocol §14.1)."),
        "SyncChange": _object({
            "kind": {"enum": ["upsert", "patch", "delete", "remove", "clear"]}, "entity": _STRING, "id": _STRING,
            "position": {"type": ["integer", "null"]}, "version": {"type": "integer"},
            "from_version": {"type": "integer"}, "row": {"type": "object"}, "fields": {"type": "object"},
            "updated_at": _NULLABLE_STRING, "reason": {"enum": ["scope", "refetch"]},
        }, ["kind", "entity"], "One change of a pull page (protocol §6.3)."),
        "SyncPullPage": _object({
            "device_id": _STRING, "schema_version": _INT, "head": _INT,
            "windows": {"type": "object", "additionalProperties": _STRING},
            "phase": {"enum": ["snapshot", "rescope", "stream", "bundle"]}, "cursor": _POSITION,
            "bundle": _ref("SyncBundle"),
            "resume": _NULLABLE_STRING, "scope_hash": _NULLABLE_STRING, "has_more": {"type": "boolean"},
            "remaining": _INT, "changes": {"type": "array", "items": _ref("SyncChange")},
            "results": {"type": "array", "items": _ref("SyncResult")}, "more_results": {"type": "boolean"},
            "write_checkpoint": _INT, "unsettled": _INT,
        }, ["device_id", "schema_version", "head", "windows", "phase", "cursor", "resume", "scope_hash", "has_more",
            "remaining", "changes", "results", "more_results", "write_checkpoint", "unsettled"]),
        "SyncAckRequest": _object({
            "device_id": _STRING, "cursor": {"type": ["integer", "string"]},
            "results_through": {"type": ["integer", "string"]},
            "outbox": _object({"pending": _INT, "sent": _INT, "received": _INT}, []), "quarantined": _INT,
        }, ["device_id"], "Ack (protocol §7.1)."),
        "SyncAckResponse": _object({"device_id": _STRING, "acked_cursor": _INT, "results_through": _INT,
                                    "head": _INT}, ["device_id", "acked_cursor", "results_through", "head"]),
        "SyncDeviceSchema": _object({"schema_version": _INT, "fingerprint": _STRING,
                                     "entities": {"type": "array", "items": {"type": "object"}}},
                                    ["schema_version", "fingerprint", "entities"],
                                    "The device schema document; its full format is the JSON Schema "
                                    "generated/device/schema.schema.json (protocol §7.3)."),
    }


_PROBLEMS = {
    400: "protocol-unsupported (missing or unknown Fieldsync-Protocol), malformed-request or invalid-resume",
    401: "unauthenticated: missing, malformed, forged, expired, idle, revoked or superseded token; `reason`",
    403: "forbidden, device-token-not-allowed, device-token-mismatch, device-user-mismatch or device-revoked",
    404: "unknown-device; not-found for a push bundle's upload that is gone or another's",
    409: "schema-upgrade-required, schema-too-new, or bundle-incomplete (the upload is not whole)",
    410: "sync-reset: the cursor can no longer be served (`reason`, `horizon`)",
    413: "payload-too-large (`max_bytes` or `max_mutations`)",
    415: "unsupported-encoding (header Accept-Encoding)",
    422: "bundle-refused: a chunk, the manifest or the key does not check; nothing was received",
    423: "upload-busy: another request holds the bundle's upload; retry",
    429: "too-many-requests: too many failed authentications (header Retry-After)",
    503: "unavailable: the push could not be made durable; nothing was received",
}


def _problems(*statuses: int) -> dict[str, Any]:
    out = {}
    for status in statuses:
        response: dict[str, Any] = {"description": _PROBLEMS[status],
                                    "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref("Problem")}}}
        if status == 429:
            response["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}
        out[str(status)] = response
    return out


def _protocol_header(required: bool = True) -> dict[str, Any]:
    return {"name": "Fieldsync-Protocol", "in": "header", "required": required,
            "description": "the protocol version (§2.2)", "schema": {"type": "string", "enum": ["1"]}}


def _json(schema_name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _body(schema_name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _op(operation_id: str, summary: str, responses: dict[str, Any], *, body: str | None = None,
        parameters: list[dict[str, Any]] | None = None, protocol_required: bool = True,
        security: list | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"tags": [TAG], "operationId": operation_id, "summary": summary,
                          "parameters": [_protocol_header(protocol_required), *(parameters or [])],
                          "responses": responses}
    if body is not None:
        op["requestBody"] = _body(body)
    if security is not None:
        op["security"] = security
    return op


_DEVICE_ID = {"name": "device_id", "in": "path", "required": True, "schema": {"type": "string"}}


def login_schemas() -> dict[str, Any]:
    """The request and response of `POST /api/v1/auth/login` (docs/access.md, "Users and login")."""
    return {
        "LoginRequest": _object({
            "user": {"type": "string", "maxLength": 128},
            "password": {"type": "string", "maxLength": 1024},
            "totp": {"type": ["string", "null"], "description": "the current one-time code, for a user who "
                                                               "enrolled a second factor"},
        }, ["user", "password"], "A directory user's credentials."),
        "LoginResponse": _object({
            "token": _STRING, "token_type": {"const": "Bearer"}, "token_id": _STRING,
            "expires_at": _INT, "expires_in": _INT, "idle_timeout": _INT,
            "user": _STRING, "role": _STRING, "attributes": {"type": "object"},
        }, ["token", "token_type", "token_id", "expires_at", "expires_in", "idle_timeout", "user", "role",
            "attributes"], "A user token with the directory's role and attributes."),
    }


def login_paths() -> dict[str, Any]:
    """`POST /api/v1/auth/login`: no token; refusals are 401 login-failed, audited and rate-limited."""
    return {"/api/v1/auth/login": {"post": {
        "tags": ["auth"], "operationId": "login", "summary": "Exchange a directory user's password for a token",
        "security": [], "requestBody": _body("LoginRequest"),
        "responses": {"200": _json("LoginResponse", "Logged in."),
                      "400": {"description": "bad-request: the body is not {user, password[, totp]}",
                              "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref("Problem")}}},
                      "401": {"description": "login-failed, with a `reason`: invalid_credentials, disabled, "
                                             "totp_required, totp_invalid",
                              "content": {PROBLEM_MEDIA_TYPE: {"schema": _ref("Problem")}}},
                      **_problems(413, 415, 429)}}}}


def sync_paths() -> dict[str, Any]:
    """The sync endpoints of protocol §2.6, by path."""
    authenticated = (400, 401, 429)
    body_errors = (413, 415)
    return {
        f"{API_SYNC}/capabilities": {"get": _op(
            "sync_capabilities", "Limits and codings (no token)", {"200": _json("SyncCapabilities", "Capabilities.")},
            protocol_required=False, security=[])},
        f"{API_SYNC}/schema": {"get": _op(
            "sync_schema", "The device schema of the current model",
            {"200": _json("SyncDeviceSchema", "generated/device/schema.json, byte for byte."),
             **_problems(401, 429)},
            parameters=[{"name": "from", "in": "query", "required": False, "description": "ignored in v1",
                         "schema": {"type": "integer"}}], protocol_required=False)},
        f"{API_SYNC}/devices": {
            "post": _op("sync_register", "Register this install (idempotent on install_id)",
                        {"200": _json("SyncRegistration", "Registered before: the same device, a new token."),
                         "201": _json("SyncRegistration", "Registered."),
                         **_problems(*authenticated, 403, 409, *body_errors)}, body="SyncRegisterRequest"),
            "get": _op("sync_list_devices", "Every device's status (admin)",
                       {"200": _json("SyncDeviceList", "The devices."), **_problems(*authenticated, 403)}),
        },
        f"{API_SYNC}/devices/{{device_id}}": {
            "parameters": [_DEVICE_ID],
            "get": _op("sync_device_status", "One device's status (its user or an admin)",
                       {"200": _json("SyncDeviceStatus", "The device."), **_problems(*authenticated, 404)}),
        },
        f"{API_SYNC}/devices/{{device_id}}/revoke": {
            "parameters": [_DEVICE_ID],
            "post": _op("sync_revoke_device", "An admin revokes a device",
                        {"200": _json("SyncDeviceStatus", "The device, revoked."),
                         **_problems(*authenticated, 403, 404, *body_errors)}, body="SyncRevokeRequest"),
        },
        f"{API_SYNC}/push": {"post": _op(
            "sync_push", "Send mutations",
            {"202": _json("SyncPushResponse", "Received (durable), results to come."),
             **_problems(*authenticated, 403, 404, 409, *body_errors, 503)}, body="SyncPushRequest")},
        f"{API_SYNC}/push-bundle": {"post": _op(
            "sync_push_bundle", "Commit an outbox bundle uploaded over tus",
            {"202": _json("SyncPushBundleResponse", "Received (durable), results to come; the upload is removed."),
             **_problems(*authenticated, 403, 404, 409, *body_errors, 422, 423, 503)},
            body="SyncPushBundleRequest")},
        f"{API_SYNC}/results": {"get": _op(
            "sync_results", "Results by seq",
            {"200": _json("SyncResultsPage", "Results above after_seq."), **_problems(*authenticated, 403, 404)},
            parameters=[{"name": "device_id", "in": "query", "required": True, "schema": {"type": "string"}},
                        {"name": "after_seq", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 0, "maximum": 2 ** 53}},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}])},
        f"{API_SYNC}/pull": {"post": _op(
            "sync_pull", "Receive changes and results",
            {"200": _json("SyncPullPage", "One page."),
             **_problems(*authenticated, 403, 404, 409, 410, *body_errors)}, body="SyncPullRequest")},
        f"{API_SYNC}/bundles/{{bundle_id}}": {
            "parameters": [{"name": "bundle_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "get": _op("sync_bundle", "A snapshot bundle's sealed chunks (HTTP Range)",
                       {"200": {"description": "The whole bundle.",
                                "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}},
                        "206": {"description": "The range asked for (one chunk).",
                                "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                    "format": "binary"}}}},
                        **_problems(*authenticated, 404)},
                       parameters=[{"name": "Range", "in": "header", "required": False,
                                    "schema": {"type": "string"}}])},
        f"{API_SYNC}/ack": {"post": _op(
            "sync_ack", "Report the applied cursor and outbox counts",
            {"200": _json("SyncAckResponse", "The recorded position."),
             **_problems(*authenticated, 403, 404, *body_errors)}, body="SyncAckRequest")},
    }
