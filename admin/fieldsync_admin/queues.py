"""Queues and workers (issue 12, section 3; docs/admin.md): the push queue and the listener pools.

One page for admins: the queue backend (embedded SQLite, Amazon SQS or a STOMP/JMS broker) and
its depth, in flight and dead letters, each dead letter with Replay (one or all, as `fieldsync
dlq replay`); the listener pool's desired size and every process's heartbeat row (stale ones
flagged) with a form that changes the size live (as `POST /api/v1/admin/workers`: this process
resizes at once, the others at their next heartbeat); the latest processing-log entries; and
the throughput of the last hour, drawn here as inline SVG (no script, no charting library).

Every change is audited (action "admin", channel "admin"). Nothing here shows a message body:
a dead letter is its id, device, mutation count, deliveries and enqueue time (invariant 7).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from flask import flash, redirect, request, url_for
from flask_admin import BaseView, expose
from markupsafe import Markup, escape

from fieldsync.errors import InvalidPoolSize
from fieldsync.sync.service import dead_letter_summaries
from fieldsync.workers.fleet import (MAX_THREADS, MIN_THREADS, check_pool_size, processing_entries,
                                     set_desired_size, throughput_per_minute, workers_status)
from fieldsync.workers.fleet import QUEUE_READ_SECONDS
from fieldsync.dependencies import call_within

from fieldsync_admin.security import RoleView, audit, current_user, state

__all__ = ["QueuesView", "backend_of", "throughput_svg", "views"]

log = logging.getLogger("fieldsync.admin")

QUEUE = "push"
DEAD_LETTERS_SHOWN = 100
LOG_ENTRIES_SHOWN = 50
METRICS = {"batches": "batches per minute", "results": "mutations per minute"}

_BACKENDS = {"sqlite": "embedded SQLite", "sqs": "Amazon SQS", "sqs+fifo": "Amazon SQS (FIFO)",
             "stomp": "STOMP (JMS broker)", "stomp+ssl": "STOMP over TLS (JMS broker)"}


def backend_of(config: Any) -> dict[str, Any]:
    """The push queue's backend as an operator may see it: its kind, where it is (host and
    queue name; never a user, password or query string) and whether bodies are encrypted."""
    url = config.queue_url
    scheme = url.partition("://")[0]
    parts = urlsplit(url)
    if scheme == "sqlite":
        where = parts.path.rsplit("/", 1)[-1] or parts.path   # the file name; the path is the server's
    else:
        host = parts.hostname or ""
        where = f"{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"
    return {"kind": _BACKENDS.get(scheme, scheme), "scheme": scheme, "where": where,
            "encrypted": bool(config.get("QUEUE_ENCRYPTION", True))}


def throughput_svg(points: list[dict[str, Any]], metric: str = "batches", *, width: int = 720,
                   height: int = 180) -> Markup:
    """A bar chart of `points` (fleet.throughput_per_minute) as inline SVG: one bar per minute,
    failed ones stacked in red, the axis labelled with the peak and the first and last minute."""
    left, bottom, top = 44, 22, 10
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max([p[metric] for p in points] + [1])
    bar = plot_w / max(len(points), 1)
    total = sum(p[metric] for p in points)
    label = METRICS[metric]
    parts = [f'<svg id="fs-throughput" xmlns="http://www.w3.org/2000/svg" role="img" width="100%" '
             f'viewBox="0 0 {width} {height}" data-metric="{metric}" data-total="{total}" data-peak="{peak}">',
             f'<title>{escape(label)} over the last {len(points)} minutes: {total} in all, peak {peak}</title>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 8}" y2="{top + plot_h}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#888"/>',
             f'<text x="{left - 4}" y="{top + 8}" font-size="10" text-anchor="end">{peak}</text>',
             f'<text x="{left - 4}" y="{top + plot_h}" font-size="10" text-anchor="end">0</text>']
    for index, point in enumerate(points):
        value = point[metric]
        if not value:
            continue
        h = plot_h * value / peak
        x = left + index * bar + 0.5
        parts.append(f'<rect class="fs-bar" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="#2b6cb0" data-minute="{point["minute"]}" data-value="{value}">'
                     f'<title>{point["minute"]}: {value}</title></rect>')
        failed = min(point.get("failed", 0), value) if metric == "batches" else 0
        if failed:
            fh = plot_h * failed / peak
            parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - fh:.1f}" width="{max(bar - 1, 1):.1f}" '
                         f'height="{fh:.1f}" fill="#c53030"><title>{failed} failed</title></rect>')
    if points:
        for x, anchor, minute in ((left, "start", points[0]["minute"]), (width - 8, "end", points[-1]["minute"])):
            parts.append(f'<text x="{x}" y="{height - 6}" font-size="10" text-anchor="{anchor}">'
                         f'{escape(minute[11:16])} UTC</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


class QueuesView(RoleView, BaseView):
    """The push queue, its dead letters, the listener pools and the processing log (admins)."""

    roles = ("admin",)

    def __init__(self, snapshot: Any):
        super().__init__(name="Queues and workers", endpoint="queues", url="queues", category="Operations")
        self.snapshot = snapshot

    @expose("/")
    def index(self):
        st = state()
        metric = request.args.get("metric", "batches")
        if metric not in METRICS:
            metric = "batches"
        problem = None
        status: dict[str, Any] | None = None
        dead: list[dict[str, Any]] = []
        try:
            queue = call_within(QUEUE_READ_SECONDS, lambda: st.sync.queue, "opening the push queue")
            status = workers_status(st.engine, queue, queue_name=QUEUE)   # its depth is bounded too
            dead = call_within(QUEUE_READ_SECONDS, lambda: dead_letter_summaries(queue, DEAD_LETTERS_SHOWN),
                               "the push queue's dead letters")
        except Exception as exc:   # a broker or SQS out of reach: the page still shows the rest
            log.warning("admin queues page: the queue did not answer (%s: %s)", type(exc).__name__, exc)
            problem = f"the queue did not answer ({type(exc).__name__}); depth and dead letters are unknown"
            if status is None:
                status = _status_without_queue(st)
        control = getattr(st, "workers", None)
        points = throughput_per_minute(st.engine, minutes=60)
        return self.render(
            "fieldsync_admin/queues_index.html", backend=backend_of(st.config), status=status, dead=dead,
            dead_shown=DEAD_LETTERS_SHOWN, problem=problem, entries=processing_entries(st.engine, LOG_ENTRIES_SHOWN),
            this_worker=control.worker_id if control is not None else None,
            this_running=bool(control is not None and control.running),
            chart=throughput_svg(points, metric), metric=metric, metrics=METRICS,
            hour_batches=sum(p["batches"] for p in points), hour_results=sum(p["results"] for p in points),
            min_threads=MIN_THREADS, max_threads=MAX_THREADS)

    @expose("/pool", methods=["POST"])
    def pool(self):
        st = state()
        raw = request.form.get("threads", "").strip()
        try:
            threads = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 3 else raw
            check_pool_size(QUEUE, threads)
        except InvalidPoolSize as exc:
            flash(str(exc), "danger")
            return redirect(url_for(".index")), 303
        user = current_user()
        before = _desired(st)
        done = set_desired_size(st.engine, QUEUE, threads, f"{user.user_id} (admin ui)")
        audit("admin", detail={"event": "pool_resize", "queue": QUEUE, "threads": threads, "previous": before})
        control = getattr(st, "workers", None)
        if control is not None and control.running:
            control.tick()   # this process at once; the others at their next heartbeat
        flash(f"listener pool of queue {QUEUE}: {done.threads} thread(s) per process from now on; "
              "this process resized at once, the others follow at their next heartbeat", "success")
        return redirect(url_for(".index")), 303

    @expose("/replay", methods=["POST"])
    def replay(self):
        st = state()
        replay_all = request.form.get("all") == "1"
        message_id = request.form.get("message_id", "").strip()
        if not replay_all and (not 0 < len(message_id) <= 256 or "\x00" in message_id):
            flash("name a dead letter to replay, or replay all", "danger")
            return redirect(url_for(".index")), 303
        try:
            moved = call_within(3 * QUEUE_READ_SECONDS,
                                lambda: st.sync.queue.replay_dead(None if replay_all else [message_id]),
                                "the push queue")
        except Exception as exc:
            log.warning("admin replay: the queue refused (%s: %s)", type(exc).__name__, exc)
            audit("admin", outcome="failure", detail={"event": "dlq_replay", "queue": QUEUE,
                                                      "all": replay_all, "error": type(exc).__name__,
                                                      **({} if replay_all else {"message_id": message_id})})
            flash(f"the queue refused the replay ({type(exc).__name__}); nothing was moved", "danger")
            return redirect(url_for(".index")), 303
        audit("admin", detail={"event": "dlq_replay", "queue": QUEUE, "all": replay_all, "moved": moved,
                               **({} if replay_all else {"message_id": message_id})})
        if not replay_all and moved == 0:
            flash(f"{message_id} is not a dead letter (any more): nothing was replayed", "warning")
        else:
            flash(f"replayed {moved} dead letter(s) onto the push queue", "success")
        return redirect(url_for(".index")), 303


def _desired(st: Any) -> int | None:
    from fieldsync.workers.fleet import desired_size
    with st.engine.connect() as conn:
        current = desired_size(conn, QUEUE)
    return current.threads if current else None


def _status_without_queue(st: Any) -> dict[str, Any]:
    """workers_status with the depth unknown (the queue did not answer)."""
    class _Silent:
        def depth(self):
            from fieldsync.queue.embedded import QueueDepth
            return QueueDepth(None, None, None)
    return workers_status(st.engine, _Silent(), queue_name=QUEUE)


def views(snapshot: Any) -> list:
    return [QueuesView(snapshot)]
