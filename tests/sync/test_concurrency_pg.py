"""Invariant 3 on the real PostgreSQL: cursors are gap-free while writers commit concurrently.

Four writer threads create, update and delete records through the record store and the REST
API while two reader threads pull through the sync endpoint by cursor, in small pages, in a
loop. Each reader keeps the rows it was sent, applying changes as a device does, and checks
every page as it arrives: no change at or below its cursor, a patch only for a record it holds
at exactly the patch's `from_version`, a delete only for a record it holds, an upsert only for
one it does not (nothing here changes a reader's scope). A change committed below a cursor a
reader already passed would show as a patch from a version it never saw, or as a record it
never got. When the writers stop and the readers catch up, each reader's rows equal the
server's, record by record, version by version.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from fieldsync.auth.tokens import Principal
from fieldsync.seed import BENGALURU_EAST, PUNE_CENTRAL, PUNE_RURAL
from fieldsync.store.changelog import head_position
from fieldsync.ids import utc_now

pytestmark = pytest.mark.postgres

WRITERS = 4
READERS = 2
WRITES_PER_WRITER = 40
TERRITORIES = [PUNE_CENTRAL, PUNE_RURAL, BENGALURU_EAST]
DEADLINE_S = 120


class Reader:
    """A device reduced to its cursor and the rows it holds, checking every page."""

    def __init__(self, server, token: str, name: str):
        self.http = server.app.test_client()
        self.headers = {"Authorization": f"Bearer {token}", "Fieldsync-Protocol": "1"}
        self.rows: dict[tuple[str, str], dict] = {}
        self.cursor = 0
        self.scope_hash = None
        self.resume = None
        self.pages = 0
        self.pages_while_writing = 0
        self.problems: list[str] = []
        answer = self.http.post("/api/v1/sync/devices", json={"install_id": name, "schema_version": 1},
                                headers=self.headers)
        assert answer.status_code == 201, answer.json
        self.device_id = answer.json["device_id"]

    def pull(self, limit: int) -> dict:
        answer = self.http.post("/api/v1/sync/pull", headers=self.headers, json={
            "device_id": self.device_id, "schema_version": 1, "cursor": self.cursor, "resume": self.resume,
            "scope_hash": self.scope_hash, "limit": limit})
        assert answer.status_code == 200, answer.json
        page = answer.json
        self.apply(page)
        return page

    def apply(self, page: dict) -> None:
        streaming = page["phase"] == "stream"
        for change in page["changes"]:
            kind = change["kind"]
            if kind == "clear":
                self.rows = {k: v for k, v in self.rows.items() if k[0] != change["entity"]}
                continue
            key = (change["entity"], change["id"])
            held = self.rows.get(key)
            if streaming and change["position"] <= self.cursor:
                self.problems.append(f"position {change['position']} at or below cursor {self.cursor}: {change}")
            if kind == "upsert":
                if streaming and held is not None:
                    self.problems.append(f"upsert of a held record (version {held['version']}): {change}")
                self.rows[key] = {**change["row"], "version": change["version"]}
            elif kind == "patch":
                if held is None or held["version"] != change["from_version"]:
                    self.problems.append(f"patch from a version not held ({held and held['version']}): {change}")
                    continue
                held.update(change["fields"], version=change["version"], updated_at=change["updated_at"])
            elif kind == "delete":
                if held is None:
                    self.problems.append(f"delete of a record not held: {change}")
                self.rows.pop(key, None)
            else:
                self.problems.append(f"unexpected {kind}: {change}")
        if page["cursor"] < self.cursor:
            self.problems.append(f"cursor went back from {self.cursor} to {page['cursor']}")
        self.cursor, self.scope_hash, self.resume = page["cursor"], page["scope_hash"], page["resume"]
        self.pages += 1


def visit_body(rng: random.Random, retailers: list[dict], rep: str) -> dict:
    retailer = rng.choice(retailers)
    return {"rep_id": rep, "retailer_id": retailer["id"], "territory_id": retailer["territory_id"],
            "visited_at": utc_now().strftime("%Y-%m-%dT%H:%M:%SZ"), "purpose": "detailing"}


def test_readers_pulling_during_concurrent_writes_skip_no_change(make_server, pg_url):
    server = make_server(pg_url)
    store = server.store
    retailers = list(server.records("retailer").values())
    admin = server.token("admin-meera", "admin")
    attributes = {"territory_ids": TERRITORIES}
    principal = Principal("reader", "admin", attributes)
    readers = [Reader(server, server.token("reader", "admin", **attributes), f"reader-{k}") for k in range(READERS)]
    for reader in readers:             # the snapshot first, so every later page is a strict stream
        while reader.pull(50)["has_more"]:
            pass
        assert reader.problems == []

    start = threading.Barrier(WRITERS + READERS)
    writers_done = threading.Event()
    final_head: list[int] = []
    failures: list[BaseException] = []
    writes: list[int] = []                 # one entry per write that committed
    head_before = head_position(server.engine)

    def writer(n: int) -> None:
        rng = random.Random(n)
        http = server.app.test_client()
        mine: list[str] = []
        try:
            start.wait()
            for i in range(WRITES_PER_WRITER):
                roll = rng.random()
                if roll < 0.4 or not mine:
                    mine.append(store.create("visit", visit_body(rng, retailers, f"rep-{n}"))["id"])
                    writes.append(n)
                elif roll < 0.7:
                    store.update("visit", rng.choice(mine), {"notes": f"w{n} edit {i}"}, expected_version=None)
                    writes.append(n)
                elif roll < 0.8:
                    body = visit_body(rng, retailers, f"rep-{n}")
                    del body["rep_id"]    # the owner: REST sets it from the token
                    answer = http.post("/api/v1/visit", json=body,
                                       headers={"Authorization": f"Bearer {admin}"})
                    assert answer.status_code == 201, answer.json
                    mine.append(answer.json["id"])
                    writes.append(n)
                elif roll < 0.9:
                    target = rng.choice(retailers)["id"]
                    answer = http.patch(f"/api/v1/retailer/{target}", json={"credit_limit": f"{n}{i}.00"},
                                        headers={"Authorization": f"Bearer {admin}", "If-Match": "*"})
                    assert answer.status_code in (200, 412), answer.json   # 412: raced another writer
                    if answer.status_code == 200:
                        writes.append(n)
                else:
                    store.delete("visit", mine.pop(rng.randrange(len(mine))))
                    writes.append(n)
        except BaseException as exc:  # surfaced by the main thread
            failures.append(exc)

    def read(reader: Reader, seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + DEADLINE_S
        try:
            start.wait()
            while time.monotonic() < deadline:
                writing = not writers_done.is_set()
                page = reader.pull(rng.randint(1, 12))
                reader.pages_while_writing += writing
                if writers_done.is_set() and not page["has_more"] and page["cursor"] >= final_head[0]:
                    return
            failures.append(AssertionError(f"reader at {reader.cursor} did not catch up in {DEADLINE_S} s"))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    threads += [threading.Thread(target=read, args=(r, k)) for k, r in enumerate(readers)]
    for thread in threads:
        thread.start()
    for thread in threads[:WRITERS]:
        thread.join()
    final_head.append(head_position(server.engine))
    writers_done.set()
    for thread in threads[WRITERS:]:
        thread.join()
    if failures:
        raise failures[0]

    expected = server.expected_rows(principal)
    # every committed write is one change, numbered without holes
    assert final_head[0] - head_before == len(writes) >= WRITERS * WRITES_PER_WRITER * 0.9
    assert [c["position"] for c in server.changes()][-len(writes):] == list(range(head_before + 1, final_head[0] + 1))
    for reader in readers:
        assert reader.problems == []
        assert reader.pages_while_writing >= 5, "the readers should have pulled while the writers wrote"
        for entity, rows in expected.items():
            held = {record_id: row for (name, record_id), row in reader.rows.items() if name == entity}
            assert set(held) == set(rows), entity
            for record_id, row in rows.items():
                mine = held[record_id]
                assert mine["version"] == row["version"], (entity, record_id)
                assert {k: mine.get(k) for k in row if k != "id"} == {k: v for k, v in row.items() if k != "id"}
