"""Readiness (`GET /api/v1/ready`): can this server serve, and how does each dependency answer?

Liveness (`GET /api/v1/health`) says only that the process answers and touches nothing. A
load balancer asks readiness to decide whether to send traffic here: it is 200 while the
database answers — pulls, REST, pushes (through the spool, docs/operations.md "Outages") and
the admin UI need nothing else to be served — and 503 when the database does not. The queue,
the key provider and the object store are reported as the server last found them; a queue
outage is `degraded` (pushes are spooled), not a reason to take the server out.

The database is probed here, once per request and bounded: `SELECT 1` in a probe thread,
waited for at most `READY_TIMEOUT_SECONDS`; a probe still hanging from an earlier request
counts as down without starting another. The answer names no host and no error text (it
needs no token); `fieldsync workers status` and the admin dashboard show the errors.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import sqlalchemy as sa

from fieldsync.dependencies import DATABASE, DEGRADED, DOWN, QUEUE, UP

__all__ = ["readiness"]

_probes_lock = threading.Lock()


def probe_database(state: Any, timeout: float) -> bool:
    """One bounded `SELECT 1`; reports the outcome to the dependency registry. The probe in
    flight is kept on the app's state, so a hanging one is waited on, not started again."""
    with _probes_lock:
        future = getattr(state, "ready_probe", None)
        if future is None or future.done():
            future = Future()
            state.ready_probe = future
            threading.Thread(target=_probe, args=(state, future), name="fieldsync-ready-probe", daemon=True).start()
    try:
        future.result(timeout)
    except TimeoutError:
        state.dependencies.failed(DATABASE, f"no answer within {timeout:g} s")
        return False
    except Exception as exc:
        state.dependencies.failed(DATABASE, exc)
        return False
    state.dependencies.succeeded(DATABASE)
    return True


def _probe(state: Any, future: Future) -> None:
    try:
        with state.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except BaseException as exc:   # reported by the waiting request
        future.set_exception(exc)
    else:
        future.set_result(True)


def readiness(state: Any) -> tuple[dict[str, Any], int]:
    """The readiness answer and its status code."""
    timeout = float(state.config.get("READY_TIMEOUT_SECONDS") or 2.0)
    database = probe_database(state, timeout)
    spool = None
    if database and state.sync is not None and state.sync.spool is not None:
        try:
            depth = state.sync.spool_depth()
            spool = depth.to_dict() if depth is not None else None
        except Exception:   # the database failed between the probe and this read
            spool = None
    dependencies = {name: s.to_dict(detail=False) for name, s in state.dependencies.snapshot().items()}
    if spool and spool["batches"] and dependencies[QUEUE]["state"] == UP:
        dependencies[QUEUE]["state"] = DEGRADED   # back, and still draining the spool
    worst = {s["state"] for s in dependencies.values()}
    status = "unready" if not database else ("degraded" if worst & {DEGRADED, DOWN} else "ready")
    body = {"status": status, "dependencies": dependencies}
    if spool is not None:
        body["spool"] = spool
    return body, (200 if database else 503)
