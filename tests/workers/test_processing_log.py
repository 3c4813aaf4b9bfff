"""The processing log: one `fs_processing_log` row and one JSON log line per handled message,
for applied, redelivered, failed and unprocessable batches; never PHI; a failure to log never
fails the message; old entries are pruned after PROCESSING_LOG_DAYS."""

from __future__ import annotations

import datetime as dt
import json
import logging

import pytest
import sqlalchemy as sa

from fieldsync.queue.embedded import Message
from fieldsync.workers.fleet import PROCESSING_LOG, ProcessingLog, processing_entries

from workers_support import Device

FIELDS = {"message_id", "receive_count", "device_id", "outcome", "duration_ms", "results", "worker_id"}


def json_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "fieldsync.sync.processing"]


def test_applied_and_redelivered_batches_are_logged_as_rows_and_json_lines(make_server, caplog):
    caplog.set_level(logging.INFO, logger="fieldsync.sync.processing")
    server = make_server()
    phone = Device(server)
    phone.push_visits(4, notes="confidential diagnosis")
    assert server.sync.drain(fail_after_apply=True) == 1   # applied and committed, the ack lost
    assert server.sync.drain() == 1                        # redelivered: the ledger makes it a no-op

    entries = processing_entries(server.engine)            # newest first
    assert [(e["outcome"], e["receive_count"], e["results"]) for e in entries] == [
        ("redelivery", 2, 0), ("applied", 1, 4)]
    assert {e["device_id"] for e in entries} == {phone.device_id}
    assert {e["worker_id"] for e in entries} == {server.state.workers.worker_id}
    assert len({e["message_id"] for e in entries}) == 1
    assert all(e["duration_ms"] > 0 and e["at"].endswith("Z") for e in entries)

    lines = json_lines(caplog)
    assert [set(line) for line in lines] == [FIELDS, FIELDS]
    assert lines == [{k: e[k] for k in FIELDS} for e in reversed(entries)]
    assert "confidential" not in caplog.text

    answer = server.admin_api("GET", "/log?limit=1")
    assert answer.status_code == 200 and answer.json["items"] == entries[:1]
    assert server.admin_api("GET", "/log").json["items"] == entries
    for bad in ("0", "1001", "ten"):
        answer = server.admin_api("GET", f"/log?limit={bad}")
        assert answer.status_code == 422 and answer.json["errors"][0]["field"] == "limit"


def test_failed_deliveries_and_the_unprocessable_last_one_are_logged(make_server, caplog):
    caplog.set_level(logging.INFO, logger="fieldsync.sync.processing")
    server = make_server()
    phone = Device(server)
    phone.push_visits(3)
    sync = server.sync

    def broken(batch):
        raise RuntimeError("disk on fire")
    sync.applier.apply_batch = broken          # a fault in the applier, not in the log
    [message] = sync.queue.receive(1, visibility_timeout=60)
    with pytest.raises(RuntimeError):
        sync.handle(message)                   # not the last delivery: it will be retried
    last = Message(message.id, message.body, message.group, message.receipt, sync.queue.max_receives,
                   message.enqueued_at)
    sync.handle(last)                          # the last: every mutation answered `unprocessable`

    entries = processing_entries(server.engine)
    assert [(e["outcome"], e["receive_count"], e["results"]) for e in entries] == [
        ("unprocessable", 5, 3), ("failed", 1, 0)]
    assert [line["outcome"] for line in json_lines(caplog)] == ["failed", "unprocessable"]


def test_a_failure_to_log_is_a_warning_and_the_batch_is_still_applied(make_server, caplog):
    caplog.set_level(logging.INFO, logger="fieldsync.sync.processing")
    server = make_server()
    with server.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE fs_processing_log"))   # the log's table is gone
    phone = Device(server)
    phone.push_visits(2)
    assert server.sync.drain() == 1
    server.assert_each_applied_once([phone])
    assert server.sync.queue.pending() == 0                      # handled and acked
    warnings = [r for r in caplog.records if r.name == "fieldsync.sync.workers" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not record" in warnings[0].getMessage()
    assert [line["outcome"] for line in json_lines(caplog)] == ["applied"]   # the JSON line still went out


def test_entries_older_than_processing_log_days_are_pruned_by_the_heartbeat(make_server):
    server = make_server(listeners=1, PROCESSING_LOG_DAYS=3)
    control = server.state.workers
    assert control.log_days == 3
    now = dt.datetime.now(dt.timezone.utc)
    message = Message("m-1", b"", "device-1", "", 1, 0.0)
    for days in (4, 2):
        ProcessingLog(server.engine, "w", clock=lambda: now - dt.timedelta(days=days))(
            message, None, "applied", 0.01, 1)
    control.interval = 3600.0
    control.tick()
    with server.engine.connect() as conn:
        kept = conn.execute(sa.select(PROCESSING_LOG.c.at)).scalars().all()
    assert len(kept) == 1
    kept_at = kept[0] if kept[0].tzinfo else kept[0].replace(tzinfo=dt.timezone.utc)
    assert abs((now - kept_at) - dt.timedelta(days=2)) < dt.timedelta(seconds=1)
