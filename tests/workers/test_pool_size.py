"""The shared pool size: resizing live under load without loss, the admin API, `workers set`
and `workers status`, heartbeats and stale processes.

Heartbeat intervals are long (an hour) and the tests call `WorkerControl.tick()` themselves:
"the next heartbeat" is a call, not a wait.
"""

from __future__ import annotations

import datetime as dt
import json
import threading

import pytest

from fieldsync.cli import main
from fieldsync.workers.fleet import WorkerControl, processing_entries, set_desired_size, workers_status

from workers_support import Device

HOUR = 3600.0


def test_resizing_the_pool_live_under_load_applies_every_mutation_exactly_once(make_server):
    """300 batches pushed through the real push endpoint by six devices at once while the API
    resizes the pool 1 -> 4 -> 1: every mutation has one ledger row and made one change
    (invariants 1, 2), and both resizes happened with batches waiting (the listeners are held
    at a gate before each resize, so a backlog exists whatever the machine's speed)."""
    server = make_server(listeners=1)
    control = server.state.workers
    control.interval = HOUR
    devices = [Device(server, user=f"rep-{n}", install=f"i-{n}") for n in range(6)]
    pushed: list[int] = []
    failures: list[BaseException] = []
    pushed_enough = {100: threading.Event(), 200: threading.Event()}
    gate = threading.Event()          # closed: listeners wait before applying a batch
    applier = server.sync.applier
    apply_batch = applier.apply_batch

    def gated(batch):
        assert gate.wait(120), "the test never opened the gate"
        return apply_batch(batch)

    lock = threading.Lock()

    def push(device: Device) -> None:
        try:
            for _ in range(50):
                device.push_visits(10)
                with lock:
                    pushed.append(1)
                    if len(pushed) == 150:
                        gate.clear()      # a backlog again before the second resize
                for count, event in pushed_enough.items():
                    if len(pushed) >= count:
                        event.set()
        except BaseException as exc:   # reported by the main thread
            failures.append(exc)
            for event in pushed_enough.values():
                event.set()

    devices[0].push_visits(10)             # the first push starts the listeners
    applier.apply_batch = gated
    control.start()
    pool = server.sync.pool
    assert pool.threads == 1
    threads = [threading.Thread(target=push, args=(device,)) for device in devices]
    for thread in threads:
        thread.start()
    waiting = {}
    for count, threads_wanted in ((100, 4), (200, 1)):
        assert pushed_enough[count].wait(60)
        answer = server.admin_api("POST", body={"queue": "push", "threads": threads_wanted})
        waiting[threads_wanted] = server.sync.queue.pending()
        gate.set()
        assert answer.status_code == 200, answer.json
        assert pool.threads == threads_wanted and answer.json["desired_threads"] == threads_wanted
        mine = [w for w in answer.json["workers"] if w["worker_id"] == control.worker_id]
        assert [w["threads"] for w in mine] == [threads_wanted]
    for thread in threads:
        thread.join(60)
    assert failures == []
    assert server.sync.wait_idle(60)
    assert waiting[4] > 0 and waiting[1] > 0, f"a resize happened with nothing waiting: {waiting}"

    server.assert_each_applied_once(devices)
    assert sum(d.seq for d in devices) == 3010
    entries = processing_entries(server.engine, 1000)
    assert len([e for e in entries if e["outcome"] == "applied"]) == 301
    assert {e["worker_id"] for e in entries} == {control.worker_id}
    depth = server.queue_depth()
    assert (depth.visible, depth.in_flight, depth.dead) == (0, 0, 0)


def test_workers_set_is_picked_up_at_the_next_tick(make_server, capsys):
    """`fieldsync workers set` writes the shared table; a live process resizes at its next
    heartbeat, not before, and `workers status` shows the size and the process."""
    server = make_server(listeners=2)
    control = server.state.workers
    control.interval = HOUR
    server.sync.start()
    control.start()
    pool = server.sync.pool
    assert pool.threads == 2

    assert main(["workers", "set", "--queue", "push", "--threads", "3", "--database-url", server.database_url]) == 0
    assert "3 thread(s)" in capsys.readouterr().out
    assert pool.threads == 2                      # nothing changes between heartbeats
    assert control.tick() == 3
    assert pool.threads == 3

    assert main(["workers", "status", "--json", "--database-url", server.database_url,
                 "--data-dir", str(server.data_dir)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["desired_threads"] == 3 and status["updated_by"].endswith("(cli)")
    assert status["depth"] == {"visible": 0, "in_flight": 0, "dead": 0}
    [row] = status["workers"]
    assert (row["worker_id"], row["threads"], row["stale"]) == (control.worker_id, 3, False)

    assert main(["workers", "status", "--database-url", server.database_url,
                 "--data-dir", str(server.data_dir)]) == 0
    table = capsys.readouterr().out
    assert "desired size 3 thread(s)" in table and control.worker_id in table
    assert "0 waiting, 0 in flight, 0 dead letter(s)" in table and "1 live process(es)" in table

    assert main(["workers", "set", "--threads", "0", "--database-url", server.database_url]) == 2
    assert "from 1 to 64" in capsys.readouterr().err


def test_a_process_not_seen_for_three_intervals_shows_as_stale(make_server):
    server = make_server(listeners=1)
    now = dt.datetime.now(dt.timezone.utc)
    pool = server.sync.pool
    fresh = WorkerControl(server.engine, lambda: pool, worker_id="fresh", interval=5.0)
    gone = WorkerControl(server.engine, lambda: pool, worker_id="gone", interval=5.0,
                         clock=lambda: now - dt.timedelta(seconds=16))    # last beat 16 s ago
    late = WorkerControl(server.engine, lambda: pool, worker_id="late", interval=5.0,
                         clock=lambda: now - dt.timedelta(seconds=14))    # within 3 x 5 s
    for control in (fresh, gone, late):
        control.tick()
    status = workers_status(server.engine, server.sync.queue, now=now)
    assert {w["worker_id"]: w["stale"] for w in status["workers"]} == {"fresh": False, "gone": True, "late": False}
    assert status["threads"] == 2    # live processes only
    fresh.stop()                     # a clean stop removes its row
    assert "fresh" not in {w["worker_id"] for w in workers_status(server.engine, server.sync.queue)["workers"]}


def test_a_restarted_process_adopts_the_desired_size_unless_told_its_own(make_server):
    server = make_server(listeners=2)
    set_desired_size(server.engine, "push", 5, "test")
    pool = server.sync.pool
    adopting = WorkerControl(server.engine, lambda: pool, interval=HOUR)
    adopting.start()                           # a server restarted after an operator's resize
    assert pool.threads == 5
    adopting.stop()
    pool.resize(2)
    own = WorkerControl(server.engine, lambda: pool, interval=HOUR)
    own.start(adopt=False)                     # fieldsync worker --threads 2
    assert pool.threads == 2
    set_desired_size(server.engine, "push", 5, "test")     # the same size, set again: a change
    assert own.tick() == 5
    own.stop()


@pytest.mark.parametrize("body,field", [
    ({"queue": "push", "threads": 0}, "threads"),
    ({"queue": "push", "threads": 65}, "threads"),
    ({"queue": "push", "threads": "4"}, "threads"),
    ({"queue": "push", "threads": True}, "threads"),
    ({"queue": "pull", "threads": 4}, "queue"),
])
def test_a_bad_size_is_422_and_changes_nothing(make_server, body, field):
    server = make_server()
    answer = server.admin_api("POST", body=body)
    assert answer.status_code == 422
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json["type"].endswith("/validation") and answer.json["errors"][0]["field"] == field
    assert server.admin_api("GET").json["desired_threads"] is None


def test_only_an_admin_may_see_or_change_the_pool(make_server):
    from workers_support import SECRET
    from fieldsync.auth.tokens import issue_token
    server = make_server()
    rep = issue_token(SECRET, "rep-asha", "field_rep", {"territory_ids": []})
    assert server.http.get("/api/v1/admin/workers").status_code == 401
    assert server.admin_api("GET", token="not.a.token").status_code == 401
    for method, path, body in (("GET", "", None), ("POST", "", {"queue": "push", "threads": 2}), ("GET", "/log", None)):
        answer = server.admin_api(method, path, body, token=rep)
        assert answer.status_code == 403 and answer.json["type"].endswith("/forbidden")
    assert server.admin_api("GET").json["desired_threads"] is None
    assert server.admin_api("POST", body=["push", 2]).status_code == 400


def test_the_worker_tables_behave_the_same_on_sqlite_and_postgresql(db_url):
    """The shared size, heartbeats, the processing log and its pruning, on each database."""
    from fieldsync.store.engine import make_engine
    from fieldsync.queue.embedded import Message, SqliteQueue
    from fieldsync.workers.pool import ListenerPool
    from fieldsync.workers.fleet import ProcessingLog, create_worker_tables, prune_processing_log

    engine = make_engine(db_url)
    queue = SqliteQueue(":memory:")
    try:
        create_worker_tables(engine)
        create_worker_tables(engine)                       # again: nothing to do
        pool = ListenerPool(queue, lambda message: None, threads=1)
        control = WorkerControl(engine, lambda: pool, worker_id="w-1", interval=HOUR)
        control.tick()
        set_desired_size(engine, "push", 7, "first")
        set_desired_size(engine, "push", 6, "second")      # an update of the same row
        assert control.tick() == 6
        now = dt.datetime.now(dt.timezone.utc)
        status = workers_status(engine, queue, now=now)
        assert (status["desired_threads"], status["updated_by"]) == (6, "second")
        assert [(w["worker_id"], w["threads"], w["stale"]) for w in status["workers"]] == [("w-1", 6, False)]
        message = Message("m-1", b"", "device-1", "", 1, 0.0)
        for days in (20, 0):
            ProcessingLog(engine, "w-1", clock=lambda: now - dt.timedelta(days=days))(
                message, None, "applied", 0.002, 3)
        assert prune_processing_log(engine, 14, now=now) == 1
        assert [(e["outcome"], e["results"], e["duration_ms"]) for e in processing_entries(engine)] == [
            ("applied", 3, 2.0)]
        control.stop()
        assert workers_status(engine, queue)["workers"] == []
    finally:
        queue.close()
        engine.dispose()
