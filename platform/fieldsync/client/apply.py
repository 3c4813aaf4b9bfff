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
from typing import Any, Mapping

from fieldsync.client.errors import ProtocolError
from fieldsync.client.outbox import add_refetch, quarantine_entry, quarantine_locally, remaining_entries
from fieldsync.client.schema import EntityTable, quote
from fieldsync.client.store import LocalStore
from fieldsync.defs.values import ValueProblem, parse_datetime


@dataclass
class Applied:
    """What one batch of results or one page did to the store."""

    applied: int = 0
    rejected: int = 0
    changes: int = 0
    refetch: list[dict[str, str]] = field(default_factory=list)


# -- results -------------------------------------------------------------------------------------

def settle_results(store: LocalStore, conn: sqlite3.Connection, results: list[Mapping[str, Any]],
                   now: dt.datetime, outcome: Applied) -> None:
    """Settle outbox entries from their results, ascending by seq (§5.2, decisions 1, 3, 4)."""
    for result in sorted(results, key=lambda r: r.get("seq", 0)):
        settle_result(store, conn, result, now, outcome)


def settle_result(store: LocalStore, conn: sqlite3.Connection, result: Mapping[str, Any],
                  now: dt.datetime, outcome: Applied) -> None:
    seq = result.get("seq")
    entry = conn.execute('SELECT * FROM "_outbox" WHERE seq = ?', (seq,)).fetchone()
    if entry is None:
        return  # settled before (a result delivered twice): nothing to do
    if result.get("status") == "duplicate":
        if result.get("payload_mismatch"):
            # this seq was processed with another payload: a client bug; ours never took effect
            quarantine_locally(store, conn, entry, name="seq-reused", now=now,
                               reason=f"seq {seq} was already used for another mutation; this one was not applied")
            outcome.rejected += 1
            return
        result = result.get("first") or {}
    status = result.get("status")
    if status == "applied":
        conn.execute('DELETE FROM "_outbox" WHERE seq = ?', (seq,))
        outcome.applied += 1
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
    for change in page.get("changes") or ():
        apply_change(store, conn, change, outcome)
        outcome.changes += 1
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


def apply_change(store: LocalStore, conn: sqlite3.Connection, change: Mapping[str, Any], outcome: Applied) -> None:
    """One change (§6.3). Rows with `_dirty = 1` keep their local values whatever arrives: their
    outbox entry's result will put them right."""
    kind = change.get("kind")
    try:
        table = store.table(change["entity"])
    except KeyError:
        raise ProtocolError(200, {"detail": f"a {kind} change names an entity this device does not have: "
                                            f"{change.get('entity')!r}"}) from None
    if kind == "clear":
        conn.execute(f"DELETE FROM {quote(table.table)} WHERE _dirty = 0")
        return
    record_id = change["id"]
    local = store.row(conn, table, record_id)
    if kind in ("delete", "remove"):
        store.delete_row(conn, table, record_id, only_clean=True)
        return
    if local is not None and local["_dirty"]:
        return
    version = int(change["version"])
    if kind == "upsert":
        if local is None or local["_version"] < version:
            store.write_server_row(conn, table, record_id, change.get("row") or {}, version)
    elif kind == "patch":
        if local is not None and local["_version"] >= version:
            return  # already newer
        if local is None or local["_version"] != change.get("from_version"):
            outcome.refetch.append({"entity": table.name, "id": record_id})
            return
        _patch(conn, table, record_id, change, version)
    else:
        raise ProtocolError(200, {"detail": f"unknown change kind {kind!r}"})


def _patch(conn: sqlite3.Connection, table: EntityTable, record_id: str, change: Mapping[str, Any],
           version: int) -> None:
    known = set(table.field_names)
    fields = {k: v for k, v in (change.get("fields") or {}).items() if k in known}
    assignments = [f"{quote(k)} = ?" for k in fields] + ["_version = ?", "_updated_at = ?"]
    values = [table.column(k).to_storage(v) for k, v in fields.items()] + [version, change.get("updated_at")]
    conn.execute(f"UPDATE {quote(table.table)} SET {', '.join(assignments)} WHERE id = ?", [*values, record_id])


def purge_windows(store: LocalStore, conn: sqlite3.Connection, windows: Mapping[str, Any]) -> None:
    """§6.6: drop clean rows whose window field is below the floor (or null)."""
    assert store.schema is not None
    for entity, floor in windows.items():
        table = store.schema.entities.get(entity)
        if table is None or floor is None or not table.window_field:
            continue
        column = table.column(table.window_field)
        below = _below(column.type, str(floor))
        doomed = [r["id"] for r in conn.execute(
            f"SELECT id, {quote(column.name)} AS w FROM {quote(table.table)} WHERE _dirty = 0")
            if r["w"] is None or below(r["w"])]
        for record_id in doomed:
            store.delete_row(conn, table, record_id, only_clean=True)


def _below(kind: str, floor: str):
    if kind == "date":
        floor_date = floor[:10]
        return lambda value: str(value)[:10] < floor_date
    floor_time = parse_datetime(floor if "T" in floor else floor + "T00:00:00Z")

    def below(value: Any) -> bool:
        try:
            return parse_datetime(value) < floor_time
        except ValueProblem:
            return False
    return below


# -- reset ---------------------------------------------------------------------------------------

def reset_store(store: LocalStore, conn: sqlite3.Connection) -> None:
    """§6.7: keep `_outbox`, `_quarantine`, `device_id` and `install_id`; delete every clean row;
    start again from cursor 0 with no scope hash (the next pull is a snapshot)."""
    assert store.schema is not None
    for table in store.schema.entities.values():
        conn.execute(f"DELETE FROM {quote(table.table)} WHERE _dirty = 0")
    store.set_state(conn, cursor=0, resume=None, scope_hash=None, refetch=[])
