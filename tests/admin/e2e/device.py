"""The device side of the end-to-end scenarios: a field rep's app on the Python SDK
(fieldsync.client.Client) with its own SQLite store, talking to the server process over HTTP.

    device = Device.log_in(server, tmp_path / "asha.db")   # POST /api/v1/auth/login, then the SDK
    device.sync()                                           # registers, pulls the rep's scope
    ids = [device.write("visit", {...}) for _ in range(3)]  # offline: store and outbox only
    ... a definition change is applied (the admin UI, or `fieldsync apply`) ...
    seconds = device.wait_for_column("retailer", "email", since=applied_at)
    device.settle()                                         # every write has its result
    device.delivered("visit", ids, admin_token)             # the server's copies (REST)

What the store holds is read from the SQLite file itself (`columns`, `tables`), not through the
SDK, so a test sees what an app upgrade would find on the device.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from fieldsync.client import Client, HttpTransport, Status, SyncReport

from tests.admin.e2e.server import PASSWORD, ROLE_USERS, FieldsyncServer

SYNC_TIMEOUT = 60.0        # seconds a device keeps syncing for a condition before the test fails
POLL_INTERVAL = 0.05       # between two syncs while waiting: the device polls, the test never sleeps blind

__all__ = ["Device"]


class Device:
    """One device of a directory user, with its store at `path`."""

    def __init__(self, server: FieldsyncServer, path: Path, token: str, *, user: str):
        self.server = server
        self.path = Path(path)
        self.user = user
        self.transport = HttpTransport(server.url, timeout=(5, 60))
        self.client = Client(self.path, self.transport, token,
                             install_info={"platform": "e2e test", "app_version": "1.0"})
        self.reports: list[SyncReport] = []

    @classmethod
    def log_in(cls, server: FieldsyncServer, path: Path, user: str = ROLE_USERS["field_rep"],
               password: str = PASSWORD) -> "Device":
        """Log in as an app does (the user directory's password for a token), open the store
        (its schema fetched from the server on first open)."""
        return cls(server, path, server.login_token(user, password), user=user)

    def close(self) -> None:
        self.client.close()
        self.transport.close()

    def __enter__(self) -> "Device":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the app's side -------------------------------------------------------------------------

    def write(self, entity: str, fields: dict[str, Any]) -> str:
        """An offline write: the record and its outbox entry, in the store only; its id."""
        return self.client.insert(entity, fields)

    def sync(self) -> SyncReport:
        report = self.client.sync()
        self.reports.append(report)
        return report

    def status(self) -> Status:
        return self.client.status()

    def sync_until(self, condition: Callable[[], bool], timeout: float = SYNC_TIMEOUT, what: str = "") -> float:
        """Sync until `condition()` holds (checked after each sync); the seconds it took. Fails
        the test after `timeout` with the last sync reports."""
        started = time.perf_counter()
        deadline = started + timeout
        while True:
            self.sync()
            if condition():
                return time.perf_counter() - started
            if time.perf_counter() > deadline:
                raise AssertionError(f"the device did not get {what or condition} within {timeout:.0f} s; "
                                     f"status {self.status()}, last reports {self.reports[-3:]}")
            time.sleep(POLL_INTERVAL)

    def wait_for_column(self, table: str, column: str, *, since: float | None = None,
                        timeout: float = SYNC_TIMEOUT) -> float:
        """Sync until the store's `table` has `column`; the seconds since `since` (a
        time.perf_counter() taken when the change was applied, e.g. at the UI's Apply click),
        else since this call."""
        started = time.perf_counter() if since is None else since
        self.sync_until(lambda: self.has_column(table, column), timeout, f"the column {table}.{column}")
        return time.perf_counter() - started

    def settle(self, timeout: float = SYNC_TIMEOUT) -> float:
        """Sync until every local write has its result from the server (nothing pending, sent
        or received); the seconds it took."""
        def settled() -> bool:
            status = self.status()
            return status.pending == status.sent == status.received == 0
        return self.sync_until(settled, timeout, "the results of its writes")

    # -- what the store holds (read from the SQLite file) -----------------------------------------

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            return db.execute(sql, tuple(params)).fetchall()
        finally:
            db.close()

    def tables(self) -> set[str]:
        return {row[0] for row in self._read("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self._read(f'PRAGMA table_info("{table}")')}

    def has_table(self, table: str) -> bool:
        return table in self.tables()

    def has_column(self, table: str, column: str) -> bool:
        return column in self.columns(table)

    # -- what the server holds ------------------------------------------------------------------

    def delivered(self, entity: str, ids: Iterable[str], token: str) -> dict[str, dict]:
        """The server's copy of each record (REST, with `token`); fails the test naming the
        records the server does not have."""
        found, missing = {}, []
        for record_id in ids:
            status, body = self.server.request("GET", f"/{entity}/{record_id}", token=token)
            if status == 200:
                found[record_id] = body
            else:
                missing.append((record_id, status, body))
        if missing:
            raise AssertionError(f"the server lacks {len(missing)} {entity} record(s) the device wrote: {missing}")
        return found
