"""RFC 9457 problem responses: the handlers that render every error (ours, Werkzeug's and
unexpected ones) as `application/problem+json`. The exception the views raise (`Problem`) and
the registry of problem types (`ProblemType`) are in fieldsync.errors."""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import Flask, Response, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from fieldsync.codegen.openapi import PROBLEM_MEDIA_TYPE
from fieldsync.errors import IntegrityFailure, KeyProviderUnreachable, KeyUnavailable, Problem, ProblemType, status_type

log = logging.getLogger("fieldsync.api")

# seconds a client is told to wait after a dependency outage (a PostgreSQL restart or failover
# takes seconds; the SDK's backoff waits at least this long, with jitter)
OUTAGE_RETRY_AFTER = 3


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

    @app.errorhandler(SQLAlchemyError)
    def _database(exc: SQLAlchemyError):
        from fieldsync.store.engine import database_unavailable, describe_unavailable
        if not database_unavailable(exc):
            return _unexpected(exc)
        # the database is restarting, failing over or out of connections: a quick 503 the
        # device retries, never a hang or a driver's traceback (docs/operations.md "Outages")
        reason = describe_unavailable(exc)
        log.warning("database unavailable on %s %s: %s", request.method, request.path, reason)
        _dependency_failed("database", reason)
        return problem_response(Problem(ProblemType.UNAVAILABLE,
                                        "the database is unavailable for the moment; retry after the delay given",
                                        headers={"Retry-After": str(OUTAGE_RETRY_AFTER)},
                                        extra={"retry_after": OUTAGE_RETRY_AFTER}))

    @app.errorhandler(KeyUnavailable)
    def _keys(exc: KeyUnavailable):
        # a data key this process has not cached could not be unwrapped or made: KMS does not
        # answer (KeyProviderUnreachable), or refuses (a disabled key). Either way the request
        # itself is fine and nothing of it was written; the message names keys, never values
        outage = isinstance(exc, KeyProviderUnreachable)
        (log.warning if outage else log.error)("key provider failed on %s %s: %s", request.method, request.path, exc)
        return problem_response(Problem(ProblemType.UNAVAILABLE,
                                        "a data key is unavailable for the moment (the key provider did not "
                                        "answer); retry after the delay given" if outage else
                                        "a data key is unavailable (the key provider refused it); retry later",
                                        headers={"Retry-After": str(OUTAGE_RETRY_AFTER)},
                                        extra={"retry_after": OUTAGE_RETRY_AFTER}))

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(Problem(ProblemType.INTERNAL,
                                        "the server failed to handle this request; it has been logged"))


def _dependency_failed(name: str, reason: str) -> None:
    """Record an outage in the app's dependency registry (read by the readiness endpoint)."""
    from flask import current_app
    state = current_app.extensions.get("fieldsync")
    deps = getattr(state, "dependencies", None)
    if deps is not None:
        deps.failed(name, reason)
