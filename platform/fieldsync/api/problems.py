"""RFC 9457 problem responses: the handlers that render every error (ours, Werkzeug's and
unexpected ones) as `application/problem+json`. The exception the views raise (`Problem`) and
the registry of problem types (`ProblemType`) are in fieldsync.errors."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from fieldsync.codegen.openapi import PROBLEM_MEDIA_TYPE
from fieldsync.errors import IntegrityFailure, Problem, ProblemType, status_type

log = logging.getLogger("fieldsync.api")


def problem_response(problem: Problem) -> Response:
    body: dict[str, Any] = {"type": problem.kind.uri, "title": problem.title,
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
        return problem_response(Problem(status_type(status), detail, status=status, headers=headers))

    @app.errorhandler(IntegrityFailure)
    def _integrity(exc: IntegrityFailure):
        # a stored ciphertext that does not decrypt: altered at rest, or moved between rows or
        # fields (the message names entity, field and record, never a value)
        log.error("integrity check failed on %s %s: %s", request.method, request.path, exc)
        return problem_response(Problem(ProblemType.INTEGRITY_FAILURE, str(exc)))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(Problem(ProblemType.INTERNAL,
                                        "the server failed to handle this request; it has been logged"))
