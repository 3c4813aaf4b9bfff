"""The media endpoints in the OpenAPI document (docs/protocol.md §16): pure data."""

from __future__ import annotations

from typing import Any

from fieldsync.defs.values import MEDIA_REF_PATTERN

__all__ = ["media_paths", "media_schemas"]

PROBLEM = "application/problem+json"
_PREFIX = "/api/v1/media"
_REF = {"name": "ref", "in": "path", "required": True, "description": "a media reference, fsmedia:<uuid>",
        "schema": {"type": "string"}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM: {"schema": _ref("Problem")}}}


def _json(name: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


def media_schemas() -> dict[str, Any]:
    state = {"type": "string", "enum": ["pending", "available", "failed"]}
    return {
        "MediaUploadRequest": {
            "type": "object", "description": "Where a file for this reference goes. `entity` and `field` are "
                                            "needed when no record names the reference yet.",
            "properties": {"entity": {"type": "string"}, "field": {"type": "string"},
                           "content_type": {"type": "string", "maxLength": 255, "description": "its MIME type"},
                           "size": {"type": "integer", "minimum": 0, "description": "its size in bytes, if known"}},
            "required": ["content_type"]},
        "MediaUploadTarget": {
            "type": "object", "description": "tus: create an upload at `url` with `metadata` (Upload-Metadata). "
                                            "s3-post: POST `fields`, then the file as `file`, to `url`.",
            "properties": {"method": {"type": "string", "enum": ["tus", "s3-post"]}, "url": {"type": "string"},
                           "fields": {"type": "object", "additionalProperties": {"type": "string"}},
                           "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                           "max_bytes": {"type": "integer"}, "expires_in": {"type": "integer"}},
            "required": ["method", "url", "max_bytes"]},
        "MediaUpload": {
            "type": "object", "properties": {"ref": {"type": "string", "pattern": MEDIA_REF_PATTERN},
                                             "state": state, "upload": _ref("MediaUploadTarget")},
            "required": ["ref", "state", "upload"]},
        "MediaObject": {
            "type": "object", "description": "A media object; `url` (valid `expires_in` seconds) once available.",
            "properties": {"ref": {"type": "string", "pattern": MEDIA_REF_PATTERN}, "state": state,
                           "content_type": {"type": ["string", "null"]}, "size": {"type": ["integer", "null"]},
                           "reason": {"type": "string"}, "url": {"type": "string"},
                           "expires_in": {"type": "integer"}},
            "required": ["ref", "state", "content_type", "size"]},
    }


def media_paths() -> dict[str, Any]:
    auth = {"401": _problem("unauthorized"), "429": _problem("too-many-requests")}
    return {
        f"{_PREFIX}/{{ref}}/upload": {"post": {
            "tags": ["media"], "operationId": "mediaUpload", "summary": "Ask where a media file goes",
            "parameters": [_REF],
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("MediaUploadRequest")}}},
            "responses": {"200": _json("MediaUpload", "The upload target."),
                          "400": _problem("bad-request: the body is not a JSON object"), **auth,
                          "404": _problem("not-found: no such reference for you"),
                          "409": _problem("conflict: already uploaded"),
                          "413": _problem("payload-too-large: over the field's max_bytes"),
                          "415": _problem("unsupported-media-type: a type the field does not take"),
                          "422": _problem("validation: no content_type, or no such media field")}}},
        f"{_PREFIX}/{{ref}}/complete": {"post": {
            "tags": ["media"], "operationId": "mediaComplete", "summary": "Say an upload finished",
            "parameters": [_REF],
            "responses": {"200": _json("MediaObject", "The object's state."), **auth,
                          "404": _problem("not-found: no such reference for you"),
                          "409": _problem("conflict: nothing uploaded yet"),
                          "413": _problem("payload-too-large: the object is over max_bytes (removed)"),
                          "415": _problem("unsupported-media-type: the object is not of its declared type")}}},
        f"{_PREFIX}/{{ref}}": {"get": {
            "tags": ["media"], "operationId": "mediaGet", "summary": "A media object and its download link",
            "parameters": [_REF],
            "responses": {"200": _json("MediaObject", "The object; a signed link when available."), **auth,
                          "404": _problem("not-found: no such reference, or not readable by you")}}},
        f"{_PREFIX}/blob/{{ref}}": {"get": {
            "tags": ["media"], "operationId": "mediaBlob", "summary": "The bytes behind a signed link (local store)",
            "security": [], "parameters": [
                _REF, {"name": "exp", "in": "query", "required": True, "schema": {"type": "string"}},
                {"name": "sig", "in": "query", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file, as an attachment.",
                                  "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                      "format": "binary"}}}},
                          "403": _problem("forbidden: the link is forged or expired"),
                          "404": _problem("not-found: no such object here")}}},
    }
