"""Workers: the listener pools of every process, their shared desired size and the processing
log (docs/workers.md). The push queue and its dead letters are `fieldsync.sync.service`'s.

Every process that applies push batches (a server with `SYNC_LISTENERS` > 0, or a `fieldsync
worker`) runs a `WorkerControl`. Its heartbeat, every `interval` seconds, does three things:

* reads the **desired size** of its queue from `fs_worker_config` (written by `POST
  /api/v1/admin/workers` or `fieldsync workers set`) and, when it changed since the last look,
  resizes its pool to it — live: `ListenerPool.resize` lets a retiring thread finish its handler
  and give back the messages it has not started, so nothing is lost (invariant 1) and a
  redelivery stays exact-once through the ledger (invariant 2);
* writes its own row of `fs_workers` (threads, messages in flight, processed and failed counts,
  `last_seen`). A row not refreshed for `STALE_AFTER` intervals is shown as stale: its process
  died or hangs. A process that stops cleanly deletes its row;
* deletes processing-log entries older than `PROCESSING_LOG_DAYS` (at most once an hour).

`ProcessingLog` is a `SyncService` observer: after each handled message it writes one row of
`fs_processing_log` in its own short transaction — never inside the apply transaction, so a
failure to log is a warning and never fails or repeats the message — and one JSON line on the
logger `fieldsync.sync.processing`. Neither holds PHI (invariant 7): message id, delivery
count, device id, outcome, duration, the number of new results, the worker id.

Nothing here starts a thread or touches a database at import time.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import socket
import threading
from dataclasses import dataclass
from typing import Any, Callable

import sqlalchemy as sa

from fieldsync.errors import InvalidPoolSize
from fieldsync.store.engine import create_tables, write_transaction
from fieldsync.ids import utc_now
from fieldsync.store.tables import PLATFORM_PREFIX
from fieldsync.store.sync_tables import add_missing_columns, spool_depth
from fieldsync.dependencies import call_within, describe_error

__all__ = [
    "HEARTBEAT_SECONDS", "MAX_THREADS", "PROCESSING_LOG", "QUEUES", "STALE_AFTER", "WORKERS",
    "WORKER_CONFIG", "DesiredSize", "InvalidPoolSize", "ProcessingLog", "WorkerControl", "attach",
    "check_pool_size", "create_worker_tables", "desired_size",
    "processing_entries", "prune_processing_log", "set_desired_size", "throughput_per_minute", "workers_status",
]

log = logging.getLogger("fieldsync.sync.workers")
processing_log = logging.getLogger("fieldsync.sync.processing")

QUEUES = ("push",)          # the queues a pool consumes; push batches are the only one so far
MIN_THREADS, MAX_THREADS = 1, 64
HEARTBEAT_SECONDS = 5.0
STALE_AFTER = 3             # intervals without a heartbeat before a process shows as stale
FORGET_STALE_AFTER = dt.timedelta(days=1)   # a stale row is deleted by the next live heartbeat
PRUNE_EVERY = 3600.0        # seconds between processing-log retention passes of one process


worker_metadata = sa.MetaData()

WORKER_CONFIG = sa.Table(
    PLATFORM_PREFIX + "worker_config", worker_metadata,
    sa.Column("queue", sa.String(32), primary_key=True),
    sa.Column("threads", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_by", sa.String(128), nullable=False),
)

WORKERS = sa.Table(
    PLATFORM_PREFIX + "workers", worker_metadata,
    sa.Column("worker_id", sa.String(64), primary_key=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("queue", sa.String(32), nullable=False),
    sa.Column("threads", sa.Integer, nullable=False),
    sa.Column("in_flight", sa.Integer, nullable=False),
    sa.Column("processed", sa.BigInteger, nullable=False),
    sa.Column("failed", sa.BigInteger, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    sa.Column("heartbeat_s", sa.Float, nullable=False),   # its interval: stale after STALE_AFTER of them
    # JSON {name: {state, since, last_success, last_failure, error, failures}}: how the database,
    # queue, key provider and object store last answered this process (fieldsync.dependencies)
    sa.Column("dependencies", sa.Text, nullable=True),
)

PROCESSING_LOG = sa.Table(
    PLATFORM_PREFIX + "processing_log", worker_metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(128), nullable=False),
    sa.Column("receive_count", sa.Integer, nullable=False),
    sa.Column("device_id", sa.String(64), nullable=True),
    sa.Column("outcome", sa.String(16), nullable=False),   # applied | redelivery | unprocessable | failed
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("results", sa.Integer, nullable=False),      # new results the message produced
    sa.Column("worker_id", sa.String(64), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("ix_fs_processing_log_at", "at"),
)


def create_worker_tables(engine: sa.Engine) -> None:
    """Create the worker tables when missing (safe to run again, from several processes)."""
    create_tables(engine, worker_metadata)
    add_missing_columns(engine, worker_metadata)


def _utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _iso(value: dt.datetime | None) -> str | None:
    value = _utc(value)
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


# -- the desired size ---------------------------------------------------------------------------

@dataclass(frozen=True)
class DesiredSize:
    """The pool size an operator asked for, and when and by whom."""

    queue: str
    threads: int
    updated_at: dt.datetime
    updated_by: str


def check_pool_size(queue: Any, threads: Any) -> tuple[str, int]:
    """`(queue, threads)` when both are acceptable; InvalidPoolSize saying why otherwise."""
    if queue not in QUEUES:
        raise InvalidPoolSize("queue", f"queue must be one of {list(QUEUES)}, not {queue!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or not MIN_THREADS <= threads <= MAX_THREADS:
        raise InvalidPoolSize("threads", f"threads must be a whole number from {MIN_THREADS} to {MAX_THREADS}, "
                              f"not {threads!r}")
    return queue, threads


def set_desired_size(engine: sa.Engine, queue: str, threads: int, by: str, *,
                     now: dt.datetime | None = None) -> DesiredSize:
    """Record that every process consuming `queue` should run `threads` listener threads; each
    applies it at its next heartbeat. Raises InvalidPoolSize outside 1..64."""
    queue, threads = check_pool_size(queue, threads)
    now = now or utc_now()
    values = {"threads": threads, "updated_at": now, "updated_by": by[:128]}
    for attempt in range(2):
        try:
            with write_transaction(engine) as conn:
                done = conn.execute(WORKER_CONFIG.update().where(WORKER_CONFIG.c.queue == queue)
                                    .values(**values)).rowcount
                if not done:
                    conn.execute(WORKER_CONFIG.insert().values(queue=queue, **values))
            break
        except sa.exc.IntegrityError:
            if attempt:
                raise   # two first writers raced on PostgreSQL: the second goes round again as an update
    return DesiredSize(queue, threads, now, by[:128])


def desired_size(conn: sa.Connection, queue: str) -> DesiredSize | None:
    """The desired size of `queue`, or None when nobody set one (each process keeps its own)."""
    row = conn.execute(sa.select(WORKER_CONFIG).where(WORKER_CONFIG.c.queue == queue)).mappings().first()
    if row is None:
        return None
    return DesiredSize(row["queue"], row["threads"], _utc(row["updated_at"]), row["updated_by"])


# -- the control loop of one process ------------------------------------------------------------

def new_worker_id() -> str:
    """`<host>-<pid>-<random>`: unique across hosts and across restarts of one pid."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


def _in_flight(pool: Any) -> int:
    """Messages the pool holds now (claimed, not yet acked or released)."""
    return int(getattr(pool, "in_flight", 0))


class WorkerControl:
    """One process's side of the shared pool size: its heartbeat row and its resizes.

    `pool` returns the process's ListenerPool (called on each tick, so building the control
    opens no queue). `interval` is the heartbeat period in seconds; tests pass a long one and
    call `tick()` themselves, so nothing waits on time. `clock` gives the time stored in rows.
    """

    def __init__(self, engine: sa.Engine, pool: Callable[[], Any], *, queue: str = "push",
                 worker_id: str | None = None, interval: float = HEARTBEAT_SECONDS,
                 log_days: int = 14, clock: Callable[[], dt.datetime] = utc_now,
                 prune_every: float = PRUNE_EVERY, dependencies: Callable[[], dict] | None = None) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, not {interval}")
        self.engine = engine
        self.queue = queue
        self.worker_id = worker_id or new_worker_id()
        self.interval = interval
        self.log_days = log_days
        self._pool = pool
        self._dependencies = dependencies   # the process's dependency states, for its row
        self._clock = clock
        self._prune_every = dt.timedelta(seconds=prune_every)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple[int, dt.datetime] | None = None   # the desired size last acted on
        self._started_at: dt.datetime | None = None
        self._pruned_at: dt.datetime | None = None

    def __repr__(self) -> str:
        return f"WorkerControl({self.worker_id!r}, queue={self.queue!r})"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, *, adopt: bool = True) -> None:
        """Write the heartbeat row now and keep it fresh in a daemon thread until `stop()`.

        `adopt`: resize the pool to the desired size already set, if any (a server restarted
        after an operator's resize keeps it). Without it (`fieldsync worker --threads N`) the
        process keeps its own size until the desired size next changes.
        """
        with self._lock:
            if self._thread is not None:
                return
            self._stopping.clear()
            self._started_at = self._clock()
            if not adopt:
                with self.engine.connect() as conn:
                    current = desired_size(conn, self.queue)
                self._seen = (current.threads, current.updated_at) if current else None
        self.tick()
        thread = threading.Thread(target=self._run, name=f"fieldsync-workers-{self.queue}", daemon=True)
        with self._lock:
            self._thread = thread
        thread.start()

    def stop(self) -> None:
        """End the heartbeat and delete this process's row (it no longer consumes)."""
        self._stopping.set()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        try:
            with write_transaction(self.engine) as conn:
                conn.execute(WORKERS.delete().where(WORKERS.c.worker_id == self.worker_id))
        except Exception as exc:
            log.warning("%s: could not remove its row (%s); it will show as stale", self, type(exc).__name__)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.tick()
            except Exception as exc:
                log.warning("%s: heartbeat failed (%s); retrying in %.0f s", self, type(exc).__name__,
                            self.interval)

    def tick(self) -> int:
        """One heartbeat: follow a changed desired size, refresh this process's row, prune
        old processing-log entries when due. Returns the pool's thread count afterwards."""
        with self._lock:
            try:
                pool = self._pool()
            except Exception as exc:   # the queue cannot be opened (SQS down at boot): still report in
                log.warning("%s: the listener pool is not running (%s)", self, describe_error(exc))
                pool = _NoPool()
            now = self._clock()
            with self.engine.connect() as conn:
                desired = desired_size(conn, self.queue)
            if isinstance(pool, _NoPool):
                pass
            elif desired is not None and (desired.threads, desired.updated_at) != self._seen:
                self._seen = (desired.threads, desired.updated_at)
                if pool.threads != desired.threads:
                    log.info("%s: resizing from %d to %d threads (set by %s)", self, pool.threads,
                             desired.threads, desired.updated_by)
                    pool.resize(desired.threads)
            threads = pool.threads
            stats = pool.stats
            row = {"host": socket.gethostname()[:255], "pid": os.getpid(), "queue": self.queue,
                   "threads": threads, "in_flight": _in_flight(pool), "processed": stats.processed,
                   "failed": stats.failed, "last_seen": now, "heartbeat_s": float(self.interval),
                   "dependencies": json.dumps(self._dependencies()) if self._dependencies else None}
            with write_transaction(self.engine) as conn:
                done = conn.execute(WORKERS.update().where(WORKERS.c.worker_id == self.worker_id)
                                    .values(**row)).rowcount
                if not done:
                    conn.execute(WORKERS.insert().values(worker_id=self.worker_id,
                                                         started_at=self._started_at or now, **row))
                conn.execute(WORKERS.delete().where(WORKERS.c.last_seen < now - FORGET_STALE_AFTER))
            if self._pruned_at is None or now - self._pruned_at >= self._prune_every:
                self._pruned_at = now
                prune_processing_log(self.engine, self.log_days, now=now)
            return threads


class _NoPool:
    """What the heartbeat reports while the queue cannot be opened: no threads, nothing done."""
    threads = 0

    class stats:   # noqa: N801 (the shape of ListenerPool.stats)
        processed = 0
        failed = 0


# -- what an operator sees ----------------------------------------------------------------------

QUEUE_READ_SECONDS = 3.0   # an operator's read of the queue's depth waits no longer (a broker outage)


def _depth(queue: Any) -> dict[str, Any]:
    try:
        depth = call_within(QUEUE_READ_SECONDS, queue.depth, "the push queue")
    except Exception as exc:
        return {"visible": None, "in_flight": None, "dead": None, "error": describe_error(exc)}
    return {"visible": depth.visible, "in_flight": depth.in_flight, "dead": depth.dead}


def _outages(processes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every dependency a live process finds degraded or down, with the process."""
    found = []
    for process in processes:
        if process["stale"]:
            continue
        for name, dependency in (process.get("dependencies") or {}).items():
            if dependency.get("state") in ("degraded", "down"):
                found.append({"dependency": name, "state": dependency["state"], "since": dependency.get("since"),
                              "error": dependency.get("error"), "worker_id": process["worker_id"],
                              "host": process["host"]})
    return found


def workers_status(engine: sa.Engine, queue: Any, *, queue_name: str = "push",
                   now: dt.datetime | None = None) -> dict[str, Any]:
    """The desired size of `queue_name`, the queue's depth and every process's row (with
    `stale` when its heartbeat is over STALE_AFTER intervals old): what `GET
    /api/v1/admin/workers` and `fieldsync workers status` show."""
    now = now or utc_now()
    with engine.connect() as conn:
        desired = desired_size(conn, queue_name)
        rows = list(conn.execute(sa.select(WORKERS).where(WORKERS.c.queue == queue_name)
                                 .order_by(WORKERS.c.host, WORKERS.c.started_at)).mappings())
    processes = []
    for row in rows:
        last_seen = _utc(row["last_seen"])
        age = (now - last_seen).total_seconds()
        processes.append({
            "worker_id": row["worker_id"], "host": row["host"], "pid": row["pid"], "threads": row["threads"],
            "in_flight": row["in_flight"], "processed": row["processed"], "failed": row["failed"],
            "started_at": _iso(row["started_at"]), "last_seen": _iso(last_seen),
            "seconds_since_seen": round(max(age, 0.0), 1), "stale": age > STALE_AFTER * row["heartbeat_s"],
            "dependencies": _loads(row["dependencies"])})
    live = [p for p in processes if not p["stale"]]
    return {
        "queue": queue_name,
        "desired_threads": desired.threads if desired else None,
        "updated_at": _iso(desired.updated_at) if desired else None,
        "updated_by": desired.updated_by if desired else None,
        "depth": _depth(queue),
        "threads": sum(p["threads"] for p in live),
        "in_flight": sum(p["in_flight"] for p in live),
        "workers": processes,
        "spool": _spool(engine, now),
        "outages": _outages(processes),
    }


def _loads(text: str | None) -> dict[str, Any] | None:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _spool(engine: sa.Engine, now: dt.datetime) -> dict[str, Any] | None:
    """The push spool's depth: batches held in the database during a queue outage."""
    try:
        with engine.connect() as conn:
            batches, devices, oldest = spool_depth(conn)
    except sa.exc.DBAPIError:   # a database no server has run on yet: no spool table
        return None
    oldest = _utc(oldest)
    return {"batches": batches, "devices": devices,
            "oldest_age_seconds": round(max((now - oldest).total_seconds(), 0.0), 1) if oldest else None}


# -- the processing log -------------------------------------------------------------------------

class ProcessingLog:
    """A SyncService observer: one `fs_processing_log` row and one JSON log line per handled
    message. A failed write is a warning: the message was handled whatever the log says."""

    def __init__(self, engine: sa.Engine, worker_id: str, *, clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self._clock = clock

    def __call__(self, message: Any, batch: Any, outcome: str, seconds: float, results: int) -> None:
        entry = {"message_id": message.id, "receive_count": message.receive_count,
                 "device_id": batch.device_id if batch is not None else message.group,
                 "outcome": outcome, "duration_ms": round(seconds * 1000, 3), "results": results,
                 "worker_id": self.worker_id}
        processing_log.info(json.dumps(entry, separators=(",", ":")))
        try:
            # its own transaction, after the apply committed: never part of the batch's effect
            with _log_transaction(self.engine) as conn:
                conn.execute(PROCESSING_LOG.insert().values(at=self._clock(), **entry))
        except Exception as exc:
            log.warning("processing log: could not record message %s (%s)", message.id, type(exc).__name__)


def _log_transaction(engine: sa.Engine):
    """A write transaction for log entries. On SQLite it commits with synchronous=NORMAL (in
    WAL mode: no fsync of its own; a crash of the process keeps it, a power loss may drop the
    latest entries), because a FULL commit doubled the cost of handling a message (6.7 -> 14 ms
    per batch of 10 visits on this machine)."""
    return write_transaction(engine, sqlite_synchronous="NORMAL")


def processing_entries(engine: sa.Engine, limit: int = 100) -> list[dict[str, Any]]:
    """The latest `limit` processing-log entries, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(PROCESSING_LOG).order_by(PROCESSING_LOG.c.id.desc()).limit(limit)).mappings()
        return [{"message_id": r["message_id"], "receive_count": r["receive_count"], "device_id": r["device_id"],
                 "outcome": r["outcome"], "duration_ms": r["duration_ms"], "results": r["results"],
                 "worker_id": r["worker_id"], "at": _iso(r["at"])} for r in rows]


def throughput_per_minute(engine: sa.Engine, *, minutes: int = 60,
                          now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Handled messages per minute over the last `minutes` minutes, from the processing log:
    one item per minute, oldest first, empty minutes included, each `{"minute": ISO start of
    the minute, "batches": messages handled, "results": new mutation results they produced,
    "failed": failed or unprocessable ones}`. Counted in the database, grouped by minute, so
    an hour of a busy fleet is one small query (the admin UI's throughput chart)."""
    now = _utc(now or utc_now())
    end = now.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    start = end - dt.timedelta(minutes=minutes)
    at = PROCESSING_LOG.c.at
    if engine.dialect.name == "sqlite":   # stored as naive UTC text
        epoch = sa.cast(sa.func.strftime("%s", at), sa.Integer)
        bucket = epoch // 60
    else:
        bucket = sa.cast(sa.func.floor(sa.extract("epoch", at) / 60), sa.BigInteger)
    failed = sa.func.sum(sa.case((PROCESSING_LOG.c.outcome.in_(("failed", "unprocessable")), 1), else_=0))
    query = (sa.select(bucket.label("bucket"), sa.func.count().label("batches"),
                       sa.func.coalesce(sa.func.sum(PROCESSING_LOG.c.results), 0).label("results"),
                       failed.label("failed"))
             .where(at >= start, at < end).group_by(bucket))
    with engine.connect() as conn:
        counted = {int(r.bucket): r for r in conn.execute(query)}
    first = int(start.timestamp()) // 60
    out = []
    for index in range(minutes):
        row = counted.get(first + index)
        minute = dt.datetime.fromtimestamp((first + index) * 60, dt.timezone.utc)
        out.append({"minute": _iso(minute), "batches": int(row.batches) if row else 0,
                    "results": int(row.results) if row else 0, "failed": int(row.failed or 0) if row else 0})
    return out


def prune_processing_log(engine: sa.Engine, days: int, *, now: dt.datetime | None = None) -> int:
    """Delete processing-log entries older than `days` days; returns how many."""
    since = (now or utc_now()) - dt.timedelta(days=days)
    with write_transaction(engine) as conn:
        return conn.execute(PROCESSING_LOG.delete().where(PROCESSING_LOG.c.at < since)).rowcount


def attach(state: Any) -> WorkerControl:
    """Give an app's sync service its processing log and a WorkerControl (not started: the
    process that runs listeners starts it). Creates the worker tables. Both use real time, not
    the app's injected record clock: heartbeats and log entries are about this machine."""
    create_worker_tables(state.engine)
    sync = state.sync
    dependencies = getattr(state, "dependencies", None)
    control = WorkerControl(state.engine, lambda: sync.pool, log_days=int(state.config.get("PROCESSING_LOG_DAYS", 14)),
                            dependencies=(lambda: {name: s.to_dict() for name, s in dependencies.snapshot().items()})
                            if dependencies is not None else None)
    sync.observers.append(ProcessingLog(state.engine, control.worker_id))
    return control
