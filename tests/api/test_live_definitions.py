"""Live definitions (issue 12, section 1): a definition change goes live on running servers without
a restart and without one failed request.

Two apps on one database stand for two server processes (each has its own engine and model);
the first also runs the listener pool that applies pushes. While REST reads and writes and
device syncs run in threads, `fieldsync apply` adds a field to retailer, renames another
(`renamed_from`) and adds an entity, each as its own version: no answer is a 5xx, every pushed
write is applied, and a device then syncs and holds the new column and table. A `migrate` run by
hand under a running server is the same event.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from fieldsync.api import create_app
from fieldsync.auth.tokens import issue_token
from fieldsync.cli import main
from fieldsync.client import Client, WsgiTransport
from fieldsync.seed import load_seed

ROOT = Path(__file__).resolve().parents[2]
SECRET = "live-definitions-" + "l" * 16
PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"

SURVEY = """entity: survey
kind: transaction
label: Survey
description: A short questionnaire a rep fills in at a retailer.
owner: rep_id
fields:
  rep_id:
    type: string
    required: true
    max_length: 64
  score:
    type: integer
    minimum: 0
    maximum: 10
permissions:
  field_rep:
    actions: [read, create, update]
    editable: [score]
    row_filter: "rep_id == $user.id"
  admin:
    actions: [read, create, update, delete]
sync:
  direction: both
  scope: "rep_id == $user.id"
  conflict: last_write_wins
"""


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _raise_version(defs: Path) -> None:
    text = (defs / "app.yaml").read_text()
    number = int(text.split("schema_version: ")[1].split()[0])
    _edit(defs / "app.yaml", f"schema_version: {number}", f"schema_version: {number + 1}")


def add_field(defs: Path) -> None:
    _raise_version(defs)
    _edit(defs / "masters" / "retailer.yaml", "fields:\n", "fields:\n  email:\n    type: string\n    max_length: 120\n")


def rename_field(defs: Path) -> None:
    _raise_version(defs)
    _edit(defs / "masters" / "retailer.yaml", "  location:\n", "  geo:\n    renamed_from: [location]\n")
    _edit(defs / "masters" / "retailer.yaml", "editable: [phone, location]", "editable: [phone, geo]")


def add_entity(defs: Path) -> None:
    _raise_version(defs)
    (defs / "transactions" / "survey.yaml").write_text(SURVEY)


class Load:
    """Counts answers by status from every thread; `wait_for(n)` returns once n more arrived."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self.done = threading.Event()
        self._cond = threading.Condition()
        self._count = 0

    def note(self, status: int, what: str) -> None:
        with self._cond:
            self.statuses[status] += 1
            self._count += 1
            if status >= 500:
                self.failures.append(f"{status} {what}")
            self._cond.notify_all()

    def failed(self, what: str) -> None:
        with self._cond:
            self.failures.append(what)
            self._cond.notify_all()

    def wait_for(self, n: int) -> None:
        with self._cond:
            target = self._count + n
            assert self._cond.wait_for(lambda: self._count >= target or self.failures, timeout=120), "load stalled"

    def run(self, fn) -> threading.Thread:
        def loop() -> None:
            try:
                while not self.done.is_set():
                    fn()
            except Exception as exc:   # noqa: BLE001 - the test reports it
                self.failed(f"{type(exc).__name__}: {exc}")
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        return thread


class CountingTransport(WsgiTransport):
    """A device's transport that reports every answer's status to the load."""

    def __init__(self, app, load: Load):
        super().__init__(app)
        self.load = load

    def request(self, method, path, *, headers, body):
        status, answer_headers, data = super().request(method, path, headers=headers, body=body)
        self.load.note(status, f"{method} {path}: {data[:300]!r}")
        return status, answer_headers, data


def _config(tmp_path: Path, defs: Path, listeners: int) -> dict:
    return {"DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": listeners,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "DEFS_DIR": str(defs)}


@pytest.fixture
def servers(defs_copy, tmp_path):
    """Two running servers on one database (the first with the listener pool), seeded."""
    first = create_app(_config(tmp_path, defs_copy, 2))
    load_seed(first.extensions["fieldsync"].config, ROOT / "examples" / "seed")
    second = create_app(_config(tmp_path, defs_copy, 0))
    yield first, second
    for app in (first, second):
        state = app.extensions["fieldsync"]
        state.sync.close()
        state.engine.dispose()


def _rest_worker(app, load: Load, admin: str):
    client = app.test_client()
    headers = {"Authorization": f"Bearer {admin}"}
    n = iter(range(10 ** 9))

    def step() -> None:
        r = client.get("/api/v1/retailer?limit=5", headers=headers)
        load.note(r.status_code, f"GET /retailer: {r.get_data()[:300]!r}")
        r = client.post("/api/v1/retailer", json={"name": f"Load shop {next(n)}", "territory_id": PUNE_CENTRAL},
                        headers=headers)
        load.note(r.status_code, f"POST /retailer: {r.get_data()[:300]!r}")
        if r.status_code == 201:
            r = client.get(f"/api/v1/retailer/{r.get_json()['id']}", headers=headers)
            load.note(r.status_code, f"GET /retailer/id: {r.get_data()[:300]!r}")
    return step


def _device_worker(device: Client, written: list[str], shop: str):
    def step() -> None:
        written.append(device.insert("visit", {"retailer_id": shop, "territory_id": PUNE_CENTRAL,
                                               "visited_at": "2026-11-27T09:00:00Z", "purpose": "order"}))
        device.sync()
    return step


def _columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}


def test_apply_under_load_swaps_every_server_without_a_failed_request(servers, defs_copy, tmp_path):
    first, second = servers
    load = Load()
    admin = issue_token(SECRET, "admin-1", "admin", {})
    devices, written = [], []
    for i in range(2):
        token = issue_token(SECRET, f"rep-{i}", "field_rep", {"territory_ids": [PUNE_CENTRAL]})
        device = Client(tmp_path / f"device-{i}.db", CountingTransport(first, load), token)
        device.sync()
        devices.append(device)
        written.append([])
    shop = devices[0].query("retailer")[0]["id"]
    threads = [load.run(_rest_worker(app, load, admin)) for app in (first, second)]
    threads += [load.run(_device_worker(d, w, shop)) for d, w in zip(devices, written)]
    source = tmp_path / "changed"
    shutil.copytree(defs_copy, source)
    db = ["--defs", str(defs_copy), "--database-url", f"sqlite:///{tmp_path / 'server.db'}",
          "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / "generated")]
    try:
        load.wait_for(20)
        for change in (add_field, rename_field, add_entity):
            change(source)
            assert main(["apply", str(source), *db]) == 0
            load.wait_for(30)            # the load runs on the new model before the next change
    finally:
        load.done.set()
        for thread in threads:
            thread.join(60)
    assert load.failures == [], load.failures[:5]
    assert not any(status >= 500 for status in load.statuses), load.statuses

    # every server swapped: the new entity and the renamed and added columns answer on both
    for app in (first, second):
        client = app.test_client()
        headers = {"Authorization": f"Bearer {admin}"}
        assert client.get("/api/v1/survey", headers=headers).status_code == 200
        record = client.get("/api/v1/retailer?limit=1", headers=headers).get_json()["items"][0]
        assert "email" in record and "geo" in record and "location" not in record

    # zero lost pushes: every write each device made is applied on the server
    state = first.extensions["fieldsync"]
    for device in devices:
        for _ in range(5):
            device.sync()
            assert state.sync.wait_idle(60)
            if device.status().pending == device.status().sent == device.status().received == 0:
                break
        assert device.status().quarantined == 0
    for ids in written:
        assert ids, "the load wrote nothing"
        for visit_id in ids:
            assert state.store.get("visit", visit_id)["purpose"] == "order"
    for device in devices:
        device.close()

    # a device syncing now holds the new schema: the column and the table
    token = issue_token(SECRET, "rep-new", "field_rep", {"territory_ids": [PUNE_CENTRAL]})
    fresh = Client(tmp_path / "fresh.db", WsgiTransport(second), token)
    fresh.sync()
    fresh.insert("survey", {"score": 7})
    fresh.sync()
    assert state.sync.wait_idle(60)
    fresh.close()
    assert {"email", "geo"} <= _columns(tmp_path / "fresh.db", "retailer")
    assert "score" in _columns(tmp_path / "fresh.db", "survey")
    assert "score" in _columns(tmp_path / "device-0.db", "survey")    # the devices under load migrated
    assert state.store.list("survey").items[0]["score"] == 7


def test_migrate_by_hand_under_a_running_server_never_answers_500(servers, defs_copy, tmp_path):
    first, _ = servers
    load = Load()
    admin = issue_token(SECRET, "admin-1", "admin", {})
    threads = [load.run(_rest_worker(first, load, admin)) for _ in range(2)]
    try:
        load.wait_for(20)
        add_field(defs_copy)
        rename_field(defs_copy)
        assert main(["migrate", "--defs", str(defs_copy), "--database-url", f"sqlite:///{tmp_path / 'server.db'}"]) == 0
        load.wait_for(30)
    finally:
        load.done.set()
        for thread in threads:
            thread.join(60)
    assert load.failures == [] and not any(s >= 500 for s in load.statuses), (load.failures[:5], load.statuses)
    headers = {"Authorization": f"Bearer {admin}"}
    record = first.test_client().get("/api/v1/retailer?limit=1", headers=headers).get_json()["items"][0]
    assert "email" in record and "geo" in record


def test_an_idle_server_follows_on_its_next_request_and_the_check_is_cheap(servers, defs_copy, tmp_path):
    """No poller is needed: the first request after a change reads the new version number, so
    it answers on the new model; when nothing changed the check is one primary-key read."""
    _, second = servers
    state = second.extensions["fieldsync"]
    rounds = 200
    started = time.perf_counter()
    for _ in range(rounds):
        assert state.refresh() is False
    per_check = (time.perf_counter() - started) / rounds
    assert per_check < 0.01, per_check       # measured about 0.1 ms on SQLite (docs/decisions.md)
    add_entity(defs_copy)
    assert main(["migrate", "--defs", str(defs_copy), "--database-url", f"sqlite:///{tmp_path / 'server.db'}"]) == 0
    admin = issue_token(SECRET, "admin-1", "admin", {})
    answer = second.test_client().get("/api/v1/survey", headers={"Authorization": f"Bearer {admin}"})
    assert answer.status_code == 200
    assert state.model.entity("survey")


def test_a_request_that_meets_a_renamed_column_in_flight_runs_again_on_the_new_model(servers, defs_copy, tmp_path):
    """The race the per-request check leaves: a request read the version just before another
    process committed a rename, so its query names the old column. It fails inside its own
    (rolled back) transaction and is dispatched once more on the new model: a 200, not a 500."""
    first, _ = servers
    state = first.extensions["fieldsync"]
    old = state.current()
    rename_field(defs_copy)
    assert main(["migrate", "--defs", str(defs_copy), "--database-url", f"sqlite:///{tmp_path / 'server.db'}"]) == 0
    stale = iter([old])
    real_current = state.current
    state.current = lambda: next(stale, None) or real_current()   # this request checked just before the commit
    admin = issue_token(SECRET, "admin-1", "admin", {})
    answer = first.test_client().get("/api/v1/retailer?limit=1", headers={"Authorization": f"Bearer {admin}"})
    assert answer.status_code == 200, answer.get_json()
    assert "geo" in answer.get_json()["items"][0]
    assert next(stale, None) is None          # the stale snapshot was the one the request started with


def test_a_worker_that_served_no_request_applies_pushes_with_the_new_model(defs_copy, tmp_path):
    """`fieldsync worker` answers no request: its listeners check the version before each push
    batch, so a push for an entity added after it started is applied, not rejected."""
    receiver = create_app(_config(tmp_path, defs_copy, 0))
    load_seed(receiver.extensions["fieldsync"].config, ROOT / "examples" / "seed")
    worker = create_app(_config(tmp_path, defs_copy, 0))
    try:
        add_entity(defs_copy)
        assert main(["migrate", "--defs", str(defs_copy), "--database-url", f"sqlite:///{tmp_path / 'server.db'}"]) == 0
        token = issue_token(SECRET, "rep-1", "field_rep", {"territory_ids": [PUNE_CENTRAL]})
        device = Client(tmp_path / "device.db", WsgiTransport(receiver), token)
        device.sync()
        survey = device.insert("survey", {"score": 3})
        device.sync()                                   # received: queued, not applied (no listeners)
        assert worker.extensions["fieldsync"].sync.drain() >= 1
        assert worker.extensions["fieldsync"].store.get("survey", survey)["score"] == 3
        device.sync()
        assert device.status().quarantined == 0 and device.status().pending == 0
        device.close()
    finally:
        for app in (receiver, worker):
            app.extensions["fieldsync"].sync.close()
            app.extensions["fieldsync"].engine.dispose()
