"""RFC 9457 problem responses: one exception type for the API, and the handlers that render
every error (ours, Werkzeug's and unexpected ones) as `application/problem+json`."""

from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Mapping

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from fieldsync.codegen.openapi import PROBLEM_MEDIA_TYPE, problem_type
from fieldsync.defs.values import FieldProblem
from fieldsync.crypto.fields import IntegrityFailure

log = logging.getLogger("fieldsync.api")

# status -> (type slug, title); the slugs are part of the API contract (clients match on them)
KINDS: dict[int, tuple[str, str]] = {
    400: ("bad-request", "Bad request"),
    401: ("unauthorized", "Authentication required"),
    403: ("forbidden", "Forbidden"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    412: ("precondition-failed", "Precondition failed"),
    413: ("payload-too-large", "Payload too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation", "Validation failed"),
    428: ("precondition-required", "Precondition required"),
    500: ("internal", "Internal server error"),
}


class Problem(Exception):
    """Raised by the API's views to answer with a problem document."""

    def __init__(self, status: int, detail: str, *, slug: str | None = None, title: str | None = None,
                 errors: Iterable[FieldProblem] | None = None, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None):
        super().__init__(detail)
        self.extra = dict(extra or {})  # extension members (RFC 9457 §3.2), e.g. max_bytes
        default_slug, default_title = KINDS.get(status, ("error", "Error"))
        self.status = status
        self.slug = slug or default_slug
        self.title = title or default_title
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})


def problem_response(problem: Problem) -> Response:
    body: dict[str, Any] = {"type": problem_type(problem.slug), "title": problem.title,
                            "status": problem.status, "detail": problem.detail, "instance": request.path}
    if problem.errors is not None:
        body["errors"] = [e.as_dict() for e in problem.errors]
    body.update(problem.extra)
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_MEDIA_TYPE)
    for key, value in problem.headers.items():
        response.headers[key] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Render every error as problem+json; never leak a traceback to the client."""

    @app.errorhandler(Problem)
    def _problem(exc: Problem):
        return problem_response(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        status = exc.code or 500
        headers = {}
        if status == 405 and exc.valid_methods:
            headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        detail = {
            404: "no such resource",
            405: f"{request.method} is not allowed here",
            413: "the request body is larger than this server accepts",
        }.get(status, exc.description or "")
        return problem_response(Problem(status, detail, headers=headers))

    @app.errorhandler(IntegrityFailure)
    def _integrity(exc: IntegrityFailure):
        # a stored ciphertext that does not decrypt: altered at rest, or moved between rows or
        # fields (the message names entity, field and record, never a value)
        log.error("integrity check failed on %s %s: %s", request.method, request.path, exc)
        return problem_response(Problem(500, str(exc), slug="integrity-failure", title="Stored data failed its integrity check"))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(Problem(500, "the server failed to handle this request; it has been logged"))
