"""Applying what the server sends: results (§5.2), pull pages (§10.2) and the reset (§6.7).

Each function works inside the caller's local transaction, so a page is applied whole or not
at all: results first, then changes (skipping rows with `_dirty = 1`), then the window purge,
then `cursor`, `resume`, `scope_hash`. A page that was fetched but not committed is simply
pulled again: every change kind is idempotent (version guards, deletes of missing rows).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from fieldsync.client.conflicts import conflict_item, is_conflict, keep_conflicts
from fieldsync.errors import ProblemType, ProtocolError, ValueProblem
from fieldsync.client.outbox import add_refetch, quarantine_entry, quarantine_locally, remaining_entries
from fieldsync.client.schema import EntityTable, quote
from fieldsync.client.store import LocalStore
from fieldsync.defs.values import parse_datetime


@dataclass
class Applied:
    """What one batch of results or one page did to the store."""

    applied: int = 0
    rejected: int = 0
    conflicts: int = 0     # applied results reporting a conflict loss
    changes: int = 0
    refetch: list[dict[str, str]] = field(default_factory=list)
    lost: list[dict[str, Any]] = field(default_factory=list)   # the conflicts to keep


# -- results -------------------------------------------------------------------------------------

def settle_results(store: LocalStore, conn: sqlite3.Connection, results: list[Mapping[str, Any]],
                   now: dt.datetime, outcome: Applied) -> None:
    """Settle outbox entries from their results, ascending by seq (§5.2, decisions 1, 3, 4)."""
    ordered = sorted(results, key=lambda r: r.get("seq", 0))
    if len(ordered) > 1 and all(_plainly_applied(r) for r in ordered):
        _settle_applied(store, conn, ordered, outcome)
        return
    for result in ordered:
        settle_result(store, conn, result, now, outcome)
    keep_conflicts(store, conn, outcome.lost)
    outcome.lost = []


def _plainly_applied(result: Mapping[str, Any]) -> bool:
    seq = result.get("seq")
    return (result.get("status") == "applied" and isinstance(seq, int) and not isinstance(seq, bool)
            and not is_conflict(result) and isinstance(result.get("row"), (dict, type(None))))


def _settle_applied(store: LocalStore, conn: sqlite3.Connection, results: list[Mapping[str, Any]],
                    outcome: Applied) -> None:
    """`settle_result` of results that are all `applied` without a conflict loss (a device's
    own pushes coming back: nearly every page), a few statements per page instead of five per
    result: the same entries deleted, and each record whose last entry settled put right from
    its last result's `row`, as `_settle_record` does."""
    by_seq = {r["seq"]: r for r in results}
    entries = _outbox_entries(conn, list(by_seq))
    if not entries:
        return
    conn.executemany('DELETE FROM "_outbox" WHERE seq = ?', [(seq,) for seq in entries])
    outcome.applied += len(entries)
    last: dict[tuple[str, str], int] = {}
    for seq, entry in entries.items():   # ascending: the last result of each record wins
        last[(entry["entity"], entry["record_id"])] = seq
    waiting = _records_with_entries(conn, list(last))
    settle: dict[str, list[tuple[str, Mapping[str, Any] | None]]] = {}
    for (entity, record_id), seq in last.items():
        if (entity, record_id) not in waiting:   # a later write is on its way; its result settles it
            settle.setdefault(entity, []).append((record_id, by_seq[seq].get("row")))
    for entity, records in settle.items():
        table = store.table(entity)
        local = _local_versions(conn, table, [record_id for record_id, _ in records])
        writes = []
        for record_id, row in records:
            if row is None or row.get("deleted"):
                store.delete_row(conn, table, record_id, only_clean=False)
                continue
            version = int(row.get("version") or 0)
            held = local.get(record_id)
            if held is None or held[0] or held[1] < version:
                writes.append(table.server_row_values(record_id, row, version))
        if writes:
            conn.executemany(table.server_row_sql, writes)


def _outbox_entries(conn: sqlite3.Connection, seqs: list[int]) -> dict[int, sqlite3.Row]:
    """The outbox entries of `seqs` still there, ascending by seq (500 bound values a query)."""
    found: dict[int, sqlite3.Row] = {}
    for start in range(0, len(seqs), 500):
        chunk = seqs[start:start + 500]
        for entry in conn.execute(f'SELECT * FROM "_outbox" WHERE seq IN ({", ".join("?" for _ in chunk)})', chunk):
            found[entry["seq"]] = entry
    return dict(sorted(found.items()))


def _records_with_entries(conn: sqlite3.Connection, records: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those of `records` ((entity, id) pairs) that still have an outbox entry."""
    by_entity: dict[str, list[str]] = {}
    for entity, record_id in records:
        by_entity.setdefault(entity, []).append(record_id)
    waiting: set[tuple[str, str]] = set()
    for entity, ids in by_entity.items():
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            waiting.update((entity, r[0]) for r in conn.execute(
                f'SELECT record_id FROM "_outbox" WHERE entity = ? AND record_id IN ({", ".join("?" for _ in chunk)})',
                [entity, *chunk]))
    return waiting


def _local_versions(conn: sqlite3.Connection, table: EntityTable, ids: list[str]) -> dict[str, tuple[int, int]]:
    """id -> (_dirty, _version) of the local rows among `ids`."""
    held: dict[str, tuple[int, int]] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for r in conn.execute(f"SELECT id, _dirty, _version FROM {quote(table.table)} "
                              f"WHERE id IN ({', '.join('?' for _ in chunk)})", chunk):
            held[r[0]] = (r[1], r[2])
    return held


def settle_result(store: LocalStore, conn: sqlite3.Connection, result: Mapping[str, Any],
                  now: dt.datetime, outcome: Applied) -> None:
    seq = result.get("seq")
    entry = conn.execute('SELECT * FROM "_outbox" WHERE seq = ?', (seq,)).fetchone()
    if entry is None:
        return  # settled before (a result delivered twice): nothing to do
    if result.get("status") == "duplicate":
        if result.get("payload_mismatch"):
            # this seq was processed with another payload: a client bug; ours never took effect
            quarantine_locally(store, conn, entry, kind=ProblemType.SEQ_REUSED, now=now,
                               reason=f"seq {seq} was already used for another mutation; this one was not applied")
            outcome.rejected += 1
            return
        result = result.get("first") or {}
    status = result.get("status")
    if status == "applied":
        conn.execute('DELETE FROM "_outbox" WHERE seq = ?', (seq,))
        outcome.applied += 1
        if is_conflict(result):   # invariant 5: a conflict loss reaches the app
            outcome.lost.append(conflict_item(entry, result, now))
            outcome.conflicts += 1
        _settle_record(store, conn, entry, result.get("row"), force=False)
    elif status == "rejected" and result.get("permanent", True) is False:
        # not sent by protocol v1 servers (decision 1), kept for a later version: send again
        conn.execute("UPDATE \"_outbox\" SET status = 'pending', attempts = attempts + 1 WHERE seq = ?", (seq,))
    elif status == "rejected":
        reason = result.get("detail") or result.get("title") or result.get("type") or "rejected"
        quarantine_entry(conn, entry, reason=reason, code=result.get("type"), errors=result.get("errors"), now=now)
        outcome.rejected += 1
        _settle_record(store, conn, entry, result.get("row"), force=True)
    else:
        raise ProtocolError(200, {"detail": f"result for seq {seq} has an unknown status {status!r}"})


def _settle_record(store: LocalStore, conn: sqlite3.Connection, entry: sqlite3.Row,
                   row: Mapping[str, Any] | None, *, force: bool) -> None:
    """§10.3: when the record's last unsettled entry has its result, put the local row right
    from the result's `row` (the server's record as this device may see it)."""
    if remaining_entries(conn, entry["entity"], entry["record_id"]):
        return  # a later write of the record is still on its way; its result will settle it
    table = store.table(entry["entity"])
    record_id = entry["record_id"]
    if row is None or row.get("deleted"):
        store.delete_row(conn, table, record_id, only_clean=False)
        return
    local = store.row(conn, table, record_id)
    version = int(row.get("version") or 0)
    if local is None or force or local["_dirty"] or local["_version"] < version:
        store.write_server_row(conn, table, record_id, row, version)


# -- pages ---------------------------------------------------------------------------------------

def check_page(page: Mapping[str, Any]) -> None:
    """Refuse a page without the members the device stores (before anything is applied)."""
    problems = []
    if not isinstance(page.get("cursor"), int) or isinstance(page.get("cursor"), bool):
        problems.append("cursor")
    if not isinstance(page.get("has_more"), bool):
        problems.append("has_more")
    for member in ("changes", "results"):
        if not isinstance(page.get(member, []), list):
            problems.append(member)
    if problems:
        raise ProtocolError(200, {"detail": f"the pull page lacks or mistypes {', '.join(problems)}"})


def apply_page(store: LocalStore, conn: sqlite3.Connection, page: Mapping[str, Any], *,
               refetch_sent: list[Mapping[str, str]], now: dt.datetime) -> Applied:
    """Apply one pull page inside the caller's transaction (§10.2)."""
    outcome = Applied()
    settle_results(store, conn, list(page.get("results") or ()), now, outcome)
    apply_changes(store, conn, page.get("changes") or (), outcome)
    purge_windows(store, conn, page.get("windows") or {})
    sent = {(i["entity"], i["id"]) for i in refetch_sent}
    pending = [i for i in store.state_in(conn, "refetch", []) if (i["entity"], i["id"]) not in sent]
    store.set_state(conn, refetch=pending)
    if outcome.refetch:
        add_refetch(store, conn, outcome.refetch)
    state = {"cursor": int(page["cursor"]), "resume": page.get("resume"), "scope_hash": page.get("scope_hash")}
    if page.get("write_checkpoint") is not None:
        state["write_checkpoint"] = max(int(page["write_checkpoint"]), int(store.state_in(conn, "write_checkpoint", 0)))
    if page.get("head") is not None:
        state["head"] = int(page["head"])
    store.set_state(conn, **state)
    return outcome


def apply_changes(store: LocalStore, conn: sqlite3.Connection, changes: Iterable[Mapping[str, Any]],
                  outcome: Applied) -> None:
    """A page's changes, in order (§6.3). Rows with `_dirty = 1` keep their local values whatever
    arrives: their outbox entry's result will put them right.

    The changes are written in runs with one statement per table (and patched field set)
    instead of one per change. A run is `upsert`s and `patch`es of distinct records (each
    touches one row, so their order does not matter), then `delete`s and `remove`s (deleting
    clean rows and their clean children leaves the same rows whatever the order). A `clear`,
    a record already in the run or a write after a delete starts a new run, so the store ends
    as if the changes were applied one by one (tests/client/test_page_runs.py checks this).
    """
    assert store.schema is not None
    entities = store.schema.entities
    run = _Run(store, conn)
    records, upserts, patches, deletes = run.records, run.upserts, run.patches, run.deletes
    plans: dict[tuple[str, tuple[str, ...]], tuple[tuple[str, ...] | None, list[Any], tuple[str, tuple[str, ...]]]] = {}
    for index, change in enumerate(changes):
        kind = change.get("kind")
        table = entities.get(change.get("entity"))
        if table is None:
            raise ProtocolError(200, {"detail": f"a {kind} change names an entity this device does not have: "
                                                f"{change.get('entity')!r}"})
        if kind == "upsert" or kind == "patch":
            record_id = change["id"]
            key = (table.name, record_id)
            if deletes or key in records:
                run.flush()
            records.add(key)
            version = int(change["version"])
            if kind == "upsert":
                rows = upserts.get(table.name)
                if rows is None:
                    rows = upserts[table.name] = (table, [])
                rows[1].append(table.server_row_values(record_id, change.get("row") or {}, version))
            else:
                sent = change.get("fields") or {}
                shape = (table.name, tuple(sent))
                plan = plans.get(shape)
                if plan is None:   # once per patched field set: which fields to keep, how to store them
                    plan = plans[shape] = _patch_plan(table, shape[1])
                kept, steps, group = plan
                if kept is None:   # every field sent is a column of this device's table
                    values = [v if v is None or step is None else step(v) for step, v in zip(steps, sent.values())]
                else:
                    values = [v if (v := sent[k]) is None or step is None else step(v) for k, step in zip(kept, steps)]
                values += (version, change.get("updated_at"), record_id, change.get("from_version"), version)
                rows = patches.get(group)
                if rows is None:
                    rows = patches[group] = (table, [])
                rows[1].append((index, record_id, version, values))
        elif kind == "delete" or kind == "remove":
            record_id = change["id"]
            deletes.setdefault(table.name, (table, {}))[1][record_id] = None
        elif kind == "clear":
            run.flush()
            conn.execute(f"DELETE FROM {quote(table.table)} WHERE _dirty = 0")
        else:
            raise ProtocolError(200, {"detail": f"unknown change kind {kind!r}"})
        outcome.changes += 1
    run.flush()
    run.refetch.sort(key=lambda item: item[0])
    outcome.refetch += [item for _, item in run.refetch]


def _patch_plan(table: EntityTable, names: tuple[str, ...]
                ) -> tuple[tuple[str, ...] | None, list[Any], tuple[str, tuple[str, ...]]]:
    """How to store a patch of `names`: the names kept (None when all are columns of `table`; a
    field this device does not have is left out), each one's storage converter (None: as
    sent), and the key of the statement group its rows join."""
    converters = table.converters
    kept = tuple(k for k in names if k in converters)
    return (None if kept == names else kept), [converters[k] for k in kept], (table.name, kept)


class _Run:
    """The changes of the current run, by table, waiting to be written together: the writes
    first, then the deletes."""

    def __init__(self, store: LocalStore, conn: sqlite3.Connection):
        self.store = store
        self.conn = conn
        self.records: set[tuple[str, str]] = set()
        # entity -> (table, parameters of its pulled_row_sql)
        self.upserts: dict[str, tuple[EntityTable, list[list[Any]]]] = {}
        # (entity, patched fields) -> (table, [(change index, record id, version, parameters)])
        self.patches: dict[tuple[str, tuple[str, ...]], tuple[EntityTable, list[tuple[int, str, int, list[Any]]]]] = {}
        # entity -> (table, record ids as the keys of a dict: ordered, each once)
        self.deletes: dict[str, tuple[EntityTable, dict[str, None]]] = {}
        # (change index, record to refetch), from patches that found no clean row at from_version
        self.refetch: list[tuple[int, dict[str, str]]] = []

    def flush(self) -> None:
        """Write the run and start an empty one."""
        for table, rows in self.upserts.values():
            self.conn.executemany(table.pulled_row_sql, rows)
        for (_, names), (table, patches) in self.patches.items():
            cursor = self.conn.executemany(table.patch_sql(names), [p[3] for p in patches])
            if cursor.rowcount != len(patches):
                self.refetch += _to_refetch(self.conn, table, patches)
        for table, ids in self.deletes.values():
            self.store.delete_clean_rows(self.conn, table, list(ids))
        self.records.clear()
        self.upserts.clear()
        self.patches.clear()
        self.deletes.clear()


def _to_refetch(conn: sqlite3.Connection, table: EntityTable,
                patches: list[tuple[int, str, int, list[Any]]]) -> list[tuple[int, dict[str, str]]]:
    """The patched records to refetch: missing, or clean and older than the patch without having
    taken it (their version was not its `from_version`). Dirty rows and rows already at the
    patch's version or newer need nothing."""
    local: dict[str, tuple[int, int]] = {}
    ids = [p[1] for p in patches]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        local.update((r[0], (r[1], r[2])) for r in conn.execute(
            f"SELECT id, _version, _dirty FROM {quote(table.table)} WHERE id IN ({', '.join('?' for _ in chunk)})",
            chunk))
    found = []
    for index, record_id, version, _ in patches:
        row = local.get(record_id)
        if row is None or (not row[1] and row[0] < version):
            found.append((index, {"entity": table.name, "id": record_id}))
    return found


def purge_windows(store: LocalStore, conn: sqlite3.Connection, windows: Mapping[str, Any]) -> None:
    """§6.6: drop clean rows whose window field is below the floor (or null).

    Every page carries the floors, so this must not read every row of a large table: SQLite
    leaves out the rows whose value is text starting with an ISO date at or after a day that is
    surely not below the floor (`_below`), and only the others are checked here.
    """
    assert store.schema is not None
    for entity, floor in windows.items():
        table = store.schema.entities.get(entity)
        if table is None or floor is None or not table.window_field:
            continue
        column = table.column(table.window_field)
        below, kept_from = _below(column.type, str(floor))
        doomed = [r[0] for r in conn.execute(
            f"SELECT id, {quote(column.name)} FROM {quote(table.table)} WHERE _dirty = 0 AND NOT coalesce("
            f"typeof({quote(column.name)}) = 'text' AND {quote(column.name)} GLOB '{_ISO_DATE}*' "
            f"AND substr({quote(column.name)}, 1, 10) >= ?, 0)", (kept_from,))
            if r[1] is None or below(r[1])]
        store.delete_clean_rows(conn, table, doomed)


_ISO_DATE = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"


def _below(kind: str, floor: str) -> tuple[Callable[[Any], bool], str]:
    """Whether a stored value is below the floor, and the first day (`YYYY-MM-DD`) from which a
    value starting with that date never is: the floor's day for a date; two days after it for a
    date-time, since a time zone offset moves an instant by less than a day."""
    if kind == "date":
        floor_date = floor[:10]
        return (lambda value: str(value)[:10] < floor_date), floor_date
    floor_time = parse_datetime(floor if "T" in floor else floor + "T00:00:00Z")

    def below(value: Any) -> bool:
        try:
            return parse_datetime(value) < floor_time
        except ValueProblem:
            return False
    return below, (floor_time.date() + dt.timedelta(days=2)).isoformat()


# -- reset ---------------------------------------------------------------------------------------

def reset_store(store: LocalStore, conn: sqlite3.Connection) -> None:
    """§6.7: keep `_outbox`, `_quarantine`, `device_id` and `install_id`; delete every clean row;
    start again from cursor 0 with no scope hash (the next pull is a snapshot)."""
    assert store.schema is not None
    for table in store.schema.entities.values():
        conn.execute(f"DELETE FROM {quote(table.table)} WHERE _dirty = 0")
    store.set_state(conn, cursor=0, resume=None, scope_hash=None, refetch=[], bundle=None)
