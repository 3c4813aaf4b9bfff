"""Fixtures for the client SDK: the generated device schema, an in-memory fake server that
speaks the wire summary of docs/sync-design.md (for the unit tests; the integration tests use
the real server), and a factory for clients."""

from __future__ import annotations

import datetime as dt
import json
import random
import threading
from pathlib import Path
from typing import Any, Callable

import pytest

from fieldsync.api import create_app
from fieldsync.client import Client
from fieldsync.seed import load_seed

ROOT = Path(__file__).resolve().parents[2]
SECRET = "client-test-secret"
LISTENERS = 2   # the server's listener pool applies pushes in threads, as in production
PROBLEMS = "https://fieldsync.dev/problems/"
TERRITORY = "0192a000-0000-7000-8000-000000000011"
RETAILER = "0192a000-0000-7000-8000-000000000301"
PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"     # a seed territory (examples/seed)


@pytest.fixture(scope="session")
def schema_document() -> dict:
    return json.loads((ROOT / "generated" / "device" / "schema.json").read_text())


@pytest.fixture
def schema(schema_document) -> dict:
    """A private copy: tests may change it."""
    return json.loads(json.dumps(schema_document))


def visit_fields(**overrides: Any) -> dict[str, Any]:
    fields = {"retailer_id": RETAILER, "territory_id": TERRITORY, "visited_at": "2026-11-26T15:00:00Z",
              "purpose": "order"}
    fields.update(overrides)
    return fields


@pytest.fixture
def visit():
    return visit_fields


class FixedClock:
    """A clock tests move by hand."""

    def __init__(self, start: str = "2026-11-27T09:00:00+00:00"):
        self.now = dt.datetime.fromisoformat(start)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
def clock():
    return FixedClock()


def problem(status: int, name: str, **extra: Any) -> tuple[int, dict[str, str], bytes]:
    body = {"type": PROBLEMS + name, "title": name, "status": status, "detail": f"{name} (fake)", **extra}
    return status, {"content-type": "application/problem+json"}, json.dumps(body).encode()


class FakeServer:
    """Just enough of a fieldsync server, in memory: registration, push into a queue that
    `process()` applies (as the real listener pool does, later), stream pulls by position
    with results by seq, ack. `hooks` answer chosen requests instead (faults, scripted pages)."""

    def __init__(self, schema_version: int = 1):
        self.schema_version = schema_version
        self.devices: dict[tuple[str, str], str] = {}       # (user, install_id) -> device_id
        self.registered = 0
        self.records: dict[tuple[str, str], dict] = {}      # (entity, id) -> row incl. version, deleted
        self.changes: list[tuple[int, str, str]] = []      # (position, entity, id)
        self.position = 0
        self.queue: list[tuple[str, dict]] = []             # (device_id, mutation)
        self.ledger: dict[tuple[str, int], dict] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.hooks: list[Callable[[str, str, Any, dict], Any]] = []
        self.acks: list[dict] = []
        self.tokens_seen: list[str] = []
        self.valid_tokens: set[str] | None = None
        self.auto_process = True
        self.reject: Callable[[dict], str | None] = lambda m: None
        self.schema_document: dict | None = None
        self.capabilities = {"protocol": [1], "encodings": ["gzip"], "max_request_bytes": 4 << 20,
                             "max_mutations": 1000, "max_pull_limit": 10000, "retention_days": 90}

    # -- the transport interface --------------------------------------------------------------

    def request(self, method, path, *, headers, body):
        assert headers.get("Fieldsync-Protocol") == "1"
        data = json.loads(body) if body else None
        self.requests.append((method, path, data))
        token = headers.get("Authorization", "").removeprefix("Bearer ")
        self.tokens_seen.append(token)
        for hook in list(self.hooks):
            answer = hook(method, path, data, headers)
            if answer is not None:
                return answer
        if self.valid_tokens is not None and token not in self.valid_tokens:
            return problem(401, "unauthenticated")
        route = path.removeprefix("/api/v1/sync")
        handler = {("POST", "/devices"): self._register, ("POST", "/push"): self._push,
                   ("POST", "/pull"): self._pull, ("POST", "/ack"): self._ack}.get((method, route))
        if route.startswith("/schema") and method == "GET":
            return 200, {}, json.dumps(self.schema_document).encode()
        if handler is None:
            return problem(404, "not-found")
        status, answer = handler(data)
        return status, {"content-type": "application/json"}, json.dumps(answer).encode()

    def paths(self) -> list[str]:
        return [p.removeprefix("/api/v1/sync") for _, p, _ in self.requests]

    def bodies(self, route: str) -> list[Any]:
        return [b for _, p, b in self.requests if p == "/api/v1/sync" + route]

    # -- endpoints --------------------------------------------------------------------------

    def _register(self, body):
        key = ("user", body["install_id"])
        status = 200
        if key not in self.devices:
            self.registered += 1
            self.devices[key] = body.get("device_id") or f"device-{self.registered}"
            status = 201
        return status, {"device_id": self.devices[key], "user_id": "user", "registered_at": "2026-11-27T09:00:00Z",
                        "schema_version": self.schema_version, "capabilities": self.capabilities}

    def _push(self, body):
        if body["schema_version"] > self.schema_version:
            raise AssertionError("use a hook for schema-too-new")
        received, results = [], []
        for m in body["mutations"]:
            first = self.ledger.get((body["device_id"], m["seq"]))
            if first is not None:
                results.append({"seq": m["seq"], "status": "duplicate", "first": first})
            else:
                received.append(m["seq"])
                self.queue.append((body["device_id"], m))
        if self.auto_process:
            self.process()
        return 202, {"device_id": body["device_id"], "received": received, "results": results,
                     "write_checkpoint": self.checkpoint(body["device_id"]), "unsettled": len(self.queue)}

    def process(self) -> None:
        """Apply every queued mutation (the listener pool's job), exactly once per seq."""
        while self.queue:
            device_id, m = self.queue.pop(0)
            if (device_id, m["seq"]) in self.ledger:
                continue
            self.ledger[(device_id, m["seq"])] = self._apply(m)

    def _apply(self, m) -> dict:
        key = (m["entity"], m["id"])
        current = self.records.get(key)
        base = {"seq": m["seq"], "entity": m["entity"], "id": m["id"]}

        def rejected(name, row=None):
            self.position += 1
            return {**base, "status": "rejected", "permanent": True, "type": PROBLEMS + name,
                    "title": name, "detail": f"{name}: {m['entity']} {m['id']}", "position": self.position,
                    "errors": [{"field": "notes", "reason": "refused"}] if name == "validation" else [],
                    "row": None if row is None else dict(row)}

        reason = self.reject(m)
        if reason:
            return rejected(reason, current)
        if m["op"] == "insert":
            if current is not None:
                return rejected("id-exists", current)
            row = {"id": m["id"], **m["fields"], "version": 1, "created_at": "2026-11-27T09:00:01.000000Z",
                   "updated_at": "2026-11-27T09:00:01.000000Z"}
        elif current is None:
            return rejected("unknown-record")
        elif current.get("deleted"):
            return rejected("record-deleted", {"id": m["id"], "version": current["version"], "deleted": True})
        elif m["op"] == "update":
            row = {**current, **m["fields"], "version": current["version"] + 1}
        else:
            row = {**current, "version": current["version"] + 1, "deleted": True}
        self.write(m["entity"], row)
        visible = {"id": row["id"], "version": row["version"], "deleted": True} if row.get("deleted") else dict(row)
        return {**base, "status": "applied", "position": self.position, "version": row["version"],
                "effect": "changed", "overridden": [], "row": visible}

    def write(self, entity: str, row: dict) -> None:
        """A server-side write (REST, admin, another device): a new position in the stream."""
        self.position += 1
        self.records[(entity, row["id"])] = dict(row)
        self.changes.append((self.position, entity, row["id"]))

    def server_insert(self, entity: str, record_id: str, **fields) -> None:
        self.write(entity, {"id": record_id, **fields, "version": 1, "created_at": "2026-11-27T08:00:00.000000Z",
                            "updated_at": "2026-11-27T08:00:00.000000Z"})

    def checkpoint(self, device_id: str) -> int:
        return max([r["position"] or 0 for (d, _), r in self.ledger.items() if d == device_id] or [0])

    def _pull(self, body):
        cursor, limit = body["cursor"], body["limit"]
        later = [c for c in self.changes if c[0] > cursor]
        page, rest = later[:limit], later[limit:]
        latest: dict[tuple[str, str], int] = {}
        for position, entity, record_id in page:
            latest[(entity, record_id)] = position
        changes = []
        for (entity, record_id), position in sorted(latest.items(), key=lambda kv: kv[1]):
            row = self.records[(entity, record_id)]
            if row.get("deleted"):
                changes.append({"kind": "delete", "entity": entity, "id": record_id, "position": position,
                                "version": row["version"]})
            else:
                changes.append({"kind": "upsert", "entity": entity, "id": record_id, "position": position,
                                "version": row["version"],
                                "row": {k: v for k, v in row.items() if k not in ("id", "version")}})
        end = page[-1][0] if rest else max(cursor, self.position)
        results = [r for (d, seq), r in sorted(self.ledger.items()) if d == body["device_id"]
                   and seq > body["results_after"]]
        return 200, {"device_id": body["device_id"], "schema_version": self.schema_version, "phase": "stream",
                     "cursor": end, "resume": None, "scope_hash": "s1:fake", "has_more": bool(rest),
                     "remaining": len(rest), "head": self.position, "windows": {}, "changes": changes,
                     "results": results, "write_checkpoint": self.checkpoint(body["device_id"]),
                     "unsettled": len(self.queue)}

    def _ack(self, body):
        self.acks.append(body)
        return 200, {"device_id": body["device_id"], "acked_cursor": body["cursor"],
                     "results_through": body["results_through"], "head": self.position}


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def make_client(tmp_path, schema, clock):
    """`make_client(transport, name="device")`: a client whose store is tmp_path/<name>.db."""
    opened: list[Client] = []

    def make(transport, name: str = "device", **kwargs) -> Client:
        kwargs.setdefault("schema", schema)
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("rng", random.Random(7))
        client = Client(tmp_path / f"{name}.db", transport, kwargs.pop("token", "token-1"), **kwargs)
        opened.append(client)
        return client

    yield make
    for client in opened:
        try:
            client.close()
        except Exception:
            pass


# -- the real server (integration tests) --------------------------------------------------------

@pytest.fixture
def app(tmp_path, example_model):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(tmp_path / "var"), "SYNC_LISTENERS": LISTENERS}, model=example_model)
    state = app.extensions["fieldsync"]
    load_seed(state.config, ROOT / "examples" / "seed", store=state.store)
    yield app
    state.sync.stop()
    state.engine.dispose()


@pytest.fixture
def settle(app):
    """`settle()`: wait until the server's listener pool has applied every received push."""
    def wait(timeout: float = 20.0) -> None:
        assert app.extensions["fieldsync"].sync.wait_idle(timeout), "the listener pool did not finish in time"
    return wait


@pytest.fixture
def token():
    """`token(user, *territory_ids, role="field_rep")`: a bearer token the test server accepts."""
    from fieldsync.auth import issue_token

    def make(user: str, *territories: str, role: str = "field_rep") -> str:
        return issue_token(SECRET, user, role, {"territory_ids": list(territories or [PUNE])}, ttl=3600)
    return make


@pytest.fixture
def http_url(app):
    """The app served by waitress on a free port. The test drives waitress's event loop in a
    thread of its own, so stopping it never closes a socket under a running select()."""
    import waitress
    server = waitress.create_server(app, host="127.0.0.1", port=0, threads=4, ident="fieldsync-test")
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            server.asyncore.loop(timeout=0.05, map=server._map, count=1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.effective_port}"
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    server.task_dispatcher.shutdown()
    for channel in list(server._map.values()):  # connections a test left open, the listener
        channel.close()


# -- the encrypted device store ------------------------------------------------------------------

@pytest.fixture
def enrolled(tmp_path):
    """`enrolled(name="device") -> (path, secret)`: a store path with the header `enroll()`
    writes (without a server; a cheap PIN cost) and a random device secret."""
    import os

    from fieldsync.client.store_key import StoreHeader

    def make(name: str = "device", scrypt_n: int = 1024) -> tuple[Path, bytes]:
        path = tmp_path / f"{name}.db"
        StoreHeader.new(f"device-{name}", f"install-{name}", scrypt_n=scrypt_n).write(path)
        return path, os.urandom(32)
    return make


@pytest.fixture
def devices(tmp_path, schema_document):
    """`devices(name, transport, token)`: a client with its own store."""
    opened = []

    def make(name, transport, bearer, **kwargs):
        kwargs.setdefault("schema", schema_document)
        client = Client(tmp_path / f"{name}.db", transport, bearer, **kwargs)
        opened.append(client)
        return client
    yield make
    for client in opened:
        client.close()
