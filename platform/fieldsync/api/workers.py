"""The listener pool's admin endpoints, `/api/v1/admin/workers` (admin role only; docs/workers.md).

* `GET  /api/v1/admin/workers` — the desired pool size, the queue's depth and every process's
  heartbeat row (stale ones flagged).
* `POST /api/v1/admin/workers` `{"queue": "push", "threads": N}` (1..64) — sets the desired
  size; this process resizes at once, the others at their next heartbeat.
* `GET  /api/v1/admin/workers/log?limit=` — the latest processing-log entries, newest first.

Errors are problem+json like the rest of the API; a bad size is 422 `validation`.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request

from fieldsync.errors import InvalidPoolSize, JsonRefused, Problem, ProblemType
from fieldsync.api.auth import authenticate_request, refuse_device_token
from fieldsync.codegen.openapi import API_PREFIX
from fieldsync.defs.values import FieldProblem
from fieldsync.untrusted import load_json, parse_int
from fieldsync.workers.fleet import (attach, check_pool_size, processing_entries, set_desired_size,
                                     workers_status)

__all__ = ["blueprint", "register_workers"]

blueprint = Blueprint("fieldsync_workers", __name__)
LOG_LIMIT_DEFAULT, LOG_LIMIT_MAX = 100, 1000


def register_workers(app: Flask) -> None:
    """Mount the endpoints and give the app's sync service its processing log and its
    WorkerControl (`state.workers`, started by whoever starts the listeners)."""
    state = app.extensions["fieldsync"]
    state.workers = attach(state)
    app.register_blueprint(blueprint, url_prefix=API_PREFIX + "/admin/workers")


def _state():
    return current_app.extensions["fieldsync"]


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")


@blueprint.before_request
def _authenticate() -> None:
    g.principal = authenticate_request(channel="admin")   # 401/429, idle timeout, revocation (docs/access.md)
    refuse_device_token(g.principal, "manage workers")
    if g.principal.role != "admin":
        raise Problem(ProblemType.FORBIDDEN, "only an admin may see or change the listener pool")


class _QueueOf:
    """The push queue, opened only inside the bounded depth read of workers_status (an SQS
    that does not answer must not hold this request while it opens)."""

    def __init__(self, sync) -> None:
        self.sync = sync

    def depth(self):
        return self.sync.queue.depth()


def _status() -> dict[str, Any]:
    state = _state()
    return workers_status(state.engine, _QueueOf(state.sync))


@blueprint.get("")
def status():
    return _json(_status())


@blueprint.post("")
def resize():
    try:
        body = load_json(request.get_data(cache=False))   # depth bounded before parsing
    except JsonRefused:
        body = None
    if not isinstance(body, dict):
        raise Problem(ProblemType.BAD_REQUEST, "send a JSON object: {\"queue\": \"push\", \"threads\": N}")
    queue, threads = body.get("queue", "push"), body.get("threads")
    try:
        check_pool_size(queue, threads)
    except InvalidPoolSize as exc:
        raise Problem(ProblemType.VALIDATION, str(exc), errors=[FieldProblem(exc.field, str(exc))]) from None
    state = _state()
    set_desired_size(state.engine, queue, threads, f"{g.principal.user_id} (api)")
    control = getattr(state, "workers", None)
    if control is not None and control.running:
        control.tick()   # this process at once; the others at their next heartbeat
    return _json(_status())


@blueprint.get("/log")
def processing_log():
    raw = request.args.get("limit", str(LOG_LIMIT_DEFAULT))
    try:
        limit = parse_int(raw, low=1, high=LOG_LIMIT_MAX)
    except ValueError:
        raise Problem(ProblemType.VALIDATION,
                      f"limit must be a whole number from 1 to {LOG_LIMIT_MAX}, not {raw!r}",
                      errors=[FieldProblem("limit", f"from 1 to {LOG_LIMIT_MAX}")])
    return _json({"items": processing_entries(_state().engine, limit)})
