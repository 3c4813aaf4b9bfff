"""Resumable uploads over tus 1.0, `/api/v1/transfer/` (docs/protocol.md "Transfer").

Core (HEAD, PATCH), Creation and Creation With Upload (POST), Checksum (sha1, sha256),
Termination (DELETE) and Expiration; OPTIONS answers discovery without authentication; `GET
/api/v1/transfer/<id>` describes an upload to its owner as JSON. Every other method needs a
bearer token (user or device) and `Tus-Resumable: 1.0.0`. The storage, the locking and the
completion hooks are `fieldsync.transfer.tus`; this module only parses and renders.
"""

from __future__ import annotations

import json
import threading
import time

from flask import Blueprint, Flask, Response, current_app, g, request

from fieldsync.api.auth import authenticate_request
from fieldsync.codegen.openapi import API_PREFIX
from fieldsync.errors import Problem, ProblemType
from fieldsync.transfer.tus import (CHECKSUM_ALGORITHMS, TUS_EXTENSIONS, TUS_VERSION, Upload, UploadStore,
                                    format_metadata, http_date, parse_checksum, parse_metadata, parse_size)

__all__ = ["TRANSFER_PREFIX", "blueprint", "register_transfer"]

TRANSFER_PREFIX = API_PREFIX + "/transfer"
OFFSET_STREAM = "application/offset+octet-stream"
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
SWEEP_EVERY = 300.0   # seconds between opportunistic sweeps of expired uploads
blueprint = Blueprint("fieldsync_transfer", __name__)


def register_transfer(app: Flask) -> None:
    """Mount the tus server and give the app's state its UploadStore (`state.transfer`)."""
    state = app.extensions["fieldsync"]
    config = state.config
    state.transfer = UploadStore(config.data_dir / "transfer", max_bytes=int(config["TRANSFER_MAX_BYTES"]),
                                 expires_after=float(config["TRANSFER_EXPIRES_SECONDS"]))
    state.transfer_swept = [0.0, threading.Lock()]
    app.register_blueprint(blueprint, url_prefix=TRANSFER_PREFIX)


def _store() -> UploadStore:
    return current_app.extensions["fieldsync"].transfer


def _tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = TUS_VERSION
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.before_request
def _check() -> None:
    state = current_app.extensions["fieldsync"]
    # a PATCH may carry up to Tus-Max-Size; the app-wide MAX_CONTENT_LENGTH is for JSON bodies
    request.max_content_length = state.transfer.max_bytes
    if request.method == "OPTIONS":
        return   # discovery: no token, no version header (tus 1.0 §OPTIONS)
    g.snapshot = state.current()
    g.principal = authenticate_request(kind=ProblemType.UNAUTHENTICATED, channel="sync")
    if request.method != "GET" and request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise Problem(ProblemType.TUS_VERSION_UNSUPPORTED, f"send Tus-Resumable: {TUS_VERSION}",
                      headers={"Tus-Version": TUS_VERSION}, extra={"supported": [TUS_VERSION]})
    _sweep_now_and_then(state)


@blueprint.after_request
def _after(response: Response) -> Response:
    return _tus_headers(response)


def _sweep_now_and_then(state) -> None:
    """Remove expired uploads at most every SWEEP_EVERY seconds, on some request's way."""
    last, lock = state.transfer_swept
    now = time.monotonic()
    if now - last < SWEEP_EVERY or not lock.acquire(blocking=False):
        return
    try:
        state.transfer_swept[0] = now
        state.transfer.sweep()
    finally:
        lock.release()


def _offset_headers(upload: Upload) -> dict[str, str]:
    return {"Upload-Offset": str(upload.offset), "Upload-Expires": http_date(upload.expires)}


def _content_length() -> int | None:
    value = request.headers.get("Content-Length")
    return None if value is None else parse_size(value, "Content-Length")


def _body_follows() -> bool:
    """Whether the request carries upload bytes (Creation With Upload, PATCH)."""
    length = _content_length()
    return length != 0 and (length is not None or "chunked" in request.headers.get("Transfer-Encoding", "").lower())


def _require_offset_stream() -> None:
    kind = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if kind != OFFSET_STREAM:
        raise Problem(ProblemType.UNSUPPORTED_MEDIA_TYPE, f"upload bytes go with Content-Type: {OFFSET_STREAM}")


@blueprint.route("", methods=["OPTIONS"], strict_slashes=False)
@blueprint.route("/<upload_id>", methods=["OPTIONS"])
def discover(upload_id: str | None = None):
    """tus discovery: versions, extensions, the size limit and the checksum algorithms."""
    response = Response(status=204)
    response.headers.update({"Tus-Version": TUS_VERSION, "Tus-Extension": ",".join(TUS_EXTENSIONS),
                             "Tus-Max-Size": str(_store().max_bytes),
                             "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS)})
    return response


@blueprint.route("", methods=["POST"], strict_slashes=False)
def create():
    """Creation (and Creation With Upload): 201 with Location, the new upload's URL."""
    length = parse_size(request.headers.get("Upload-Length"), "Upload-Length")
    if "Upload-Defer-Length" in request.headers:
        raise Problem(ProblemType.BAD_REQUEST, "Upload-Defer-Length is not supported; send Upload-Length")
    metadata = parse_metadata(request.headers.get("Upload-Metadata"))
    store = _store()
    checksum = None
    if _body_follows():
        _require_offset_stream()
        checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    upload = store.create(g.principal, length, metadata)
    headers = {"Location": f"{TRANSFER_PREFIX}/{upload.id}", **_offset_headers(upload)}
    if _body_follows() or length == 0:
        try:
            upload = store.append(upload.id, g.principal, 0, request.stream, content_length=_content_length(),
                                  checksum=checksum)
        except Problem as problem:
            # the upload exists: its creator resumes it from Location (tus Creation With Upload)
            problem.headers.update({"Location": headers["Location"]})
            raise
        headers.update(_offset_headers(upload))
    return Response(status=201, headers=headers)


@blueprint.route("/<upload_id>", methods=["HEAD"])
def offset(upload_id: str):
    """Core: the upload's offset (where to resume), length and metadata."""
    upload = _store().find(upload_id, g.principal)
    headers = {**_offset_headers(upload), "Upload-Length": str(upload.length)}
    if upload.metadata:
        headers["Upload-Metadata"] = format_metadata(upload.metadata)
    return Response(status=200, headers=headers)


@blueprint.route("/<upload_id>", methods=["PATCH"])
def append(upload_id: str):
    """Core: bytes at Upload-Offset; 204 with the new offset once they are durable."""
    _require_offset_stream()
    offset = parse_size(request.headers.get("Upload-Offset"), "Upload-Offset")
    checksum = parse_checksum(request.headers.get("Upload-Checksum"))
    store = _store()
    upload = store.append(upload_id, g.principal, offset, request.stream, content_length=_content_length(),
                          checksum=checksum)
    failure = store.failure(upload)
    if failure is not None:
        raise failure
    return Response(status=204, headers=_offset_headers(upload))


@blueprint.route("/<upload_id>", methods=["DELETE"])
def terminate(upload_id: str):
    """Termination: the upload and its bytes are gone; later requests get 404."""
    _store().terminate(upload_id, g.principal)
    return Response(status=204)


@blueprint.route("/<upload_id>", methods=["GET"])
def describe(upload_id: str):
    """The upload as JSON for its owner: offset, length, state, metadata, and the purpose's
    result or the problem that failed it."""
    upload = _store().find(upload_id, g.principal)
    return Response(json.dumps(upload.describe()), status=200, mimetype="application/json")


@blueprint.route("", methods=ANY_METHOD, endpoint="not_an_endpoint", strict_slashes=False)
@blueprint.route("/<path:rest>", methods=ANY_METHOD, endpoint="not_an_endpoint")
def not_an_endpoint(rest: str = ""):
    """Every other path or method under /api/v1/transfer/: 404 or 405, never the entity API's."""
    if "/" not in rest:
        allowed = ["OPTIONS", "POST"] if not rest else ["DELETE", "GET", "HEAD", "OPTIONS", "PATCH"]
        raise Problem(ProblemType.METHOD_NOT_ALLOWED, f"{request.method} is not allowed here",
                      headers={"Allow": ", ".join(allowed)})
    raise Problem(ProblemType.NOT_FOUND, "no transfer endpoint here")
