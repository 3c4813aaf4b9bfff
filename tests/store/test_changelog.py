"""The commit-ordered change log on SQLite and PostgreSQL (invariant 3: gap-free cursors)."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from fieldsync.errors import ChangeLogMissing, Conflict, ValidationFailed
from fieldsync.store.changelog import (CHANGES_TABLE, POSITION_TABLE, ChangeLog, attach_changelog,
                                       changelog_metadata, changes_after, compact, count_after,
                                       create_changelog_tables, decode_row, head_position,
                                       oldest_retained_position)
from fieldsync.store.engine import make_engine, write_transaction
from fieldsync.store.records import RecordStore


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine, example_model):
    s = RecordStore(engine, example_model)
    s.metadata.create_all(engine)
    create_changelog_tables(engine)
    attach_changelog(s)
    return s


def _territory(store, code, region="west"):
    return store.create("territory", {"code": code, "name": code.title(), "region": region})


def _all_changes(engine, cursor=0, entities=None):
    changes, _, more = changes_after(engine, cursor, 100_000, entities)
    assert not more
    return changes


def _table_state(store, entities=("territory",)):
    """Every row (tombstones included) of `entities`, in wire form, keyed by (entity, id)."""
    state = {}
    with store.engine.connect() as conn:
        for name in entities:
            entity = store.model.entity(name)
            for row in conn.execute(sa.select(store.table(entity))).mappings():
                state[(name, row["id"])] = store.to_wire_row(entity, row)
    return state


def _replay(changes):
    state = {}
    for c in changes:
        state[(c.entity, c.record_id)] = c.row
    return state


# -- tables ------------------------------------------------------------------------------------

def test_create_tables_is_idempotent_and_starts_at_zero(engine):
    create_changelog_tables(engine)
    create_changelog_tables(engine)  # a second server start changes nothing
    names = set(sa.inspect(engine).get_table_names())
    assert {POSITION_TABLE, CHANGES_TABLE} <= names
    assert set(changelog_metadata().tables) == {POSITION_TABLE, CHANGES_TABLE}
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"select count(*) from {POSITION_TABLE}")).scalar_one() == 1
    assert head_position(engine) == 0 and oldest_retained_position(engine) == 1
    assert changes_after(engine, 0, 10) == ([], 0, False)


def test_hook_without_counter_row_says_what_to_do(engine, example_model):
    changelog_metadata().create_all(engine)  # tables, but no counter row
    s = RecordStore(engine, example_model)
    s.metadata.create_all(engine)
    attach_changelog(s)
    with pytest.raises(ChangeLogMissing, match="create_changelog_tables"):
        _territory(s, "MH-01")
    with engine.connect() as conn:  # the write rolled back with the failed hook
        assert conn.execute(sa.select(sa.func.count()).select_from(s.table(example_model.entity("territory")))
                            ).scalar_one() == 0


# -- one change per write, in the write's transaction ------------------------------------------

def test_every_write_appends_exactly_one_change(store, engine):
    t = _territory(store, "MH-01")
    u = store.update("territory", t["id"], {"name": "Pune"}, expected_version=1)
    d = store.delete("territory", t["id"], expected_version=2)
    changes = _all_changes(engine)
    assert [(c.position, c.op, c.version) for c in changes] == [(1, "create", 1), (2, "update", 2), (3, "delete", 3)]
    assert [c.row for c in changes] == [t, u, d]
    assert all(c.record_id == t["id"] and c.entity == "territory" for c in changes)
    assert changes[-1].row["deleted"] is True and changes[0].changed_at.tzinfo is not None
    assert head_position(engine) == 3 and count_after(engine, 1) == 2


def test_failed_writes_leave_no_change_and_no_hole(store, engine):
    t = _territory(store, "MH-01")
    with pytest.raises(Conflict):      # stale version: refused before the hook
        store.update("territory", t["id"], {"name": "x"}, expected_version=7)
    with pytest.raises(ValidationFailed):  # unique code: refused inside the transaction
        _territory(store, "MH-01")

    def failing_hook(conn, entity, op, record, prev):  # fails after the change log took its position
        raise RuntimeError("audit write failed")

    store.write_hooks.append(failing_hook)
    with pytest.raises(RuntimeError):
        store.update("territory", t["id"], {"name": "Lost"}, expected_version=1)
    with pytest.raises(RuntimeError):
        _territory(store, "MH-02")
    store.write_hooks.remove(failing_hook)
    assert store.get("territory", t["id"])["name"] == "Mh-01"
    # the rolled-back writes took their positions back with them: the next write gets 2
    _territory(store, "MH-03")
    changes = _all_changes(engine)
    assert [c.position for c in changes] == [1, 2]
    assert [c.row["code"] for c in changes] == ["MH-01", "MH-03"]


def test_change_is_invisible_until_its_write_commits(store, engine):
    territory = store.model.entity("territory")
    log = ChangeLog()
    with write_transaction(engine) as conn:
        record = {"id": "0190a0b0-0000-7000-8000-000000000001", "version": 1, "code": "X"}
        assert log.record_changes(conn, [(territory, "create", record)]) == [1]
        assert changes_after(engine, 0, 10)[0] == []  # another connection: not yet (WAL on SQLite)
        assert [c.position for c in changes_after(conn, 0, 10)[0]] == [1]  # its own transaction sees it
    assert [c.position for c in _all_changes(engine)] == [1]


def test_batch_takes_consecutive_positions_in_one_update(store, engine):
    territory = store.model.entity("territory")
    log = ChangeLog()
    _territory(store, "MH-01")
    records = [{"id": f"0190a0b0-0000-7000-8000-{i:012d}", "version": 1, "code": f"B{i}"} for i in range(500)]
    statements = []

    def count(conn, cursor, statement, *args):
        statements.append(statement.split()[0].upper())

    with write_transaction(engine) as conn:
        sa.event.listen(conn, "before_cursor_execute", count)
        positions = log.record_changes(conn, [(territory, "create", r) for r in records])
        sa.event.remove(conn, "before_cursor_execute", count)
    assert positions == list(range(2, 502))
    assert statements == ["UPDATE", "INSERT"]  # one counter update, one executemany
    assert [c.row["code"] for c in changes_after(engine, 1, 3)[0]] == ["B0", "B1", "B2"]
    with pytest.raises(ValueError):
        with write_transaction(engine) as conn:
            log.record_changes(conn, [(territory, "upsert", records[0])])


def test_encrypted_fields_are_stored_encoded(engine, example_model):
    class Reversing:
        def encode(self, entity, field, value, record_id=None, subject=None):
            return "enc:" + str(value)[::-1]

        def decode(self, entity, field, stored, record_id=None):
            return stored[4:][::-1]

    entity = next(e for e in example_model.entities if any(f.encrypted and f.type == "string" for f in e.fields))
    field = next(f for f in entity.fields if f.encrypted and f.type == "string")
    create_changelog_tables(engine)
    log = ChangeLog(codec=Reversing())
    record = {"id": "0190a0b0-0000-7000-8000-000000000009", "version": 1, field.name: "secret diagnosis"}
    with write_transaction(engine) as conn:
        log.record_changes(conn, [(entity, "create", record)])
    with engine.connect() as conn:
        stored = conn.execute(sa.text(f"select row from {CHANGES_TABLE}")).scalar_one()
    assert "secret diagnosis" not in stored and "sisongaid terces" in stored
    change = _all_changes(engine)[0]
    assert decode_row(entity, change.row, Reversing()) == record


# -- reading -----------------------------------------------------------------------------------

def test_pages_and_entity_filter(store, engine):
    territories = [_territory(store, f"MH-{i:02d}") for i in range(5)]
    store.update("territory", territories[0]["id"], {"name": "Again"}, expected_version=1)
    page, cursor, more = changes_after(engine, 0, 4)
    assert [c.position for c in page] == [1, 2, 3, 4] and cursor == 4 and more
    page, cursor, more = changes_after(engine, cursor, 4)
    assert [c.position for c in page] == [5, 6] and cursor == 6 and not more
    assert changes_after(engine, cursor, 4) == ([], 6, False)
    assert count_after(engine, 0) == 6 and count_after(engine, 0, ["product"]) == 0
    # a reader of a quiet entity moves its cursor to the head rather than rescanning
    assert changes_after(engine, 0, 10, ["product"]) == ([], 6, False)
    store.create("product", {"sku": "P1", "name": "P1", "category": "pharma", "unit_price": "1.00"})
    page, cursor, more = changes_after(engine, 6, 10, ["product", "retailer"])
    assert [(c.position, c.entity) for c in page] == [(7, "product")] and cursor == 7
    with pytest.raises(ValueError):
        changes_after(engine, 0, 0)


# -- compaction --------------------------------------------------------------------------------

def test_compaction_keeps_the_latest_change_per_record(store, engine):
    a, b, c = (_territory(store, f"MH-0{i}") for i in range(3))
    for v in range(1, 4):
        store.update("territory", a["id"], {"name": f"A{v}"}, expected_version=v)
    store.update("territory", b["id"], {"name": "B2"}, expected_version=1)
    store.delete("territory", b["id"], expected_version=2)
    store.update("territory", c["id"], {"name": "C2"}, expected_version=1)  # position 9
    with write_transaction(engine) as conn:
        deleted = compact(conn, before_position=9)
    # a: create + 2 superseded updates; b: create + update; c: create (its update is at 9)
    assert deleted == 3 + 2 + 1
    remaining = _all_changes(engine)
    assert [(ch.position, ch.op) for ch in remaining] == [(6, "update"), (8, "delete"), (9, "update")]
    assert _replay(remaining) == _table_state(store)
    assert oldest_retained_position(engine) == 9
    with write_transaction(engine) as conn:  # the watermark never moves down
        assert compact(conn, before_position=3) == 0
    assert oldest_retained_position(engine) == 9
    _territory(store, "MH-09")  # positions go on from the counter, not from the table
    assert _all_changes(engine)[-1].position == 10


# -- property: the log replays to the table ----------------------------------------------------

_OPS = st.lists(st.tuples(st.sampled_from(["create", "update", "delete"]), st.integers(0, 3),
                          st.sampled_from(["north", "south", "east"])), min_size=1, max_size=14)


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=_OPS)
def test_replaying_the_log_gives_the_final_table_state(store, engine, ops):
    # the fixture is shared by the examples, so each example starts from empty tables
    with write_transaction(engine) as conn:
        conn.execute(sa.text(f"delete from {CHANGES_TABLE}"))
        conn.execute(store.table(store.model.entity("territory")).delete())
    live: dict[int, dict] = {}
    n_before = count_after(engine, 0)
    for i, (op, slot, region) in enumerate(ops):
        current = live.get(slot)
        if op == "create" or current is None:
            if current is None:  # a create on a live slot would only repeat a unique code
                live[slot] = _territory(store, f"S{slot}-{i}", region)
        elif op == "update":
            live[slot] = store.update("territory", current["id"], {"region": region},
                                      expected_version=current["version"])
        else:
            store.delete("territory", current["id"], expected_version=current["version"])
            live.pop(slot)
    changes = _all_changes(engine)
    assert n_before == 0
    positions = [c.position for c in changes]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    assert positions == list(range(positions[0], positions[0] + len(positions)))  # no holes
    assert _replay(changes) == _table_state(store)


# -- concurrency: gap-free cursors (invariant 3) -----------------------------------------------

WRITERS = 4
WRITES_PER_WRITER = 60


def _concurrent_pull(store, engine):
    """WRITERS threads write through RecordStore while a reader pulls by cursor. Returns what
    the reader saw, and checks each newly seen position lies above the cursor it pulled from.

    The check that can fail is the caller's: the union of what the reader saw equals the log.
    (`changes_after` only returns positions above the cursor, so a late-committing lower
    position is never returned: it is silently skipped, which is the bug invariant 3 forbids.)
    With SequenceChangeLog (below) as the hook on PostgreSQL, this test failed 10 runs out of
    10 (the reader missed 6 to 10 positions each time); being timing-dependent it is not kept
    as an xfail: the deterministic proof is test_sequence_positions_lose_changes.
    """
    start = threading.Barrier(WRITERS + 1)
    writers_done = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []
    pulls = [0]
    pulls_after_done = [0]

    def writer(w):
        try:
            start.wait()
            rec = _territory(store, f"W{w}-0")
            for i in range(1, WRITES_PER_WRITER):
                if i % 3 == 0:
                    rec = _territory(store, f"W{w}-{i}")
                else:
                    rec = store.update("territory", rec["id"], {"name": f"w{w} {i}"},
                                       expected_version=rec["version"])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def reader():
        cursor = 0
        try:
            start.wait()
            final = False
            while True:
                # read the flag before pulling: a pull after every writer finished sees them all
                final = writers_done.is_set()
                page, next_cursor, more = changes_after(engine, cursor, 25)
                pulls[0] += 1
                for c in page:
                    assert c.position > cursor, f"position {c.position} appeared below cursor {cursor}"
                seen.extend(c.position for c in page)
                cursor = next_cursor
                if final and not more:
                    return
                # bounded once the writers are done (while they write, a busy reader may pull any
                # number of times on a loaded machine): the rest must drain in a few pages
                if final:
                    pulls_after_done[0] += 1
                    if pulls_after_done[0] > 10_000:
                        raise AssertionError("reader did not finish")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    reading = threading.Thread(target=reader)
    for t in threads + [reading]:
        t.start()
    for t in threads:
        t.join()
    writers_done.set()
    reading.join()
    assert not errors, errors
    return seen, pulls[0]


def test_concurrent_writers_never_leave_a_gap_behind_the_cursor(store, engine):
    began = time.perf_counter()
    seen, pulls = _concurrent_pull(store, engine)
    elapsed = time.perf_counter() - began
    total = WRITERS * WRITES_PER_WRITER
    every = [c.position for c in _all_changes(engine)]
    assert every == list(range(1, total + 1))  # one change per write, no holes
    assert sorted(seen) == every and len(seen) == len(set(seen))  # the reader saw each exactly once
    assert _replay(_all_changes(engine)) == _table_state(store)
    print(f"{engine.dialect.name}: {total} writes by {WRITERS} threads, {pulls} pulls, {elapsed:.2f}s")


# -- why not a sequence: the interleaving that loses a change ----------------------------------

class SequenceChangeLog(ChangeLog):
    """The wrong design (DESIGN.md §4): positions from a sequence, taken at insert time."""

    def _take_positions(self, conn, n):
        return [conn.execute(sa.text("select nextval('fs_demo_seq')")).scalar_one() for _ in range(n)][-1]


def _waiting_on_lock(engine, pid):
    with engine.connect() as conn:
        return conn.execute(sa.text("select wait_event_type = 'Lock' from pg_stat_activity where pid = :pid"),
                            {"pid": pid}).scalar_one()


def _interleave(engine, log, entity):
    """Writer A takes a position and stays open; writer B writes and commits (or blocks behind
    A); the reader pulls; A commits; the reader pulls on from its cursor. Returns the positions
    the reader saw and every position in the log at the end."""
    rec = lambda n: {"id": f"0190a0b0-0000-7000-8000-{n:012d}", "version": 1}  # noqa: E731
    b_pid, b_started, b_done, errors = [None], threading.Event(), threading.Event(), []

    def writer_b():
        try:
            with write_transaction(engine) as conn:
                b_pid[0] = conn.execute(sa.text("select pg_backend_pid()")).scalar_one()
                b_started.set()
                log.record_changes(conn, [(entity, "create", rec(2))])
        except BaseException as exc:
            errors.append(exc)
        finally:
            b_started.set()
            b_done.set()

    with write_transaction(engine) as conn_a:
        log.record_changes(conn_a, [(entity, "create", rec(1))])
        b = threading.Thread(target=writer_b)
        b.start()
        assert b_started.wait(10)
        # go on once B has committed, or is blocked behind A's position lock (bounded polling
        # of a condition, not a sleep)
        for _ in range(10_000):
            if b_done.is_set() or _waiting_on_lock(engine, b_pid[0]):
                break
        else:
            raise AssertionError("writer B neither finished nor waited")
        page, cursor, _ = changes_after(engine, 0, 10)
        seen = [c.position for c in page]
    b.join()
    assert not errors, errors
    page, cursor, _ = changes_after(engine, cursor, 10)
    seen += [c.position for c in page]
    return seen, [c.position for c in _all_changes(engine)]


@pytest.mark.postgres
def test_counter_positions_survive_the_losing_interleaving(pg_url, example_model):
    engine = make_engine(pg_url)
    try:
        create_changelog_tables(engine)
        seen, every = _interleave(engine, ChangeLog(), example_model.entity("territory"))
        assert every == [1, 2] and sorted(seen) == every
    finally:
        engine.dispose()


@pytest.mark.postgres
@pytest.mark.xfail(strict=True, reason="a sequence numbers at insert time, so B's 2 is pulled before A's 1 "
                                        "commits and the reader's cursor has passed 1: the change is lost")
def test_sequence_positions_lose_changes(pg_url, example_model):
    engine = make_engine(pg_url)
    try:
        create_changelog_tables(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("create sequence fs_demo_seq"))
        seen, every = _interleave(engine, SequenceChangeLog(), example_model.entity("territory"))
        assert every == [1, 2]
        assert sorted(seen) == every  # fails: the reader never saw position 1
    finally:
        engine.dispose()
