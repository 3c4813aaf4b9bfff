"""Media endpoints, `/api/v1/media/…` (docs/protocol.md §16): thin views over `MediaService`.

    POST /media/<ref>/upload     where the bytes go (tus here, or a presigned S3 POST)
    POST /media/<ref>/complete   the upload finished: checked (S3: HEAD) and marked available
    GET  /media/<ref>            state, and a signed download link for a reader of the record
    GET  /media/blob/<ref>       the local store's bytes, for a link signed by the server

The first three take a bearer token (user or device). The blob route takes no token: its
signed, expiring query is the credential, as a presigned S3 URL is (docs/security.md).
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from cryptography.exceptions import InvalidTag
from flask import Blueprint, Flask, Response, current_app, g, request, stream_with_context

from fieldsync.api.auth import authenticate_request
from fieldsync.codegen.openapi import API_PREFIX
from fieldsync.defs.access import access_rule
from fieldsync.defs.values import is_media_ref
from fieldsync.ids import utc_now
from fieldsync.errors import NotFound, Problem, ProblemType
from fieldsync.media.service import MediaService, media_store_from_config
from fieldsync.store.records import RowFilter
from fieldsync.untrusted import load_json

__all__ = ["MEDIA_PREFIX", "blueprint", "register_media"]

MEDIA_PREFIX = API_PREFIX + "/media"
blueprint = Blueprint("fieldsync_media", __name__)


def register_media(app: Flask) -> None:
    """Mount the media endpoints, give the app's state its MediaService (`state.media`) and let
    the tus server hand completed `media` uploads to it."""
    state = app.extensions["fieldsync"]
    from fieldsync.media.service import ReportingStore
    store = ReportingStore(media_store_from_config(state.config, state.crypto.keyring), state.dependencies)
    clock = state.clock or utc_now
    state.media = MediaService(state.engine, store, clock=clock)
    app.register_blueprint(blueprint, url_prefix=MEDIA_PREFIX)
    try:
        from fieldsync.transfer.tus import on_complete
    except ImportError:   # a build without the tus server: uploads only to S3
        return
    on_complete("media")(_media_uploaded)


def _media_uploaded(upload, source, principal) -> dict[str, Any] | None:
    """Completion hook of tus uploads whose metadata says purpose `media` and names `ref`."""
    state = current_app.extensions["fieldsync"]
    ref = (upload.metadata or {}).get("ref", "")
    return state.media.accept_upload(state.current().model, ref, source, principal)


def _service() -> MediaService:
    return current_app.extensions["fieldsync"].media


def _json(body: Any, status: int = 200) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.before_request
def _authenticate() -> None:
    g.snapshot = current_app.extensions["fieldsync"].current()
    if request.endpoint == "fieldsync_media.blob":
        return   # the signed query is the credential
    g.principal = authenticate_request(channel="rest")


def _body() -> dict[str, Any]:
    if not request.data:
        return {}
    if request.mimetype != "application/json":
        raise Problem(ProblemType.UNSUPPORTED_MEDIA_TYPE, "the body must be application/json")
    try:
        body = load_json(request.get_data())
    except ValueError:
        raise Problem(ProblemType.BAD_REQUEST, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise Problem(ProblemType.BAD_REQUEST, "the body must be a JSON object")
    return body


@blueprint.route("/<path:ref>/upload", methods=["POST"])
def upload(ref: str):
    tus_url = API_PREFIX + "/transfer/"
    return _json(_service().request_upload(g.snapshot.model, ref, g.principal, _body(), tus_url))


@blueprint.route("/<path:ref>/complete", methods=["POST"])
def complete(ref: str):
    return _json(_service().complete(g.snapshot.model, ref, g.principal))


def _readable_record(row: dict[str, Any]) -> dict[str, Any]:
    """The record that holds the reference now, as the caller's role reads it; 404 when the
    caller may not read it, may not see the field, or the record no longer holds it. A child
    is as readable as its live parent (the row filter of a child rule includes the parent)."""
    model = g.snapshot.model
    principal = g.principal
    try:
        entity = model.entity(row["entity"] or "")
    except KeyError:
        raise Problem(ProblemType.NOT_FOUND, "no media object with this reference for you") from None
    rule = access_rule(model, entity, principal.role)
    if rule is None or not rule.can("read") or row["record_id"] is None:
        raise Problem(ProblemType.NOT_FOUND, "no media object with this reference for you")
    visible = rule.permission.visible
    if visible is not None and row["field"] not in visible:
        # a role that sees the record with the field masked (PHI) gets no link either
        raise Problem(ProblemType.NOT_FOUND, "no media object with this reference for you")
    try:
        record = g.snapshot.store.get(entity, row["record_id"],
                                      row_filter=RowFilter.for_rule(rule, principal.expression_user()))
    except NotFound:
        raise Problem(ProblemType.NOT_FOUND, "no media object with this reference for you") from None
    if record.get(row["field"]) != row["ref"]:
        raise Problem(ProblemType.NOT_FOUND, "no media object with this reference for you")
    return record


@blueprint.route("/<path:ref>", methods=["GET"])
def describe(ref: str):
    service = _service()
    row = service.row(ref)
    if row is None:
        raise Problem(ProblemType.NOT_FOUND, "no media object with this reference for you")
    record = _readable_record(row)
    out = service.describe(row)
    if row["state"] == "available":
        state = current_app.extensions["fieldsync"]
        if row["phi"]:
            _audit_phi(state, row, record)
        now = int(time.time())
        blob = request.host_url.rstrip("/") + f"{MEDIA_PREFIX}/blob/{ref}"
        out["url"] = service.download_url(row, blob, now)
        out["expires_in"] = service.store.url_ttl
    return _json(out)


def _audit_phi(state, row: dict[str, Any], record: dict[str, Any]) -> None:
    """Invariant 8: a link to PHI media is a PHI read, audited before the link is given."""
    from fieldsync.audit.events import Disclosure, read_events
    entity = g.snapshot.model.entity(row["entity"])
    principal = g.principal
    subject = record.get(entity.subject) if entity.subject else None
    for event in read_events([Disclosure(entity, row["record_id"], (row["field"],), subject)], codec=state.crypto,
                             actor=principal.user_id, role=principal.role, device=principal.device_id,
                             channel="rest", detail={"media": row["ref"]}):
        state.audit.record(event)


@blueprint.route("/blob/<path:ref>", methods=["GET"])
def blob(ref: str):
    service = _service()
    if service.store.kind != "local":
        raise Problem(ProblemType.NOT_FOUND, "downloads come from the object store here")
    service.store.check_signature(ref, request.args.get("exp", ""), request.args.get("sig", ""), int(time.time()))
    row = service.row(ref) if is_media_ref(ref) else None
    if row is None or row["state"] != "available" or row["location"] is None:
        raise Problem(ProblemType.NOT_FOUND, "no media object with this reference")
    chunks = service.store.read(ref, row["location"], sealed=bool(row["phi"]))
    try:   # the first chunk is authenticated before the status line goes out
        first = next(chunks, b"")
    except (InvalidTag, ValueError, OSError):
        raise Problem(ProblemType.INTEGRITY_FAILURE, "the stored media file failed its integrity check") from None
    body = itertools.chain((first,), chunks)
    response = Response(stream_with_context(body), mimetype=row["content_type"] or "application/octet-stream")
    response.headers["Content-Length"] = str(row["size"])
    response.headers["Content-Disposition"] = "attachment"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-store"
    return response
