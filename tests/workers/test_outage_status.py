"""`fieldsync workers status` during a queue outage (docs/operations.md "Outages"): the queue's
depth is read within a bound and shown as unknown, each process's failing dependencies come
from its heartbeat row, and the push spool's depth from the database."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time

from fieldsync.cli import main
from fieldsync.workers.fleet import QUEUE_READ_SECONDS, workers_status

HOUR = 3600.0


def test_status_shows_the_outage_and_the_spool_without_waiting_on_the_queue(make_server, capsys):
    server = make_server(listeners=1)
    state = server.state
    control = state.workers
    control.interval = HOUR
    server.sync.start()
    control.start()
    state.dependencies.failed("queue", OSError("broker 127.0.0.1:61613 refused the connection"), state="degraded")
    with state.engine.begin() as conn:
        for device in ("device-a", "device-b", "device-a"):
            server.sync.spool.put(conn, device, b"sealed batch", dt.datetime.now(dt.timezone.utc))
    control.tick()

    assert main(["workers", "status", "--json", "--database-url", server.database_url,
                 "--data-dir", str(server.data_dir)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["spool"]["batches"] == 3 and status["spool"]["devices"] == 2
    [outage] = status["outages"]
    assert (outage["dependency"], outage["state"], outage["worker_id"]) == ("queue", "degraded", control.worker_id)
    assert "refused the connection" in outage["error"]

    assert main(["workers", "status", "--database-url", server.database_url, "--data-dir", str(server.data_dir)]) == 0
    text = capsys.readouterr().out
    assert "spool: 3 push batch(es) of 2 device(s)" in text and "OUTAGE: queue is degraded" in text


def test_a_queue_that_hangs_is_shown_as_unknown_within_the_bound(make_server):
    server = make_server()
    hold = threading.Event()

    class Hanging:
        def depth(self):
            hold.wait(30)

    started = time.monotonic()
    status = workers_status(server.state.engine, Hanging())
    took = time.monotonic() - started
    hold.set()
    assert status["depth"]["visible"] is None and "did not answer" in status["depth"]["error"]
    assert took < QUEUE_READ_SECONDS + 1.0
