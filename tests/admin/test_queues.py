"""The admin UI's queues and workers page (admin/fieldsync_admin/queues.py): who sees it, the
queue's depth and dead letters with replay, the listener pool resized live, the processing log
and the throughput chart; every change audited; a POST without the CSRF token refused."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import sqlalchemy as sa

from fieldsync.auth.tokens import issue_token
from fieldsync.ids import new_id
from fieldsync.store.sync_tables import LEDGER
from tests.admin.conftest import SECRET, AdminClient

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

PAGE = "/admin/queues/"


# -- helpers the end-to-end test may use too ------------------------------------------------------

def push_visits(app, count: int = 2, user: str = "rep-zara") -> str:
    """Push one batch of `count` visit inserts through the real sync endpoint (it lands on the
    push queue; nothing applies it while SYNC_LISTENERS is 0). Returns the device id."""
    state = app.extensions["fieldsync"]
    store = state.store
    territory = store.create("territory", {"code": f"T-{new_id()[-8:].upper()}", "name": "North", "region": "north"})
    retailer = store.create("retailer", {"name": "Shop N", "territory_id": territory["id"]})
    token = issue_token(SECRET, user, "field_rep", {"territory_ids": [territory["id"]]}, now=app.clock())
    http = app.test_client()
    headers = {"Authorization": "Bearer " + token, "Fieldsync-Protocol": "1"}
    answer = http.post("/api/v1/sync/devices", json={"install_id": new_id(), "schema_version": 1}, headers=headers)
    assert answer.status_code in (200, 201), answer.json
    device_id = answer.json["device_id"]
    mutations = [{"seq": n, "entity": "visit", "op": "insert", "id": new_id(), "base_version": None,
                  "client_time": "2026-11-27T10:00:00Z",
                  "fields": {"retailer_id": retailer["id"], "territory_id": territory["id"],
                             "visited_at": "2026-11-27T09:00:00Z", "purpose": "order", "notes": f"visit {n}"}}
                 for n in range(1, count + 1)]
    answer = http.post("/api/v1/sync/push", headers=headers, json={
        "device_id": device_id, "schema_version": 1, "sent_at": "2026-11-27T10:00:00Z", "mutations": mutations})
    assert answer.status_code == 202, answer.json
    return device_id


def make_dead_letters(queue) -> int:
    """Turn every waiting message of `queue` into a dead letter: deliver it `max_receives` times
    without acking, as a handler that keeps failing does. Returns how many are dead."""
    for _ in range(queue.max_receives):
        messages = queue.receive(10, visibility_timeout=60)
        assert messages
        queue.release([m.receipt for m in messages])
    return queue.depth().dead


def plant_dead_letter(queue, body: bytes, group: str | None = None) -> str:
    """Put `body` straight among the dead letters of an embedded push queue (sealed first when
    the queue encrypts bodies), as if it had failed every delivery; returns its message id.
    For a live server whose listeners would take a message before a test could fail it five
    times (the end-to-end test): open the server's queue with
    `fieldsync.sync.service.open_push_queue(config)` and plant a push batch's bytes."""
    import time
    import uuid
    inner = getattr(queue, "inner", queue)
    sealed = queue.seal(body) if hasattr(queue, "seal") else body
    message_id = uuid.uuid4().hex
    now = time.time()
    with inner._lock, inner._transaction("FULL") as conn:   # test-only: the queue's own file format
        conn.execute("INSERT INTO fs_queue_dead (seq, id, grp, body, enqueued_at, receive_count, died_at) "
                     "VALUES ((SELECT coalesce(max(seq), 0) + 1 FROM fs_queue), ?, ?, ?, ?, ?, ?)",
                     (message_id, group, sealed, now, inner.max_receives, now))
    return message_id


def ledger(app, device_id: str) -> list[tuple[int, str]]:
    with app.extensions["fieldsync"].engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(LEDGER.c.seq, LEDGER.c.status)
                                               .where(LEDGER.c.device_id == device_id).order_by(LEDGER.c.seq))]


def admin_events(app, event: str) -> list:
    return [e for e in app.extensions["fieldsync"].audit.entries()
            if e.action == "admin" and e.channel == "admin" and e.detail.get("event") == event]


@pytest.fixture
def control(admin_app):
    """This process's WorkerControl, started (a heartbeat an hour apart: the test ticks)."""
    workers = admin_app.extensions["fieldsync"].workers
    workers.interval = 3600.0
    workers.start()
    yield workers
    workers.stop()


# -- who sees it ----------------------------------------------------------------------------------

@sqlite_only
def test_only_admins_see_the_page(admin_app, browser_as):
    assert browser_as("admin").get(PAGE).status_code == 200
    for role in ("analyst", "compliance"):
        client = browser_as(role)
        assert client.get(PAGE).status_code == 403
        assert client.post(PAGE + "pool", {"threads": "3"}).status_code == 403
        assert client.post(PAGE + "replay", {"all": "1"}).status_code == 403
    anonymous = AdminClient(admin_app).get(PAGE)
    assert anonymous.status_code == 302 and "/admin/login" in anonymous.headers["Location"]
    assert admin_events(admin_app, "pool_resize") == []


@sqlite_only
def test_the_page_shows_backend_depth_pool_log_and_chart(admin_app, browser_as):
    client = browser_as("admin")
    html = client.text(client.get(PAGE))
    for element in ('id="fs-pool-size"', 'id="fs-pool-apply"', 'id="fs-dead-letters"', 'id="fs-replay-all"',
                    'id="fs-throughput"', 'id="fs-processing-log"'):
        assert element in html, element
    assert re.search(r'id="fs-queue-backend" data-scheme="sqlite">embedded SQLite<', html)
    assert re.search(r'id="fs-queue-dead">0<', html) and "No dead letters" in html
    assert "Nothing processed yet" in html and 'data-total="0"' in html
    assert str(admin_app.extensions["fieldsync"].config.data_dir) not in html   # no server paths


# -- the pool -------------------------------------------------------------------------------------

@sqlite_only
def test_resizing_the_pool_is_applied_to_this_process_at_once_and_audited(admin_app, browser_as, control):
    client = browser_as("admin")
    assert 'data-threads="0"' not in client.text(client.get(PAGE))
    answer = client.post(PAGE + "pool", {"threads": "3"})
    assert answer.status_code == 303
    page = client.text(client.get(answer.headers["Location"]))
    assert "3 thread(s) per process from now on" in page
    assert re.search(r'id="fs-pool-size"[^>]*value="3"', page)
    state = admin_app.extensions["fieldsync"]
    assert state.sync.pool.threads == 3                                   # this process, without a heartbeat
    assert f'data-worker="{control.worker_id}" data-threads="3"' in page
    assert "ada-admin (admin ui)" in page
    [event] = admin_events(admin_app, "pool_resize")
    assert (event.actor, event.role, event.detail["threads"], event.detail["previous"]) == ("ada-admin", "admin", 3, None)
    client.post(PAGE + "pool", {"threads": "5"})
    assert state.sync.pool.threads == 5 and admin_events(admin_app, "pool_resize")[-1].detail["previous"] == 3


@sqlite_only
@pytest.mark.parametrize("threads", ["0", "65", "two", "", "-1", "3.5", "9" * 40, "\x00", "²", "٣"])
def test_a_bad_pool_size_is_refused_with_a_message(admin_app, browser_as, threads):
    client = browser_as("admin")
    answer = client.post(PAGE + "pool", {"threads": threads})
    assert answer.status_code == 303
    page = client.text(client.get(PAGE))
    assert "threads must be a whole number from 1 to 64" in page
    assert "not set: each process keeps" in page and admin_events(admin_app, "pool_resize") == []


@sqlite_only
def test_a_post_without_the_csrf_token_changes_nothing(admin_app, browser_as):
    push_visits(admin_app)
    state = admin_app.extensions["fieldsync"]
    make_dead_letters(state.sync.queue)
    client = browser_as("admin")
    assert client.post(PAGE + "pool", {"threads": "4"}, csrf=False).status_code == 400
    assert client.post(PAGE + "replay", {"all": "1"}, csrf=False).status_code == 400
    assert client.post(PAGE + "replay", {"all": "1", "csrf_token": "forged"}, csrf=False).status_code == 400
    assert state.sync.queue.depth().dead == 1
    assert "not set: each process keeps" in client.text(client.get(PAGE))


# -- dead letters ---------------------------------------------------------------------------------

@sqlite_only
def test_a_dead_letter_is_listed_and_replayed_then_applied_once(admin_app, browser_as):
    state = admin_app.extensions["fieldsync"]
    device = push_visits(admin_app, 2)
    queue = state.sync.queue
    assert make_dead_letters(queue) == 1
    client = browser_as("admin")
    page = client.text(client.get(PAGE))
    [message_id] = re.findall(r'class="fs-dead-letter" data-message="([^"]+)"', page)
    assert device in page and "visit 1" not in page                       # the body is never shown
    assert re.search(r'id="fs-queue-dead">1<', page) and 'class="btn btn-sm btn-outline-primary fs-replay"' in page

    answer = client.post(PAGE + "replay", {"message_id": message_id})
    assert answer.status_code == 303
    assert "replayed 1 dead letter(s)" in client.text(client.get(PAGE))
    depth = queue.depth()
    assert (depth.visible, depth.dead) == (1, 0)                          # back on the queue
    [event] = admin_events(admin_app, "dlq_replay")
    assert (event.actor, event.detail["message_id"], event.detail["moved"], event.detail["all"]) == \
           ("ada-admin", message_id, 1, False)

    assert state.sync.drain() == 1                                        # and processed
    assert ledger(admin_app, device) == [(1, "applied"), (2, "applied")]
    page = client.text(client.get(PAGE))
    assert 'class="fs-log-entry" data-outcome="applied"' in page
    assert re.search(r'data-metric="batches" data-total="1"', page)
    again = client.post(PAGE + "replay", {"message_id": message_id})      # gone: a warning, no change
    assert again.status_code == 303
    assert "is not a dead letter (any more)" in client.text(client.get(PAGE))


@sqlite_only
def test_replay_all_moves_every_dead_letter(admin_app, browser_as):
    state = admin_app.extensions["fieldsync"]
    first, second = push_visits(admin_app, 1, "rep-one"), push_visits(admin_app, 3, "rep-two")
    assert make_dead_letters(state.sync.queue) == 2
    client = browser_as("admin")
    assert client.post(PAGE + "replay", {"all": "1"}).status_code == 303
    assert "replayed 2 dead letter(s)" in client.text(client.get(PAGE))
    assert state.sync.queue.depth().dead == 0
    assert state.sync.drain() == 2
    assert len(ledger(admin_app, first)) == 1 and len(ledger(admin_app, second)) == 3
    assert admin_events(admin_app, "dlq_replay")[-1].detail == {"event": "dlq_replay", "queue": "push", "all": True,
                                                                "moved": 2}
    page = client.text(client.get(PAGE + "?metric=results"))
    assert 'data-metric="results" data-total="4"' in page


@sqlite_only
@pytest.mark.parametrize("form", [{}, {"message_id": ""}, {"message_id": "x" * 300}, {"message_id": "a\x00b"},
                                  {"all": "yes"}])
def test_a_bad_replay_request_is_refused_with_a_message(admin_app, browser_as, form):
    client = browser_as("admin")
    answer = client.post(PAGE + "replay", form)
    assert answer.status_code == 303
    assert "name a dead letter to replay" in client.text(client.get(PAGE))
    assert admin_events(admin_app, "dlq_replay") == []


# -- throughput -----------------------------------------------------------------------------------

def test_throughput_counts_per_minute_on_each_database(db_url):
    """fleet.throughput_per_minute groups the processing log by minute in SQL (SQLite and
    PostgreSQL), empty minutes included, oldest first."""
    from fieldsync.store.engine import make_engine
    from fieldsync.workers.fleet import PROCESSING_LOG, create_worker_tables, throughput_per_minute
    engine = make_engine(db_url)
    try:
        create_worker_tables(engine)
        now = dt.datetime(2026, 12, 3, 6, 30, 20, tzinfo=dt.timezone.utc)

        def entry(minutes_ago: float, outcome: str = "applied", results: int = 10):
            return {"message_id": new_id(), "receive_count": 1, "device_id": "d", "outcome": outcome,
                    "duration_ms": 1.0, "results": results, "worker_id": "w",
                    "at": now - dt.timedelta(minutes=minutes_ago)}
        with engine.begin() as conn:
            conn.execute(sa.delete(PROCESSING_LOG))
            conn.execute(PROCESSING_LOG.insert(), [entry(0.1), entry(0.2, "failed", 0), entry(2), entry(2.1),
                                                   entry(2.2, results=5), entry(59.9), entry(75)])
        points = throughput_per_minute(engine, minutes=60, now=now)
        assert len(points) == 60
        assert points[-1] == {"minute": "2026-12-03T06:30:00Z", "batches": 2, "results": 10, "failed": 1}
        assert points[-3] == {"minute": "2026-12-03T06:28:00Z", "batches": 3, "results": 25, "failed": 0}
        assert points[0]["minute"] == "2026-12-03T05:31:00Z" and points[0]["batches"] == 0
        assert sum(p["batches"] for p in points) == 5              # 59.9 and 75 minutes ago: before the hour
        assert throughput_per_minute(engine, minutes=5, now=now)[-1]["batches"] == 2
    finally:
        engine.dispose()


def test_the_chart_is_inline_svg_with_a_bar_per_busy_minute():
    from fieldsync_admin.queues import throughput_svg
    points = [{"minute": f"2026-12-03T06:{m:02d}:00Z", "batches": m % 3, "results": 0, "failed": 1 if m == 2 else 0}
              for m in range(10)]
    svg = str(throughput_svg(points))
    assert svg.startswith('<svg id="fs-throughput"') and svg.endswith("</svg>")
    assert svg.count('class="fs-bar"') == 6 and 'data-peak="2"' in svg and 'fill="#c53030"' in svg
    assert "06:00 UTC" in svg and "06:09 UTC" in svg and "<script" not in svg


def test_the_backend_never_shows_credentials():
    from fieldsync_admin.queues import backend_of

    class Config(dict):
        queue_url = "stomp+ssl://user:secret@broker.example:61617/fieldsync.push?max_receives=7"
    shown = backend_of(Config(QUEUE_ENCRYPTION=True))
    assert shown == {"kind": "STOMP over TLS (JMS broker)", "scheme": "stomp+ssl",
                     "where": "broker.example:61617/fieldsync.push", "encrypted": True}


@sqlite_only
def test_a_process_without_a_recent_heartbeat_is_flagged_stale(admin_app, browser_as, control):
    from fieldsync.workers.fleet import WORKERS
    state = admin_app.extensions["fieldsync"]
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    with state.engine.begin() as conn:
        conn.execute(WORKERS.insert().values(worker_id="gone-host-1-abc", host="gone-host", pid=1, queue="push",
                                             threads=2, in_flight=0, processed=7, failed=0, started_at=long_ago,
                                             last_seen=long_ago, heartbeat_s=5.0))
    client = browser_as("admin")
    page = client.text(client.get(PAGE))
    assert 'data-worker="gone-host-1-abc" data-threads="2" data-stale="true"' in page
    assert f'data-worker="{control.worker_id}" data-threads="{state.sync.pool.threads}" data-stale="false"' in page
    assert "1 live process(es)" in page


@sqlite_only
def test_a_planted_dead_letter_replays_and_applies(admin_app, browser_as):
    """plant_dead_letter (for the end-to-end test) makes a dead letter the page lists and
    replays like one the queue made."""
    state = admin_app.extensions["fieldsync"]
    device = push_visits(admin_app, 3)
    queue = state.sync.queue
    [message] = queue.receive(1, visibility_timeout=60)
    queue.ack([message.receipt])                                      # taken off the queue unapplied
    planted = plant_dead_letter(queue, message.body, message.group)
    assert (queue.depth().dead, queue.pending()) == (1, 0)
    client = browser_as("admin")
    page = client.text(client.get(PAGE))
    assert f'class="fs-dead-letter" data-message="{planted}"' in page and "<td>3</td>" in page
    client.post(PAGE + "replay", {"message_id": planted})
    assert state.sync.drain() == 1
    assert ledger(admin_app, device) == [(1, "applied"), (2, "applied"), (3, "applied")]
