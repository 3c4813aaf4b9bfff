"""Local writes and the `_outbox` (protocol §10.1, §10.4).

A write changes the entity row (`_dirty = 1`; a delete sets `_deleted = 1` and keeps the row
until it settles) and inserts its `_outbox` entry in ONE local transaction: neither exists
without the other. `seq` is the table's AUTOINCREMENT, so a seq is never reused for the life
of the store (invariant 2). Nothing here touches the network.

Entry statuses used: `pending` (not sent), `sent` (sent, no answer: resent with the same seq),
`received` (the server made it durable; its result comes later). An applied entry is deleted
when its result is stored; a rejected one moves to `_quarantine` (sync-design.md decision 4).
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import sqlite3
import uuid
from typing import Any, Iterable, Mapping

from fieldsync import json_wire
from fieldsync.errors import ClientError, ProblemType, ValidationError
from fieldsync.client.reports import QuarantinedMutation
from fieldsync.client.schema import EntityTable, quote
from fieldsync.client.store import LocalStore
from fieldsync.client.write_plan import OUTBOX_INSERT, WritePlan, encode_fields, encode_many, plan_for
from fieldsync.defs.values import FieldProblem, format_datetime
from fieldsync.ids import new_id, new_ids

UNSETTLED = ("pending", "sent", "received")


def check_fields(table: EntityTable, fields: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
    """Validate a local write like the server will, returning the values in wire form."""
    return plan_for(table).check(fields, partial=partial)


def _add_entry(conn: sqlite3.Connection, table: EntityTable, op: str, record_id: str,
               base_version: int | None, fields: Mapping[str, Any], now: dt.datetime) -> int:
    cursor = conn.execute(OUTBOX_INSERT, (table.name, op, record_id, base_version, encode_fields(fields),
                                          format_datetime(now)))
    return int(cursor.lastrowid)


def _live_row(store: LocalStore, conn: sqlite3.Connection, table: EntityTable, record_id: str,
              names: tuple[str, ...] = ()) -> sqlite3.Row:
    """`_version`, `_deleted` and the columns `names` of a record that exists and is not deleted."""
    row = conn.execute(plan_for(table).read_sql(names), (record_id,)).fetchone()
    if row is None or row["_deleted"]:
        raise ClientError(f"no {table.name} {record_id} on this device")
    return row


def write_insert(store: LocalStore, entity: str, fields: Mapping[str, Any], now: dt.datetime) -> tuple[str, int]:
    """Insert a record made on the device (a UUIDv7 id, time-ordered) and queue it; returns
    the id and the entry's seq. The entry is built from the checked values, not by reading
    the row back."""
    plan = plan_for(store.table(entity))
    clean, values = plan.insert_row(fields)
    record_id = values[0] = new_id(now)
    entry = (entity, "insert", record_id, None, encode_fields(clean), format_datetime(now))
    with store.write() as conn:
        conn.execute(plan.insert_sql(tuple(clean)), values)
        seq = conn.execute(OUTBOX_INSERT, entry).lastrowid
    return record_id, int(seq)


def write_insert_many(store: LocalStore, entity: str, rows: Iterable[Mapping[str, Any]],
                      now: dt.datetime) -> tuple[list[str], int | None]:
    """Insert many records made on the device and queue them, in one transaction (or in the
    open batch); returns their ids in order and the last entry's seq (None for no rows).

    Every row is checked before anything is written: one bad row refuses the whole call with
    a ValidationError whose problems name the row (`rows[3].notes`) and the reason. Rows whose
    checked values set the same columns share one `executemany`; the entries' seqs ascend in
    the order of `rows` (one `executemany` over all of them)."""
    plan = plan_for(store.table(entity))
    plan.refuse_read_only()
    with _NoCollection():
        return _insert_many(store, plan, entity, rows, now)


class _NoCollection:
    """The cyclic garbage collector held off while a batch is built and written: the batch
    makes four containers a row that all live until the commit, so every collection meanwhile
    walks them for nothing (a sixth of `insert_many`'s time on 20,000 rows). Reference counting
    still frees everything; the collector runs again after, and is left as it was found (an app
    that disabled it keeps it off)."""

    __slots__ = ("enabled",)

    def __enter__(self) -> None:
        self.enabled = gc.isenabled()
        if self.enabled:
            gc.disable()

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            gc.enable()


def _insert_many(store: LocalStore, plan: WritePlan, entity: str, rows: Iterable[Mapping[str, Any]],
                 now: dt.datetime) -> tuple[list[str], int | None]:
    if not isinstance(rows, (list, tuple)):
        rows = list(rows)
    values_of = plan.insert_values
    made = [values_of(fields) for fields in rows]
    if not made:
        return [], None
    if None in made:
        problems: list[FieldProblem] = []
        for index, fields in enumerate(rows):
            if made[index] is not None:
                continue
            result = plan.all_problems(fields, partial=False)
            if isinstance(result, list):
                problems += [FieldProblem(f"rows[{index}].{p.field}" if p.field else f"rows[{index}]", p.reason)
                             for p in result]
            else:
                made[index] = result, [None, *plan.storage_values(None, result)]
        if problems:
            raise ValidationError(entity, problems)
    client_time = format_datetime(now)
    ids = new_ids(len(made), now)
    groups: dict[tuple[str, ...], list[list[Any]]] = {}
    for record_id, (clean, values) in zip(ids, made):
        values[0] = record_id
        names = tuple(clean)
        group = groups.get(names)
        if group is None:
            groups[names] = [values]
        else:
            group.append(values)
    entries = [(entity, "insert", record_id, None, text, client_time)
               for record_id, text in zip(ids, encode_many([clean for clean, _ in made]))]
    with store.write() as conn:
        for names, values in groups.items():
            conn.executemany(plan.insert_sql(names), values)
        conn.executemany(OUTBOX_INSERT, entries)
        # AUTOINCREMENT: the batch took the seqs just below the table's counter
        last = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = '_outbox'").fetchone()[0]
    return ids, int(last)


def write_update(store: LocalStore, entity: str, record_id: str, fields: Mapping[str, Any],
                 now: dt.datetime) -> int | None:
    """Change some fields of a record; only the fields whose value changes are queued, and
    those of a quarantined write of the record, which the row may still hold though the server
    refused them (the app setting one again means it wants it sent). Returns the entry's seq,
    or None when nothing changed."""
    table = store.table(entity)
    plan = plan_for(table)
    clean = plan.check(fields, partial=True)
    names = tuple(clean)
    with store.write() as conn:
        row = _live_row(store, conn, table, record_id, names)
        changed = plan.changed_fields(row, clean)
        refused = _quarantined_fields(conn, entity, record_id) if clean and len(changed) < len(clean) else ()
        if any(name in clean and name not in changed for name in refused):
            changed = {name: value for name, value in clean.items() if name in changed or name in refused}
        if not changed:
            return None
        conn.execute(plan.update_sql(tuple(changed)), [*plan.storage_values(None, changed), record_id])
        return _add_entry(conn, table, "update", record_id, row["_version"], changed, now)


def _quarantined_fields(conn: sqlite3.Connection, entity: str, record_id: str) -> set[str]:
    """The fields written by the record's quarantined writes."""
    names: set[str] = set()
    for (fields,) in conn.execute('SELECT fields FROM "_quarantine" WHERE entity = ? AND record_id = ?',
                                  (entity, record_id)):
        names.update(json.loads(fields or "{}"))
    return names


def write_delete(store: LocalStore, entity: str, record_id: str, now: dt.datetime) -> int:
    """Delete a record: the row stays (`_deleted = 1`, hidden from reads) until it settles."""
    table = store.table(entity)
    plan = plan_for(table)
    plan.refuse_read_only()
    with store.write() as conn:
        row = _live_row(store, conn, table, record_id)
        conn.execute(plan.delete_sql, (record_id,))
        return _add_entry(conn, table, "delete", record_id, row["_version"], {}, now)


# -- reading the outbox ----------------------------------------------------------------------

def entries_to_send(store: LocalStore, limit: int) -> list[sqlite3.Row]:
    """The oldest entries not known to be received (pending and sent), ascending by seq."""
    with store.lock:
        return store.conn.execute(
            "SELECT * FROM \"_outbox\" WHERE status IN ('pending', 'sent') ORDER BY seq LIMIT ?",
            (limit,)).fetchall()


def entries_to_send_after(store: LocalStore, after_seq: int, limit: int) -> list[sqlite3.Row]:
    """`entries_to_send` beyond `after_seq` (read while the push up to it is in flight)."""
    with store.lock:
        return store.conn.execute(
            "SELECT * FROM \"_outbox\" WHERE status IN ('pending', 'sent') AND seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit)).fetchall()


def as_mutation(entry: sqlite3.Row) -> dict[str, Any]:
    return {"seq": entry["seq"], "entity": entry["entity"], "op": entry["op"], "id": entry["record_id"],
            "base_version": entry["base_version"], "client_time": entry["client_time"],
            "fields": json_wire.loads(entry["fields"])}


def counts(store: LocalStore) -> dict[str, int]:
    with store.lock:
        rows = store.conn.execute('SELECT status, count(*) AS n FROM "_outbox" GROUP BY status').fetchall()
        quarantined = store.conn.execute('SELECT count(*) FROM "_quarantine"').fetchone()[0]
    result = {"pending": 0, "sent": 0, "received": 0}
    for row in rows:
        result[row["status"]] = result.get(row["status"], 0) + row["n"]
    result["quarantined"] = quarantined
    return result


def settled_through(store: LocalStore) -> int:
    """The highest seq such that every result up to it is stored: the lowest seq still in the
    outbox minus one, or the last seq ever assigned when the outbox is empty (decision 3)."""
    with store.lock:
        low = store.conn.execute('SELECT min(seq) FROM "_outbox"').fetchone()[0]
        if low is not None:
            return int(low) - 1
        row = store.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = '_outbox'").fetchone()
    return int(row[0]) if row else 0


def remaining_entries(conn: sqlite3.Connection, entity: str, record_id: str) -> int:
    return conn.execute('SELECT count(*) FROM "_outbox" WHERE entity = ? AND record_id = ?',
                        (entity, record_id)).fetchone()[0]


# -- quarantine ----------------------------------------------------------------------------------

def quarantine_entry(conn: sqlite3.Connection, entry: sqlite3.Row, *, reason: str, code: str | None,
                     errors: list[dict[str, Any]] | None, now: dt.datetime) -> None:
    """Move an outbox entry to `_quarantine` (invariant 5: never dropped silently)."""
    conn.execute(
        'INSERT OR REPLACE INTO "_quarantine" (seq, entity, op, record_id, base_version, fields, client_time, '
        'reason, code, quarantined_at, errors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        (entry["seq"], entry["entity"], entry["op"], entry["record_id"], entry["base_version"], entry["fields"],
         entry["client_time"], reason, code, format_datetime(now), json.dumps(errors or [])))
    conn.execute('DELETE FROM "_outbox" WHERE seq = ?', (entry["seq"],))


def add_refetch(store: LocalStore, conn: sqlite3.Connection, items: list[dict[str, str]]) -> None:
    current = list(store.state_in(conn, "refetch", []))
    seen = {(i["entity"], i["id"]) for i in current}
    for item in items:
        if (item["entity"], item["id"]) not in seen:
            current.append({"entity": item["entity"], "id": item["id"]})
            seen.add((item["entity"], item["id"]))
    store.set_state(conn, refetch=current)


def quarantine_locally(store: LocalStore, conn: sqlite3.Connection, entry: sqlite3.Row, *, kind: ProblemType,
                       reason: str, now: dt.datetime) -> None:
    """Quarantine without a server result (§10.4): too large to send, or a reused seq.

    With no `row` to repair the record from, the local values are discarded: when it was the
    record's last entry the row gets `_version = 0`, loses `_dirty` and is refetched (§10.3).
    """
    quarantine_entry(conn, entry, reason=reason, code=kind.uri, errors=[], now=now)
    if remaining_entries(conn, entry["entity"], entry["record_id"]) == 0:
        table = store.table(entry["entity"])
        conn.execute(f"UPDATE {quote(table.table)} SET _version = 0, _dirty = 0, _deleted = 0 WHERE id = ?",
                     (entry["record_id"],))
        add_refetch(store, conn, [{"entity": entry["entity"], "id": entry["record_id"]}])


def list_quarantined(store: LocalStore) -> list[QuarantinedMutation]:
    with store.lock:
        rows = store.conn.execute('SELECT * FROM "_quarantine" ORDER BY seq').fetchall()
    return [QuarantinedMutation(seq=r["seq"], entity=r["entity"], op=r["op"], record_id=r["record_id"],
                                fields=json.loads(r["fields"]), reason=r["reason"], code=r["code"],
                                errors=json.loads(r["errors"] or "[]"), quarantined_at=r["quarantined_at"])
            for r in rows]


def _quarantined_row(conn: sqlite3.Connection, seq: int) -> sqlite3.Row:
    row = conn.execute('SELECT * FROM "_quarantine" WHERE seq = ?', (seq,)).fetchone()
    if row is None:
        raise ClientError(f"no quarantined mutation with seq {seq}")
    return row


def resubmit(store: LocalStore, seq: int, fields: Mapping[str, Any] | None, now: dt.datetime) -> int:
    """Queue a quarantined mutation again as a new entry (a new seq), with `fields` merged over
    the quarantined ones, and drop the quarantine row. Returns the new seq."""
    with store.write() as conn:
        q = _quarantined_row(conn, seq)
        table = store.table(q["entity"])
        record_id, op = q["record_id"], q["op"]
        merged = {**json.loads(q["fields"]), **dict(fields or {})}
        row = store.row(conn, table, record_id)
        if op == "insert":
            clean = check_fields(table, merged, partial=False)
            if row is not None and row["_version"] > 0:
                raise ClientError(f"{table.name} {record_id} exists on the server; resubmit as an update")
            names = ["id", *table.field_names, "_version", "_deleted", "_dirty"]
            values = [record_id, *(c.to_storage(clean.get(c.name)) for c in table.columns), 0, 0, 1]
            conn.execute(f"INSERT OR REPLACE INTO {quote(table.table)} ({', '.join(quote(n) for n in names)}) "
                         f"VALUES ({', '.join('?' for _ in names)})", values)
            new_seq = _add_entry(conn, table, "insert", record_id, None, clean, now)
        elif op == "update":
            clean = check_fields(table, merged, partial=True)
            if row is None or row["_deleted"]:
                raise ClientError(f"no {table.name} {record_id} on this device to update")
            if clean:
                assignments = ", ".join(f"{quote(k)} = ?" for k in clean)
                conn.execute(f"UPDATE {quote(table.table)} SET {assignments}, _dirty = 1 WHERE id = ?",
                             [*(table.column(k).to_storage(v) for k, v in clean.items()), record_id])
            new_seq = _add_entry(conn, table, "update", record_id, row["_version"], clean, now)
        else:
            if row is None:
                raise ClientError(f"no {table.name} {record_id} on this device to delete")
            conn.execute(f"UPDATE {quote(table.table)} SET _deleted = 1, _dirty = 1 WHERE id = ?", (record_id,))
            new_seq = _add_entry(conn, table, "delete", record_id, row["_version"], {}, now)
        conn.execute('DELETE FROM "_quarantine" WHERE seq = ?', (seq,))
    return new_seq


def discard(store: LocalStore, seq: int) -> None:
    """Drop a quarantined mutation; the record is fetched again on the next pull (§10.3)."""
    with store.write() as conn:
        q = _quarantined_row(conn, seq)
        conn.execute('DELETE FROM "_quarantine" WHERE seq = ?', (seq,))
        if remaining_entries(conn, q["entity"], q["record_id"]) == 0:
            table = store.table(q["entity"])
            conn.execute(f"UPDATE {quote(table.table)} SET _version = 0, _dirty = 0, _deleted = 0 "
                         "WHERE id = ? AND _dirty = 0", (q["record_id"],))
            add_refetch(store, conn, [{"entity": q["entity"], "id": q["record_id"]}])


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_install_id() -> str:
    """A random id for this installation, made once before the first registration (§3.1)."""
    return str(uuid.uuid4())

