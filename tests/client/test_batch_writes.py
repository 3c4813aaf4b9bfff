"""Many local writes in one commit: `client.transaction()` and `client.insert_many()`.

All or nothing (rows and outbox entries alike), seqs ascending, reads inside see the block's
own writes, nested blocks are savepoints, the background sync is told once per commit and never
for a rolled-back write; and a random mix of writes inside and outside blocks leaves the same
rows and outbox as the same writes made one by one.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.client import Client, ClientError, StoreKey, ValidationError

RETAILER = "0192a000-0000-7000-8000-000000000301"
TERRITORY = "0192a000-0000-7000-8000-000000000011"
SCHEMA = Path(__file__).resolve().parents[2] / "generated" / "device" / "schema.json"
CLIENT_TIME = dt.datetime(2026, 11, 27, 9, 0, tzinfo=dt.timezone.utc)


def visit_fields(**overrides: Any) -> dict[str, Any]:
    fields = {"retailer_id": RETAILER, "territory_id": TERRITORY, "visited_at": "2026-11-26T15:00:00Z",
              "purpose": "order"}
    fields.update(overrides)
    return fields


class Offline:
    """The property test's transport: it never syncs."""

    def request(self, *args: Any, **kwargs: Any):
        raise AssertionError("no network in this test")


def read(path: Path, sql: str) -> list[dict[str, Any]]:
    """Rows as another connection sees them: only what is committed."""
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def outbox(path: Path) -> list[dict[str, Any]]:
    return read(path, 'SELECT * FROM "_outbox" ORDER BY seq')


def visits(path: Path) -> list[dict[str, Any]]:
    return read(path, 'SELECT * FROM "visit" ORDER BY id')


class RecordingBackground:
    """Stands in for the background sync: records each `notify_write` and what was committed
    (seen from another connection) when it came."""

    def __init__(self, path: Path):
        self.path = path
        self.running = True
        self.committed_at_notify: list[int] = []

    def notify_write(self) -> None:
        self.committed_at_notify.append(len(outbox(self.path)))

    def stop(self) -> None:
        self.running = False


def test_a_transaction_commits_rows_and_entries_once(make_client, server, tmp_path):
    client = make_client(server)
    path = tmp_path / "device.db"
    with client.transaction():
        first = client.insert("visit", visit_fields(notes="one"))
        second = client.insert("visit", visit_fields(notes="two"))
        client.update("visit", first, {"notes": "one, changed"})
        client.delete("visit", second)
        assert outbox(path) == [] and visits(path) == []     # nothing committed yet
        assert client.get("visit", first)["notes"] == "one, changed"   # reads see own writes
        assert client.get("visit", second) is None
        assert [r["id"] for r in client.query("visit")] == [first]
        inside_seq = client.last_seq
    entries = outbox(path)
    assert [e["op"] for e in entries] == ["insert", "insert", "update", "delete"]
    assert [e["seq"] for e in entries] == sorted(e["seq"] for e in entries)
    assert client.last_seq == inside_seq == entries[-1]["seq"]
    assert {r["id"]: r["_deleted"] for r in visits(path)} == {first: 0, second: 1}


def test_an_exception_rolls_back_rows_and_outbox_entries(make_client, server, tmp_path):
    client = make_client(server)
    path = tmp_path / "device.db"
    kept = client.insert("visit", visit_fields(notes="before"))
    seq_before = client.last_seq
    with pytest.raises(KeyError):
        with client.transaction():
            client.insert("visit", visit_fields(notes="lost"))
            client.insert_many("visit", [visit_fields(notes=f"lost {i}") for i in range(3)])
            client.update("visit", kept, {"notes": "lost change"})
            client.delete("visit", kept)
            raise KeyError("the app gives up")
    assert [e["seq"] for e in outbox(path)] == [seq_before]
    assert [r["id"] for r in visits(path)] == [kept]
    assert client.get("visit", kept)["notes"] == "before"
    assert client.last_seq == seq_before
    assert client.status().pending == 1
    # the store is usable afterwards, and seqs keep ascending
    after = client.insert("visit", visit_fields())
    assert client.last_seq > seq_before and client.get("visit", after) is not None


def test_a_nested_block_is_a_savepoint(make_client, server, tmp_path):
    client = make_client(server)
    path = tmp_path / "device.db"
    with client.transaction():
        outer = client.insert("visit", visit_fields(notes="outer"))
        outer_seq = client.last_seq
        with pytest.raises(ValueError):
            with client.transaction():
                client.insert("visit", visit_fields(notes="inner, undone"))
                raise ValueError("inner block fails")
        assert client.last_seq == outer_seq            # the undone write's seq is not reported
        with client.transaction():
            inner = client.insert("visit", visit_fields(notes="inner, kept"))
        assert outbox(path) == []
    assert {r["notes"] for r in visits(path)} == {"outer", "inner, kept"}
    assert [e["record_id"] for e in outbox(path)] == [outer, inner]


def test_a_write_that_failed_part_way_cannot_be_committed(make_client, server, tmp_path):
    """A database error after the row was written (here: the outbox insert fails) caught inside
    the block: committing would leave a row without its entry, so the block rolls back."""
    client = make_client(server)
    path = tmp_path / "device.db"
    client.insert("visit", visit_fields(notes="before"))
    trigger = ('CREATE TEMP TRIGGER fail_outbox BEFORE INSERT ON "_outbox" WHEN NEW.fields LIKE \'%poison%\' '
               "BEGIN SELECT RAISE(ABORT, 'simulated disk failure'); END")
    client._store.conn.execute(trigger)
    with pytest.raises(ClientError, match="rolled back: a write inside it failed part way"):
        with client.transaction():
            client.insert("visit", visit_fields(notes="fine"))
            with pytest.raises(sqlite3.DatabaseError, match="simulated disk failure"):
                client.insert("visit", visit_fields(notes="poison"))
    assert [r["notes"] for r in visits(path)] == ["before"] and len(outbox(path)) == 1
    # a refusal before any change (validation, a missing record) leaves the block usable
    with client.transaction():
        with pytest.raises(ValidationError):
            client.insert("visit", visit_fields(purpose="not-a-purpose"))
        with pytest.raises(ClientError, match="no visit"):
            client.update("visit", "0192a000-0000-7000-8000-00000000dead", {"notes": "x"})
        client.insert("visit", visit_fields(notes="after"))
    assert sorted(r["notes"] for r in visits(path)) == ["after", "before"] and len(outbox(path)) == 2


def test_insert_many_writes_rows_and_entries_in_one_commit(make_client, server, tmp_path):
    client = make_client(server)
    path = tmp_path / "device.db"
    rows = [visit_fields(notes=f"line {i}", duration_minutes=i) for i in range(50)]
    rows[7] = visit_fields(notes="no duration")                      # another column set
    ids = client.insert_many("visit", rows)
    assert len(ids) == 50 and len(set(ids)) == 50
    entries = outbox(path)
    assert [e["record_id"] for e in entries] == ids                 # seqs ascend in row order
    assert [e["seq"] for e in entries] == list(range(entries[0]["seq"], entries[0]["seq"] + 50))
    assert client.last_seq == entries[-1]["seq"]
    assert json.loads(entries[3]["fields"])["duration_minutes"] == 3
    assert "duration_minutes" not in json.loads(entries[7]["fields"])
    assert client.get("visit", ids[3])["notes"] == "line 3"
    assert all(e["op"] == "insert" and e["status"] == "pending" for e in entries)
    assert client.insert_many("visit", []) == [] and len(outbox(path)) == 50


def test_insert_many_refuses_the_whole_call_for_one_bad_row(make_client, server, tmp_path):
    client = make_client(server)
    path = tmp_path / "device.db"
    rows = [visit_fields(), visit_fields(purpose="gossip", duration_minutes="long"), visit_fields(),
            {"notes": "no retailer"}]
    with pytest.raises(ValidationError) as caught:
        client.insert_many("visit", rows)
    problems = {p.field: p.reason for p in caught.value.problems}
    assert problems["rows[1].purpose"].startswith("must be one of")
    assert problems["rows[1].duration_minutes"] == "must be a whole number"
    assert problems["rows[3].retailer_id"] == "is required"
    assert not any(name.startswith(("rows[0]", "rows[2]")) for name in problems)
    assert outbox(path) == [] and visits(path) == []
    with pytest.raises(ValidationError, match="comes from the server"):
        client.insert_many("territory", [{"name": "x"}])


def test_the_background_sync_is_told_once_per_commit_after_it(make_client, server, tmp_path):
    client = make_client(server)
    background = client._background = RecordingBackground(tmp_path / "device.db")
    client.insert("visit", visit_fields())
    assert background.committed_at_notify == [1]                   # a single write: after its commit
    with client.transaction():
        for i in range(5):
            client.insert("visit", visit_fields(notes=str(i)))
        with client.transaction():
            client.insert_many("visit", [visit_fields(), visit_fields()])
        assert background.committed_at_notify == [1]
    assert background.committed_at_notify == [1, 8]               # once, with all 7 committed
    with pytest.raises(RuntimeError):
        with client.transaction():
            client.insert("visit", visit_fields())
            raise RuntimeError
    with client.transaction():
        pass                                                        # nothing written: nothing to tell
    client.insert_many("visit", [visit_fields()])
    assert background.committed_at_notify == [1, 8, 9]


def test_sync_inside_a_transaction_is_refused(make_client, server):
    client = make_client(server)
    with client.transaction():
        client.insert("visit", visit_fields())
        with pytest.raises(ClientError, match="cannot run inside client.transaction"):
            client.sync()
    assert server.requests == []
    assert client.status().pending == 1


def test_another_thread_writes_after_the_commit(make_client, server, tmp_path):
    client = make_client(server)
    seqs: dict[str, int] = {}

    def other_thread() -> None:
        client.insert("visit", visit_fields(notes="other thread"))
        seqs["other"] = client.last_seq          # per thread: its own write's seq

    with client.transaction():
        client.insert("visit", visit_fields(notes="first"))
        writer = threading.Thread(target=other_thread)
        writer.start()                           # it waits for the store until the block commits
        client.insert("visit", visit_fields(notes="second"))
        seqs["block"] = client.last_seq
    writer.join(30)
    assert not writer.is_alive()
    notes = [e["record_id"] for e in outbox(tmp_path / "device.db")]
    assert len(notes) == 3 and seqs["other"] > seqs["block"]


def test_batches_in_an_encrypted_store(make_client, server, enrolled):
    path, secret = enrolled()
    client = make_client(server, store_key=StoreKey(secret))
    with client.transaction():
        ids = client.insert_many("visit", [visit_fields(notes=f"n{i}") for i in range(20)])
        client.update("visit", ids[0], {"notes": "changed"})
    with pytest.raises(LookupError):
        with client.transaction():
            client.insert("visit", visit_fields())
            raise LookupError
    client.close()
    again = make_client(server, store_key=StoreKey(secret))
    assert again.encrypted and again.status().pending == 21
    assert again.get("visit", ids[0])["notes"] == "changed"
    assert path.read_bytes()[:16] != b"SQLite format 3\x00"


# -- the property: batched writes equal the same writes one by one ------------------------------

NOTES = st.sampled_from(["", "a", "met owner", "ünïcode", None])
PURPOSES = st.sampled_from(["order", "detailing", "collection"])


@st.composite
def write(draw) -> tuple:
    kind = draw(st.sampled_from(["insert", "insert", "insert_many", "update", "delete", "bad"]))
    if kind == "insert":
        return ("insert", draw(NOTES), draw(PURPOSES))
    if kind == "insert_many":
        return ("insert_many", draw(st.lists(st.tuples(NOTES, PURPOSES), max_size=4)))
    if kind in ("update", "delete"):
        return (kind, draw(st.integers(0, 30)), draw(NOTES))
    return ("bad",)


# a block: ("one by one" | "commit" | "raise", writes)
BLOCKS = st.lists(st.tuples(st.sampled_from(["single", "commit", "raise", "nested"]),
                            st.lists(write(), max_size=6)), max_size=6)


def apply_write(client: Client, ids: list[str], op: tuple) -> None:
    """One write; a write the store refuses (a deleted record, a bad value) is refused alike on
    both sides and changes nothing."""
    try:
        if op[0] == "insert":
            ids.append(client.insert("visit", visit_fields(notes=op[1], purpose=op[2])))
        elif op[0] == "insert_many":
            ids += client.insert_many("visit", [visit_fields(notes=n, purpose=p) for n, p in op[1]])
        elif op[0] == "update" and ids:
            client.update("visit", ids[op[1] % len(ids)], {"notes": op[2]})
        elif op[0] == "delete" and ids:
            client.delete("visit", ids[op[1] % len(ids)])
        elif op[0] == "bad":
            client.insert("visit", visit_fields(purpose="no-such-purpose"))
    except ClientError:
        pass


def snapshot(client: Client, path: Path, ids: list[str]) -> tuple:
    """The store with record ids replaced by their creation order (ids carry random bits)."""
    order = {record_id: i for i, record_id in enumerate(ids)}
    entries = [(e["seq"], e["op"], order[e["record_id"]], e["base_version"], json.loads(e["fields"]),
                e["client_time"], e["status"]) for e in outbox(path)]
    rows = sorted((order[r["id"]], r["notes"], r["purpose"], r["_deleted"], r["_dirty"], r["_version"])
                  for r in visits(path))
    return entries, rows


class Abandon(Exception):
    pass


@settings(max_examples=25, deadline=None)
@given(blocks=BLOCKS)
def test_writes_in_transactions_equal_the_same_writes_one_by_one(blocks):
    schema = json.loads(SCHEMA.read_text())
    with tempfile.TemporaryDirectory(prefix="fieldsync-batch-property-") as tmp:
        directory = Path(tmp)
        now = [CLIENT_TIME]
        clock = lambda: now[0]   # noqa: E731
        batched = Client(directory / "batched.db", Offline(), "t", schema=schema, clock=clock,
                         rng=random.Random(1))
        single = Client(directory / "single.db", Offline(), "t", schema=schema, clock=clock,
                        rng=random.Random(1))
        try:
            batched_ids: list[str] = []
            single_ids: list[str] = []
            for mode, writes in blocks:
                if mode == "single":
                    for op in writes:
                        apply_write(batched, batched_ids, op)
                elif mode in ("commit", "nested"):
                    with batched.transaction():
                        half = len(writes) // 2
                        for op in writes[:half]:
                            apply_write(batched, batched_ids, op)
                        if mode == "nested":
                            known = len(batched_ids)
                            try:
                                with batched.transaction():
                                    for op in writes[half:]:
                                        apply_write(batched, batched_ids, op)
                                    raise Abandon
                            except Abandon:
                                del batched_ids[known:]
                            writes = writes[:half]
                        else:
                            for op in writes[half:]:
                                apply_write(batched, batched_ids, op)
                else:
                    known = len(batched_ids)
                    try:
                        with batched.transaction():
                            for op in writes:
                                apply_write(batched, batched_ids, op)
                            raise Abandon
                    except Abandon:
                        del batched_ids[known:]
                    continue
                for op in writes:                    # the committed writes, one by one
                    apply_write(single, single_ids, op)
                now[0] += dt.timedelta(seconds=1)
            assert snapshot(batched, directory / "batched.db", batched_ids) == \
                snapshot(single, directory / "single.db", single_ids)
        finally:
            batched.close()
            single.close()
