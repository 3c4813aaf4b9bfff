"""What the workers tests share (imported by name: tests/workers is on sys.path for them).

`Server` is a real `create_app` app on a SQLite file with the embedded queue in its data
directory; `Device` registers and pushes visits through the real sync endpoint.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa

from fieldsync.api import create_app
from fieldsync.auth.tokens import issue_token
from fieldsync.seed import load_seed
from fieldsync.store.changelog import CHANGES_TABLE
from fieldsync.ids import new_id
from fieldsync.store.sync_tables import LEDGER

ROOT = Path(__file__).resolve().parents[2]
DEFS_DIR = ROOT / "entity_defs"
SEED_DIR = ROOT / "examples" / "seed"
SECRET = "workers-tests-" + "w" * 20
PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"


class Server:
    """A create_app server and what the tests read from it."""

    def __init__(self, data_dir: Path, listeners: int, **config: Any):
        self.data_dir = data_dir
        self.database_url = f"sqlite:///{data_dir / 'server.db'}"
        self.config = {"DATA_DIR": str(data_dir), "SECRET_KEY": SECRET, "SYNC_LISTENERS": listeners,
                       "DATABASE_URL": self.database_url, "DEFS_DIR": str(DEFS_DIR), **config}
        self.app = create_app(self.config)
        self.state = self.app.extensions["fieldsync"]
        self.http = self.app.test_client()
        self.admin = issue_token(SECRET, "admin-meera", "admin", {})
        self._retailer: str | None = None

    @property
    def engine(self) -> sa.Engine:
        return self.state.engine

    @property
    def sync(self):
        return self.state.sync

    @property
    def queue_file(self) -> Path:
        return self.data_dir / "queue.db"

    def admin_api(self, method: str, path: str = "", body: Any = None, token: str | None = None):
        return self.http.open("/api/v1/admin/workers" + path, method=method, json=body,
                              headers={"Authorization": "Bearer " + (token or self.admin)})

    def retailer(self) -> str:
        if self._retailer is None:
            items = self.state.store.list("retailer", limit=100).items
            self._retailer = next(r["id"] for r in items if r["territory_id"] == PUNE_CENTRAL)
        return self._retailer

    def ledger_seqs(self) -> dict[str, list[int]]:
        """device id -> the seqs its ledger rows hold, ascending."""
        out: dict[str, list[int]] = {}
        with self.engine.connect() as conn:
            for device_id, seq in conn.execute(sa.select(LEDGER.c.device_id, LEDGER.c.seq)
                                               .order_by(LEDGER.c.device_id, LEDGER.c.seq)):
                out.setdefault(device_id, []).append(seq)
        return out

    def changes_by_device(self) -> dict[str, list[int]]:
        """device id -> the seq of every change-log entry a pushed mutation made."""
        table = sa.Table(CHANGES_TABLE, sa.MetaData(), autoload_with=self.engine)
        out: dict[str, list[int]] = {}
        with self.engine.connect() as conn:
            for origin, seq in conn.execute(sa.select(table.c.origin, table.c.seq)
                                            .where(table.c.origin.is_not(None))):
                out.setdefault(origin, []).append(seq)
        return out

    def assert_each_applied_once(self, devices: list["Device"]) -> None:
        """Invariants 1 and 2: every pushed mutation has exactly one ledger row, applied, and
        made exactly one change (no seq twice in the change log)."""
        ledger = self.ledger_seqs()
        changes = self.changes_by_device()
        with self.engine.connect() as conn:
            statuses = dict(conn.execute(sa.select(LEDGER.c.status, sa.func.count()).group_by(LEDGER.c.status)).all())
        assert statuses == {"applied": sum(d.seq for d in devices)}
        for device in devices:
            assert ledger.get(device.device_id) == list(range(1, device.seq + 1)), device.device_id
            assert sorted(changes.get(device.device_id, [])) == list(range(1, device.seq + 1)), device.device_id

    def queue_depth(self):
        return self.sync.queue.depth()

    def close(self) -> None:
        control = getattr(self.state, "workers", None)
        if control is not None:
            control.stop()
        self.sync.close()
        self.engine.dispose()


class Device:
    """A device speaking the sync protocol through the test client (no local store)."""

    def __init__(self, server: Server, user: str = "rep-asha", install: str = "i-1"):
        self.server = server
        self.http = server.app.test_client()   # one per device: devices may push from threads
        self.token = issue_token(SECRET, user, "field_rep", {"territory_ids": [PUNE_CENTRAL]})
        self.seq = 0
        answer = self._post("/devices", {"install_id": install, "schema_version": 1})
        assert answer.status_code in (200, 201), answer.json
        self.device_id = answer.json["device_id"]

    def _post(self, path: str, body: Any):
        return self.http.post("/api/v1/sync" + path, json=body, headers={
            "Authorization": "Bearer " + self.token, "Fieldsync-Protocol": "1"})

    def push_visits(self, count: int, notes: str = "visit") -> list[int]:
        """Push `count` visit inserts in one batch; returns their seqs (all received)."""
        mutations = []
        for _ in range(count):
            self.seq += 1
            mutations.append({"seq": self.seq, "entity": "visit", "op": "insert", "id": new_id(),
                              "base_version": None, "client_time": "2026-11-27T10:00:00Z",
                              "fields": {"retailer_id": self.server.retailer(), "territory_id": PUNE_CENTRAL,
                                         "visited_at": "2026-11-27T09:00:00Z", "purpose": "order",
                                         "notes": f"{notes} {self.seq}"}})
        answer = self._post("/push", {"device_id": self.device_id, "schema_version": 1,
                                      "sent_at": "2026-11-27T10:00:00Z", "mutations": mutations})
        assert answer.status_code == 202, answer.json
        assert answer.json["received"] == [m["seq"] for m in mutations]
        return answer.json["received"]


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `condition` until it is truthy (returns its value) or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)  # polling a condition with a deadline, not standing in for synchronisation


def expire_in_flight(queue_file: Path) -> int:
    """Make every in-flight delivery visible now: what the visibility timeout (60 s) does to
    the messages of a worker that died, without waiting for it. Returns how many."""
    with closing(sqlite3.connect(queue_file, timeout=30)) as conn:
        with conn:
            return conn.execute("UPDATE fs_queue SET visible_at = ? WHERE visible_at > ?",
                                (time.time(), time.time())).rowcount


def worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "fieldsync.cli", "worker", *args]
