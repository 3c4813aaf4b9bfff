"""The resumable-upload endpoints (tus 1.0, docs/protocol.md §15) in the OpenAPI document:
pure data. tus clients need no generated code (stock ones exist for every platform), but the
document names every route of the API, and a client in another language reads `GET
/api/v1/transfer/{upload_id}`'s description from its schema."""

from __future__ import annotations

from typing import Any

__all__ = ["transfer_paths", "transfer_schemas"]

PROBLEM = "application/problem+json"
OFFSET_STREAM = "application/offset+octet-stream"
_PREFIX = "/api/v1/transfer"
_DIGITS = {"type": "string", "pattern": "^[0-9]{1,19}$"}
_UPLOAD_ID = {"name": "upload_id", "in": "path", "required": True, "description": "the upload's id (in `Location`)",
              "schema": {"type": "string"}}
_TUS_RESUMABLE = {"name": "Tus-Resumable", "in": "header", "required": True, "description": "the tus version",
                  "schema": {"type": "string", "enum": ["1.0.0"]}}
_CHECKSUM = {"name": "Upload-Checksum", "in": "header", "required": False,
             "description": "`sha1 <base64>` or `sha256 <base64>` of the body", "schema": {"type": "string"}}
_OFFSET_HEADERS = {"Upload-Offset": {"description": "plaintext bytes received", "schema": _DIGITS},
                   "Upload-Expires": {"description": "an HTTP date", "schema": {"type": "string"}},
                   "Tus-Resumable": {"schema": {"type": "string"}}}
_PROBLEMS = {
    400: "bad-request: a size, metadata or checksum header that is not strict, an unknown purpose, "
         "Upload-Defer-Length, a body cut short",
    401: "unauthenticated: no valid token",
    404: "not-found: no such upload, or another principal's",
    409: "offset-mismatch: Upload-Offset is not the upload's (`offset`); or the purpose refused the file",
    410: "upload-expired: past Upload-Expires",
    412: "tus-version-unsupported: Tus-Resumable missing or not 1.0.0",
    413: "payload-too-large: over Tus-Max-Size or past Upload-Length",
    415: "unsupported-media-type: not application/offset+octet-stream (or a type the purpose refuses)",
    422: "upload-corrupt: the staged bytes do not authenticate on the server; or the purpose refused the file",
    423: "upload-busy: another request is writing this upload (Retry-After)",
    429: "too-many-requests: too many failed authentications (Retry-After)",
    460: "checksum-mismatch: the body's digest differs from Upload-Checksum; its bytes were discarded",
}


def _problems(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": _PROBLEMS[s], "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
            for s in statuses}


def _op(operation_id: str, summary: str, responses: dict[str, Any], *, parameters: list[dict[str, Any]],
        body: bool = False, security: list | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"tags": ["transfer"], "operationId": operation_id, "summary": summary,
                          "parameters": parameters, "responses": responses}
    if body:
        op["requestBody"] = {"required": False, "content": {OFFSET_STREAM: {"schema": {"type": "string",
                                                                                      "format": "binary"}}}}
    if security is not None:
        op["security"] = security
    return op


def transfer_schemas() -> dict[str, Any]:
    """The description of an upload (protocol §15.4)."""
    return {"TransferUpload": {
        "type": "object", "description": "An upload as its owner sees it (protocol §15.4).",
        "properties": {
            "id": {"type": "string"}, "offset": {"type": "integer", "minimum": 0},
            "length": {"type": "integer", "minimum": 0}, "complete": {"type": "boolean"},
            "state": {"type": "string", "enum": ["uploading", "complete", "failed"]},
            "purpose": {"type": "string"},
            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
            "expires": {"type": "string", "description": "an HTTP date"},
            "result": {"type": "object", "description": "the purpose's answer"},
            "problem": {"type": "object", "description": "the problem document that failed the upload"},
        },
        "required": ["id", "offset", "length", "complete", "state", "purpose", "metadata", "expires"]}}


def transfer_paths() -> dict[str, Any]:
    """The tus endpoints of protocol §15.1, by path."""
    authenticated = (401, 412, 429)
    discovered = {"204": {"description": "What the server offers.", "headers": {
        "Tus-Version": {"schema": {"type": "string"}}, "Tus-Extension": {"schema": {"type": "string"}},
        "Tus-Max-Size": {"schema": _DIGITS}, "Tus-Checksum-Algorithm": {"schema": {"type": "string"}}}}}
    return {
        _PREFIX: {
            "options": _op("transfer_discover", "tus discovery: version, extensions, Tus-Max-Size (no token)",
                           discovered, parameters=[], security=[]),
            "post": _op("transfer_create", "Create an upload (with its first bytes when a body follows)",
                        {"201": {"description": "Created; `Location` is the upload's URL.",
                                 "headers": {"Location": {"schema": {"type": "string"}}, **_OFFSET_HEADERS}},
                         **_problems(400, *authenticated, 409, 413, 415, 422, 460)},
                        parameters=[_TUS_RESUMABLE,
                                    {"name": "Upload-Length", "in": "header", "required": True, "schema": _DIGITS},
                                    {"name": "Upload-Metadata", "in": "header", "required": False,
                                     "description": "comma-separated `key base64value` pairs; `purpose` names "
                                                    "what happens on completion",
                                     "schema": {"type": "string"}}, _CHECKSUM],
                        body=True),
        },
        f"{_PREFIX}/{{upload_id}}": {
            "parameters": [_UPLOAD_ID],
            "options": _op("transfer_discover_upload", "tus discovery at an upload's URL (no token)",
                           discovered, parameters=[], security=[]),
            "head": _op("transfer_offset", "Where to resume: the upload's offset",
                        {"200": {"description": "The offset (no body).", "headers": {
                            **_OFFSET_HEADERS, "Upload-Length": {"schema": _DIGITS},
                            "Upload-Metadata": {"schema": {"type": "string"}}}},
                         **_problems(*authenticated, 404, 410, 422)},
                        parameters=[_TUS_RESUMABLE]),
            "patch": _op("transfer_append", "Bytes at Upload-Offset",
                         {"204": {"description": "Durable; the new offset.", "headers": _OFFSET_HEADERS},
                          **_problems(400, *authenticated, 404, 409, 410, 413, 415, 422, 423, 460)},
                         parameters=[_TUS_RESUMABLE,
                                     {"name": "Upload-Offset", "in": "header", "required": True, "schema": _DIGITS},
                                     _CHECKSUM],
                         body=True),
            "delete": _op("transfer_terminate", "Remove the upload and its bytes",
                          {"204": {"description": "Gone."}, **_problems(*authenticated, 404, 410, 423)},
                          parameters=[_TUS_RESUMABLE]),
            "get": _op("transfer_describe", "The upload as JSON for its owner",
                       {"200": {"description": "The upload.", "content": {"application/json": {
                           "schema": {"$ref": "#/components/schemas/TransferUpload"}}}},
                        **_problems(401, 404, 410, 422, 429)},
                       parameters=[]),
        },
    }
