"""Shared fixtures for tests/sync: a real sync server, real devices, and a network that fails.

The server is `fieldsync.api.create_app` on SQLite or PostgreSQL with SYNC_LISTENERS=0, so no
thread applies pushes behind the test's back: `SyncServer.drain()` applies every queued push
batch in the calling thread. Devices are real `fieldsync.client.Client`s, each with its own
store file, talking to the server in-process through `FaultyTransport`, a `WsgiTransport` that
can drop a request before the server sees it, drop the answer after the server processed it,
send a request twice, or cut an answer short.

Fixtures (plain tests may use any of them; hypothesis tests take the factories and build
servers inside the test body, one per example):

* `device_schema` — the generated device schema JSON (session scope, read-only).
* `sync_server` — one seeded `SyncServer` on `db_url` (SQLite and PostgreSQL), closed after.
* `fresh_database` — a callable returning the URL of a new, empty database on the backend of
  `db_url` (a new SQLite file, or a new PostgreSQL schema; all dropped after the test).
* `pg_database` — the same on PostgreSQL only (fails, never skips, when it is unreachable).
* `make_server` — a callable `make_server(database_url=None, *, seed=True, clock=None, **config)
  -> SyncServer`; every server it made is closed after the test. A seeded SQLite server starts
  as a copy of `seeded_sqlite_template` (session scope), made once.
* `settle` — `settle(server, devices)`: heal the network, then sync, drain and repeat until
  a round applies nothing and every device is quiet (nothing to send, nothing to refetch).
* `assert_converged` — `assert_converged(server, device)`: invariant 4, the device's store
  equals the server's records its scope matches, field by field, hidden fields empty.
* `assert_exactly_once` — `assert_exactly_once(server, device)`: invariants 1 and 2 for a
  settled device (ledger row per seq, each effect once, outbox empty, quarantine explained).

Tests get the classes through these; nothing needs importing from this file. A `SyncServer`
has `app`, `state`, `store`, `engine`, `http` (a Flask test client), `token(user, role,
**attributes)`, `rest(method, path, token, body)`, `drain()`, `records(entity)`,
`expected_rows(principal)`, `ledger(device_id)` and `changes(**where)`; `server.device(user,
role, **attributes)` makes a `Device` (`client`, `transport`, `principal`, `sync()`,
`try_sync()`, `restart()`, `retoken(**attributes)`, `rows(entity)`, `outbox()`,
`quarantine()`, `state(key)`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import shutil
import sqlite3
import uuid
from collections import deque
from contextlib import closing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pytest
import sqlalchemy as sa

from fieldsync.api import create_app
from fieldsync.auth.tokens import Principal, issue_token
from fieldsync.client import Client, ClientError, TransportError, WsgiTransport
from fieldsync.seed import load_seed
from fieldsync.store.changelog import CHANGES_TABLE
from fieldsync.ids import utc_now
from fieldsync.sync.scope import device_scope
from fieldsync.store.sync_tables import DEVICES, LEDGER

ROOT = Path(__file__).resolve().parents[2]
SEED_DIR = ROOT / "examples" / "seed"
DEFS_DIR = ROOT / "entity_defs"
SECRET = "sync-tests-" + "s" * 21
PG_ADMIN_URL = os.environ.get("FIELDSYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


# -- the network ---------------------------------------------------------------------------------

FAULTS = ("drop_request", "drop_response", "duplicate", "cut_response")


class FaultyTransport(WsgiTransport):
    """A WsgiTransport whose next requests fail as the test says.

    Faults, one per request:
    * `drop_request` — the request never reaches the server (TransportError).
    * `drop_response` — the server processes it, the answer is lost (TransportError).
    * `duplicate` — the request reaches the server twice; the device gets the second answer.
    * `cut_response` — the server processes it and the answer is cut short: a 2xx body arrives
      truncated, compressed or not (the SDK must notice), another status as a TransportError.

    `plan(faults)` queues faults for the next requests in order (None: deliver normally);
    `fail(fault, path=..., times=n)` fails the next n requests whose path ends with `path`.
    `heal()` forgets both. `before_request(method, path)`, when set, runs before each request
    is sent (the app writing while a sync is under way). `exchanges` logs every request the device made, decoded:
    `(method, path, request_json, status, response_json, fault)`.
    """

    def __init__(self, app):
        super().__init__(app)
        self._plan: deque[str | None] = deque()
        self._rules: list[list[Any]] = []        # [path suffix, fault, remaining]
        self.exchanges: list[tuple[str, str, Any, int | None, Any, str | None]] = []
        self.faults_injected: list[tuple[str, str]] = []
        self._fault: str | None = None
        self.before_request: Callable[[str, str], None] | None = None

    def plan(self, faults: Iterable[str | None]) -> None:
        self._plan.extend(faults)

    def fail(self, fault: str, *, path: str = "", times: int = 1) -> None:
        assert fault in FAULTS, fault
        self._rules.append([path, fault, times])

    def heal(self) -> None:
        self._plan.clear()
        self._rules.clear()

    def _choose(self, path: str) -> str | None:
        for rule in self._rules:
            if rule[2] > 0 and path.endswith(rule[0]):
                rule[2] -= 1
                return rule[1]
        return self._plan.popleft() if self._plan else None

    def request(self, method, path, *, headers, body):
        if self.before_request is not None:
            self.before_request(method, path)
        self._fault = self._choose(path.partition("?")[0])
        request_json = json.loads(body) if body else None
        try:
            status, answer_headers, data = super().request(method, path, headers=headers, body=body)
        except TransportError:
            self.exchanges.append((method, path, request_json, None, None, self._fault))
            raise
        try:
            answer = json.loads(data) if data else None
        except ValueError:
            answer = None
        self.exchanges.append((method, path, request_json, status, answer, self._fault))
        return status, answer_headers, data

    def _exchange(self, method, path, headers, body):
        fault, self._fault = self._fault, None   # a 415 retry inside request() goes through cleanly
        if fault is not None:
            self.faults_injected.append((fault, path))
        if fault == "drop_request":
            raise TransportError(f"{method} {path}: injected: the request was lost")
        status, answer_headers, data = super()._exchange(method, path, headers, body)
        if fault == "duplicate":
            status, answer_headers, data = super()._exchange(method, path, headers, body)
        if fault == "drop_response":
            raise TransportError(f"{method} {path}: injected: the answer was lost")
        if fault == "cut_response":
            if not 200 <= status < 300 or len(data) < 2:
                raise TransportError(f"{method} {path}: injected: the answer was cut short")
            data = data[:len(data) // 2]
        return status, answer_headers, data

    def replay(self, method: str, path: str, body: Any, token: str) -> tuple[int, Any]:
        """Send a request again exactly (a duplicated or retried request), outside any fault."""
        payload = json.dumps(body, separators=(",", ":")).encode()
        headers = {"Authorization": f"Bearer {token}", "Fieldsync-Protocol": "1",
                   "Content-Type": "application/json"}
        status, _, data = super().request(method, path, headers=headers, body=payload)
        return status, json.loads(data) if data else None

    def pulled_changes(self) -> list[dict[str, Any]]:
        """Every change of every pull page the device received whole."""
        return [c for method, path, _, status, answer, _ in self.exchanges
                if path.endswith("/pull") and status == 200 and isinstance(answer, dict)
                for c in answer.get("changes") or ()]

    def statuses(self, suffix: str) -> list[int | None]:
        return [status for _, path, _, status, _, _ in self.exchanges if path.endswith(suffix)]


# -- the server ----------------------------------------------------------------------------------

class SyncServer:
    """A fieldsync server built by `create_app`, with the seed loaded, and what tests ask of it."""

    def __init__(self, data_dir: Path, database_url: str, *, seed: bool = True, clock=None, model=None,
                 **config: Any):
        # one master key for every server of the session: servers restarted on a database (a
        # new data directory each) and the copies of the seeded template must unwrap its data keys;
        # the audit anchor stays with each server's data directory, as its database does
        settings = {"DATA_DIR": str(data_dir), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 0,
                    "DATABASE_URL": database_url, "DEFS_DIR": str(DEFS_DIR),
                    "KEYS_DIR": str(Path(data_dir).parent / "shared-keys"),
                    "AUDIT_ANCHOR_DIR": str(Path(data_dir) / "audit-anchor"), **config}
        self.data_dir = Path(data_dir)
        self.app = create_app(settings, clock=clock, model=model)
        self.state = self.app.extensions["fieldsync"]
        self.http = self.app.test_client()
        self.devices: list[Device] = []
        self._paths = itertools.count(1)
        if seed:
            load_seed(self.state.config, SEED_DIR, store=self.state.store)

    # -- parts --
    @property
    def store(self):
        return self.state.store

    @property
    def model(self):
        return self.state.model

    @property
    def engine(self) -> sa.Engine:
        return self.state.engine

    def close(self) -> None:
        for device in self.devices:
            device.close()
        self.devices.clear()
        sync = self.state.sync
        sync.close()
        self.engine.dispose()

    # -- people --
    def token(self, user: str, role: str = "field_rep", **attributes: Any) -> str:
        return issue_token(SECRET, user, role, attributes)

    def device(self, user: str, role: str = "field_rep", schema: Mapping[str, Any] | None = None,
               **attributes: Any) -> "Device":
        """A new device (its own store file) of `user` acting as `role` with `attributes`."""
        path = self.data_dir / f"device-{next(self._paths)}-{user}.db"
        device = Device(self, path, user, role, attributes, schema or load_device_schema())
        self.devices.append(device)
        return device

    # -- the push queue --
    def drain(self, *, fail_after_apply: bool = False) -> int:
        """Apply every queued push batch now (in this thread); returns how many were applied.
        With `fail_after_apply`, batches are applied and committed but not acknowledged — a
        worker killed in between — and are visible again at once for redelivery."""
        return self.state.sync.drain(fail_after_apply=fail_after_apply)

    def queued(self) -> int:
        return self.state.sync.queue.pending()

    # -- REST as some user --
    def rest(self, method: str, path: str, token: str, body: Any = None, headers: Mapping[str, str] | None = None):
        return self.http.open("/api/v1" + path, method=method, json=body,
                              headers={"Authorization": f"Bearer {token}", **(headers or {})})

    # -- what the server holds --
    def records(self, entity: str, *, deleted: bool = False) -> dict[str, dict[str, Any]]:
        """Every record of `entity` in wire form (tombstones too with `deleted=True`)."""
        ent = self.model.entity(entity)
        table = self.store.table(ent)
        query = sa.select(table)
        if not deleted:
            query = query.where(table.c.deleted == sa.false())
        with self.engine.connect() as conn:
            return {r["id"]: self.store.to_wire_row(ent, r) for r in conn.execute(query).mappings()}

    def scope(self, principal: Principal, now: dt.datetime | None = None):
        return device_scope(self.model, principal, now or utc_now(), self.store.codec)

    def expected_rows(self, principal: Principal, now: dt.datetime | None = None) -> dict[str, dict[str, dict]]:
        """entity -> id -> the row a device of `principal` must hold after converging: the
        server's live records its scope matches (a child only with its parent in scope), with
        the fields its role may not see as None (invariants 4 and 6)."""
        scope = self.scope(principal, now)
        out: dict[str, dict[str, dict]] = {}
        for name in scope.order:
            entity = self.model.entity(name)
            parents = out.get(entity.parent) if entity.parent else None
            rows = {}
            for record_id, wire in self.records(name).items():
                if not scope.matches(name, wire):
                    continue
                if parents is not None and wire.get(entity.parent_field) not in parents:
                    continue
                visible = scope.visible_row(name, wire)
                row = {f.name: visible.get(f.name) for f in entity.fields}
                row.update(id=record_id, version=wire["version"], created_at=wire["created_at"],
                           updated_at=wire["updated_at"])
                rows[record_id] = row
            out[name] = rows
        return out

    def ledger(self, device_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(LEDGER).where(LEDGER.c.device_id == device_id)
                                                  .order_by(LEDGER.c.seq)).mappings()]

    def changes(self, **where: Any) -> list[dict[str, Any]]:
        """Change-log entries (position, entity, record_id, version, op, origin, seq), by position."""
        table = sa.Table(CHANGES_TABLE, sa.MetaData(), autoload_with=self.engine)
        query = sa.select(table.c.position, table.c.entity, table.c.record_id, table.c.version, table.c.op,
                          table.c.origin, table.c.seq).order_by(table.c.position)
        for key, value in where.items():
            query = query.where(table.c[key] == value)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def device_row(self, device_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(DEVICES).where(DEVICES.c.device_id == device_id)).mappings().one())


# -- devices -------------------------------------------------------------------------------------

_schema_cache: dict[str, Any] = {}


def load_device_schema() -> dict[str, Any]:
    """The generated device schema (a fresh copy each call)."""
    if "doc" not in _schema_cache:
        _schema_cache["doc"] = (ROOT / "generated" / "device" / "schema.json").read_text()
    return json.loads(_schema_cache["doc"])


class Device:
    """A phone: a real `Client` on its own store file, behind a FaultyTransport.

    `client` is the SDK object (recreated by `restart`); `transport` injects faults and logs
    what was exchanged; `principal` is who its token speaks for (`retoken` changes it, as the
    renewed token of a user whose territories an admin changed would).
    """

    def __init__(self, server: SyncServer, path: Path, user: str, role: str, attributes: Mapping[str, Any],
                 schema: Mapping[str, Any]):
        self.server = server
        self.path = path
        self.schema = schema
        self.principal = Principal(user, role, dict(attributes))
        self.token = server.token(user, role, **attributes)
        self.transport = FaultyTransport(server.app)
        self.client: Client | None = None
        self.restart()

    def __repr__(self) -> str:
        return f"Device({self.principal.user_id}, {self.path.name})"

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def restart(self) -> None:
        """The app is killed and started again: a new Client on the same store file."""
        self.close()
        # the SDK asks the callable for a token on every request: `retoken` takes effect at once
        self.client = Client(self.path, self.transport, token=lambda: self.token, schema=self.schema)

    def retoken(self, **attributes: Any) -> None:
        """The user's token is renewed with new attributes (e.g. other territory_ids)."""
        self.principal = Principal(self.principal.user_id, self.principal.role, dict(attributes))
        self.token = self.server.token(self.principal.user_id, self.principal.role, **attributes)

    def sync(self):
        assert self.client is not None
        return self.client.sync()

    def try_sync(self) -> Any:
        """Sync; a network failure (or a cut answer the SDK refuses) is returned, not raised."""
        try:
            return self.sync()
        except ClientError as exc:
            return exc

    # -- reading the store file directly (a second connection; WAL lets it read) --
    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        with closing(sqlite3.connect(self.path)) as conn:
            conn.row_factory = sqlite3.Row
            return conn.execute(sql, params).fetchall()

    @property
    def device_id(self) -> str | None:
        rows = self._query("SELECT value FROM _sync_state WHERE key = 'device_id'")
        return json.loads(rows[0]["value"]) if rows and rows[0]["value"] else None

    def state(self, key: str, default: Any = None) -> Any:
        rows = self._query("SELECT value FROM _sync_state WHERE key = ?", (key,))
        return json.loads(rows[0]["value"]) if rows and rows[0]["value"] is not None else default

    def outbox(self) -> list[sqlite3.Row]:
        return self._query('SELECT * FROM "_outbox" ORDER BY seq')

    def quarantine(self) -> list[sqlite3.Row]:
        return self._query('SELECT * FROM "_quarantine" ORDER BY seq')

    def last_seq(self) -> int:
        """The highest seq this device ever gave a mutation (the outbox's AUTOINCREMENT)."""
        rows = self._query("SELECT seq FROM sqlite_sequence WHERE name = '_outbox'")
        return rows[0]["seq"] if rows else 0

    def unsettled_rows(self) -> list[tuple[str, str]]:
        """(table, id) of local rows still dirty or marked deleted."""
        out = []
        for table in self.schema["entities"]:
            for r in self._query(f'SELECT id FROM "{table["table"]}" WHERE _dirty != 0 OR _deleted != 0'):
                out.append((table["name"], r["id"]))
        return out

    def rows(self, entity: str) -> dict[str, dict[str, Any]]:
        """The device's live records of `entity`, as the app reads them."""
        assert self.client is not None
        return {r["id"]: r for r in self.client.query(entity)}

    def quiet(self) -> bool:
        """Nothing left to send or to ask for."""
        return not self.outbox() and not self.state("refetch")


def settle_devices(server: SyncServer, devices: Iterable[Device], *, rounds: int = 12) -> int:
    """The network is healthy and writes have stopped: sync every device, apply what they
    pushed, and repeat until a round applies nothing and every device is quiet (then every
    device has pulled every effect). Returns the rounds used; fails if it never settles."""
    devices = list(devices)
    for device in devices:
        device.transport.heal()
    for n in range(1, rounds + 1):
        for device in devices:
            device.sync()
        applied = server.drain()
        if applied == 0 and all(d.quiet() for d in devices):
            return n
    raise AssertionError(f"devices did not settle in {rounds} rounds: "
                         f"{[(d, len(d.outbox()), d.state('refetch')) for d in devices]}")


def check_converged(server: SyncServer, device: Device, now: dt.datetime | None = None) -> None:
    """Invariant 4: the device's store equals the server's data filtered by its scope,
    entity by entity, field by field."""
    assert device.unsettled_rows() == [], f"{device}: rows still dirty or deleted"
    expected = server.expected_rows(device.principal, now)
    for entity, rows in expected.items():
        held = device.rows(entity)
        missing = sorted(set(rows) - set(held))
        extra = sorted(set(held) - set(rows))
        assert not missing and not extra, (f"{device} {entity}: missing {missing} "
                                           f"extra {extra} (extra rows: {[held[i] for i in extra]})")
        for record_id, row in rows.items():
            assert held[record_id] == row, f"{device} {entity} {record_id}:\n device {held[record_id]}\n server {row}"
    for table in device.schema["entities"]:
        if table["name"] not in expected and table["sync"]["direction"] not in ("push",):
            assert device.rows(table["name"]) == {}, f"{device} holds {table['name']} rows it may not pull"


def check_exactly_once(server: SyncServer, device: Device) -> None:
    """Invariant 2 for one settled device: the ledger has one row for every seq the device
    ever made (but those it quarantined without the server), every change the device caused
    is in the change log once, at the position its result names, and no outbox entry is left:
    each ended applied (and deleted) or quarantined with a reason."""
    assert device.outbox() == [], f"{device}: outbox not empty"
    quarantine = device.quarantine()
    local = {q["seq"] for q in quarantine
             if (q["code"] or "").rsplit("/", 1)[-1] in ("payload-too-large", "seq-reused")}
    ledger = server.ledger(device.device_id)
    assert [r["seq"] for r in ledger] == [s for s in range(1, device.last_seq() + 1) if s not in local]
    rejected = {r["seq"] for r in ledger if r["status"] == "rejected"}
    assert {q["seq"] for q in quarantine} - local == rejected, "quarantine and server rejections differ"
    assert all(q["reason"] and q["code"] for q in quarantine), "a quarantined write without its reason"
    changes = server.changes(origin=device.device_id)
    seqs = [c["seq"] for c in changes]
    assert len(seqs) == len(set(seqs)), "a mutation took effect twice"
    by_position = {c["position"]: c for c in changes}
    for row in ledger:
        if row["position"] is not None:
            change = by_position[row["position"]]
            assert (change["seq"], change["record_id"]) == (row["seq"], row["record_id"])
    assert len(changes) == sum(1 for r in ledger if r["position"] is not None)


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def device_schema() -> dict[str, Any]:
    """The generated device schema JSON."""
    return load_device_schema()


class _PostgresSchemas:
    """New PostgreSQL schemas on demand, all dropped by `drop()`."""

    def __init__(self):
        self.schemas: list[str] = []

    def new_url(self) -> str:
        schema = "t_" + uuid.uuid4().hex[:12]
        admin = sa.create_engine(PG_ADMIN_URL)
        try:
            with admin.begin() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        finally:
            admin.dispose()
        self.schemas.append(schema)
        # synchronous_commit off: commit order, locks and visibility are unchanged, only the WAL
        # flush is deferred; it keeps a hypothesis example on PostgreSQL under a second
        return f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}%20-csynchronous_commit%3Doff"

    def drop(self) -> None:
        if not self.schemas:
            return
        admin = sa.create_engine(PG_ADMIN_URL)
        with admin.begin() as conn:
            for schema in self.schemas:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_database(pg_url) -> Callable[[], str]:
    """A callable returning the URL of a new, empty PostgreSQL schema each time (for
    hypothesis examples, which each need a database of their own). Fails, never skips, when
    PostgreSQL is unreachable (it takes `pg_url`)."""
    schemas = _PostgresSchemas()
    yield schemas.new_url
    schemas.drop()


@pytest.fixture
def fresh_database(db_url, tmp_path) -> Callable[[], str]:
    """A callable returning the URL of a new, empty database on `db_url`'s backend each time:
    a new SQLite file, or a new PostgreSQL schema (dropped after the test)."""
    schemas = _PostgresSchemas()
    counter = itertools.count(1)

    def make() -> str:
        if db_url.startswith("sqlite"):
            return f"sqlite:///{tmp_path / f'server-{next(counter)}.db'}"
        return schemas.new_url()

    yield make
    schemas.drop()


@pytest.fixture(scope="session")
def seeded_sqlite_template(tmp_path_factory, example_model) -> Path:
    """A SQLite server database with the seed loaded, made once: SQLite servers start as a copy
    of it (a tenth of the time of migrating and seeding each one)."""
    data_dir = tmp_path_factory.mktemp("template")
    path = data_dir / "server.db"
    server = SyncServer(data_dir, f"sqlite:///{path}", model=example_model)
    server.close()   # the last connection checkpoints the WAL into the file
    return path


@pytest.fixture
def make_server(tmp_path_factory, example_model, seeded_sqlite_template) -> Callable[..., SyncServer]:
    """`make_server(database_url=None, *, seed=True, clock=None, **config)`: a new SyncServer in
    a new data directory; without a URL, on a new SQLite file. Closed after the test."""
    servers: list[SyncServer] = []

    def make(database_url: str | None = None, *, seed: bool = True, **kwargs: Any) -> SyncServer:
        data_dir = tmp_path_factory.mktemp("server")
        database_url = database_url or f"sqlite:///{data_dir / 'server.db'}"
        if seed and database_url.startswith("sqlite:///"):
            target = Path(database_url[len("sqlite:///"):])
            if not target.exists():
                shutil.copyfile(seeded_sqlite_template, target)
                seed = False
        kwargs.setdefault("model", example_model)
        server = SyncServer(data_dir, database_url, seed=seed, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def sync_server(make_server, db_url) -> SyncServer:
    """One seeded server on `db_url` (SQLite, then PostgreSQL)."""
    return make_server(db_url)


@pytest.fixture
def settle() -> Callable[..., int]:
    """`settle(server, devices, rounds=12)`: sync until quiet (see `settle_devices`)."""
    return settle_devices


@pytest.fixture
def assert_exactly_once() -> Callable[..., None]:
    """`assert_exactly_once(server, device)`: invariants 1 and 2 for one settled device."""
    return check_exactly_once


@pytest.fixture
def assert_converged() -> Callable[..., None]:
    """`assert_converged(server, device, now=None)`: invariant 4 for one device."""
    return check_converged
