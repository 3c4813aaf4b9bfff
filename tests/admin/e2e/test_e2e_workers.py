"""Scenario (2) of issue 12 §4 in a real browser: an admin opens Queues and workers, resizes the
listener pool of the running server and sees the server process reach the new size (on the
page and with `fieldsync workers status --json`), then replays a dead letter — a field rep's real
push batch — which leaves the dead letters and is applied: the visit is on the server, the
processing log shows it, and the device gets its result.

The server (conftest.py) runs `fieldsync serve` with SYNC_LISTENERS=2, so its listeners take a
queued batch at once: the dead letter is planted among the queue's dead letters from this
process (tests/admin/test_queues.py's plant_dead_letter on the server's own embedded queue,
opened with the server's configuration). Nothing sleeps a fixed time: every wait is a condition
polled until a deadline.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any, Callable

import pytest

from fieldsync.client import ServerUnavailable
from fieldsync.config import load_config
from fieldsync.defs.values import format_datetime
from fieldsync.ids import utc_now
from fieldsync.sync.apply import PushBatch
from fieldsync.sync.service import open_push_queue

from tests.admin.e2e.server import PASSWORD, PUNE_CENTRAL, ROLE_USERS
from tests.admin.e2e.ui import login, screenshot
from tests.admin.test_queues import plant_dead_letter

DEADLINE = 30.0      # seconds for the server to follow a resize or apply a replayed batch (heartbeat: 5 s)
POLL = 0.1           # between two looks while waiting on a condition


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll `condition()` until it returns something true (returned); fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(POLL)


def open_queues_page(page) -> None:
    """Operations -> Queues and workers, through the menu (Bootstrap's dropdown: scripts ran)."""
    page.click("a.dropdown-toggle:has-text('Operations')")
    with page.expect_navigation():
        page.click("a.dropdown-item:has-text('Queues and workers')")
    assert urllib.parse.urlsplit(page.url).path == "/admin/queues/"


def workers_status(server) -> dict:
    return json.loads(server.cli("workers", "status", "--json").stdout)


def server_row(status: dict, pid: int) -> dict:
    [row] = [w for w in status["workers"] if w["pid"] == pid]
    return row


def test_an_admin_resizes_the_listener_pool_and_the_server_follows(server, page, timings):
    pid = server.process.pid
    before = server_row(workers_status(server), pid)
    assert before["threads"] == server.listeners == 2 and not before["stale"]

    login(page, "admin")
    open_queues_page(page)
    row = page.locator(f"#fs-workers tr.fs-worker:has(td:text-is('{pid}'))")
    assert row.get_attribute("data-threads") == "2" and row.get_attribute("data-stale") == "false"
    assert "this process" in row.inner_text()

    page.fill("#fs-pool-size", "3")
    started = time.perf_counter()
    with page.expect_navigation():
        page.click("#fs-pool-apply")
    assert "3 thread(s) per process from now on" in page.locator(".alert-success").inner_text()
    desired = page.locator("#fs-pool-desired").inner_text()
    assert "Desired size: 3 thread(s) per process" in desired and "ada-admin (admin ui)" in desired
    assert page.input_value("#fs-pool-size") == "3"

    # the server process's own pool reaches the size: its heartbeat row, reloaded until it does
    def resized() -> bool:
        page.reload()
        return page.locator(f"#fs-workers tr.fs-worker:has(td:text-is('{pid}'))").get_attribute("data-threads") == "3"
    wait_for(resized, "the server's listener pool showing 3 threads on the page")
    timings["pool resize (UI) -> the server's pool shows it"] = time.perf_counter() - started

    status = workers_status(server)
    assert (status["desired_threads"], status["updated_by"]) == (3, "ada-admin (admin ui)")
    row = server_row(status, pid)
    assert row["threads"] == 3 and not row["stale"]
    assert status["threads"] == sum(w["threads"] for w in status["workers"] if not w["stale"])


def capture_push(device) -> dict:
    """The push the device sends for its outbox, held back: the request never reaches the
    server (answered 503, as a server out of service would), so the device keeps it to send
    again. Returns the request's JSON body."""
    captured: list[dict] = []
    transport = device.transport
    real = transport.request

    def request(method, path, *, headers, body):
        if method == "POST" and path.endswith("/sync/push"):
            captured.append(json.loads(body))
            return 503, {"content-type": "application/problem+json"}, b'{"title": "held back by the test"}'
        return real(method, path, headers=headers, body=body)

    transport.request = request
    try:
        with pytest.raises(ServerUnavailable):
            device.sync()
    finally:
        del transport.request       # the class's method again
    [body] = captured
    return body


def dead_letter_of(server, push: dict) -> tuple[str, PushBatch]:
    """Plant the device's push among the dead letters of the server's queue, as the push
    endpoint would have queued it (the user's role and attributes from a login of the same
    user); returns the message id and the batch."""
    status, user = server.request("POST", "/auth/login", {"user": ROLE_USERS["field_rep"], "password": PASSWORD})
    assert status == 200, user
    batch = PushBatch(device_id=push["device_id"], user_id=user["user"], role=user["role"],
                      attributes=user["attributes"], received_at=format_datetime(utc_now()),
                      sent_at=push["sent_at"], schema_version=push["schema_version"], mutations=push["mutations"])
    queue = open_push_queue(load_config(env=server.env))
    try:
        message_id = plant_dead_letter(queue, batch.to_bytes(), batch.device_id)
        assert queue.depth().dead == 1
    finally:
        queue.close()
    return message_id, batch


def test_an_admin_replays_a_dead_letter_and_its_visit_is_applied(server, device, page, timings):
    device.sync()
    [shop, *_] = device.client.query("retailer")
    visit = device.write("visit", {"retailer_id": shop["id"], "territory_id": PUNE_CENTRAL,
                                   "visited_at": "2026-12-03T09:30:00Z", "purpose": "order",
                                   "notes": "a batch that died and was replayed"})
    push = capture_push(device)
    assert [m["id"] for m in push["mutations"]] == [visit]
    message_id, batch = dead_letter_of(server, push)
    admin = server.login_token(ROLE_USERS["admin"])
    assert server.request("GET", f"/visit/{visit}", token=admin)[0] == 404      # not applied

    login(page, "admin")
    open_queues_page(page)
    assert page.inner_text("#fs-queue-dead") == "1"
    dead = page.locator(f'#fs-dead-letters tr.fs-dead-letter[data-message="{message_id}"]')
    cells = dead.locator("td").all_inner_texts()
    assert cells[:4] == [message_id, batch.device_id, "1", "5"]          # id, device, mutations, deliveries
    assert "a batch that died" not in page.content()                     # the body is never shown

    started = time.perf_counter()
    with page.expect_navigation():
        dead.locator(".fs-replay").click()
    assert "replayed 1 dead letter(s)" in page.locator(".alert-success").inner_text()
    assert dead.count() == 0
    assert "No dead letters." in page.inner_text("#fs-dead-letters")
    assert page.locator("#fs-replay-all").is_disabled()

    # the server's listeners apply it: the visit is on the server, the processing log shows it
    stored = wait_for(lambda: (lambda answer: answer[1] if answer[0] == 200 else None)(
        server.request("GET", f"/visit/{visit}", token=admin)), "the replayed visit on the server")
    timings["dead letter replayed (UI) -> applied"] = time.perf_counter() - started
    assert (stored["notes"], stored["version"]) == ("a batch that died and was replayed", 1)

    def logged() -> bool:
        page.reload()
        entry = page.locator(f"#fs-processing-log tr.fs-log-entry:has(code:text-is('{batch.device_id}'))")
        return entry.count() == 1 and entry.get_attribute("data-outcome") == "applied"
    wait_for(logged, "the replayed batch in the processing log")
    entry = page.locator(f"#fs-processing-log tr.fs-log-entry:has(code:text-is('{batch.device_id}'))")
    assert entry.locator("td").nth(6).inner_text() == "1"                 # one new result
    assert page.inner_text("#fs-queue-dead") == "0"
    assert int(page.locator("#fs-throughput").get_attribute("data-total")) >= 1
    screenshot(page, "queues")

    # the device sends its push again: answered from the ledger, its visit is settled, once
    device.settle()
    assert device.status().quarantined == 0
    assert server.request("GET", f"/visit/{visit}", token=admin)[1]["version"] == 1
    assert workers_status(server)["depth"] == {"visible": 0, "in_flight": 0, "dead": 0}
