"""Conflict losses: applied writes whose values did not all take effect (invariant 5).

A result says so with a non-empty `overridden` (the fields that lost) or `effect: "discarded"`
(a delete the policy kept the record against). The device keeps each such loss, with what it
sent and what the record kept, under the `_sync_state` key `conflicts` until the app clears it,
so a conflict is never only in a log line (docs/sync-design.md, the SDK's conflicts).
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from typing import Any, Iterable, Mapping

from fieldsync.client.reports import Conflict
from fieldsync.client.store import LocalStore
from fieldsync.defs.values import format_datetime

STATE_KEY = "conflicts"


def is_conflict(result: Mapping[str, Any]) -> bool:
    """Whether an applied result reports a conflict loss (protocol §5.1: `overridden` is
    authoritative; a discarded delete has none)."""
    return bool(result.get("overridden")) or result.get("effect") == "discarded"


def conflict_item(entry: sqlite3.Row, result: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """The loss `result` reports for outbox `entry`, as it is kept (a `Conflict`'s members)."""
    lost = [f for f in result.get("overridden") or () if isinstance(f, str)]
    sent = json.loads(entry["fields"] or "{}")
    row = result.get("row") if isinstance(result.get("row"), dict) else {}
    origins = result.get("overridden_by") if isinstance(result.get("overridden_by"), dict) else {}
    item = {"seq": entry["seq"], "entity": entry["entity"], "record_id": entry["record_id"], "op": entry["op"],
            "effect": result.get("effect") or "discarded", "fields": lost,
            "origins": {f: str(origins.get(f, "unknown")) for f in lost},
            "sent": {f: sent.get(f) for f in lost}, "kept": {f: row[f] for f in lost if f in row},
            "detected_at": format_datetime(now)}
    return item


def keep_conflicts(store: LocalStore, conn: sqlite3.Connection, items: list[dict[str, Any]]) -> None:
    """Add `items` to the kept conflicts inside the caller's transaction (one write for a page)."""
    if not items:
        return
    new = {c["seq"] for c in items}
    kept = [c for c in store.state_in(conn, STATE_KEY, []) if c.get("seq") not in new]
    store.set_state(conn, **{STATE_KEY: kept + items})


def list_conflicts(store: LocalStore) -> list[Conflict]:
    return [Conflict(**c) for c in sorted(store.state(STATE_KEY, []), key=lambda c: c["seq"])]


def count_conflicts(store: LocalStore) -> int:
    return len(store.state(STATE_KEY, []))


def clear_conflicts(store: LocalStore, seqs: Iterable[int] | None) -> int:
    """Forget the conflicts of `seqs` (all when None); returns how many were forgotten."""
    with store.transaction() as conn:
        current = store.state_in(conn, STATE_KEY, [])
        wanted = None if seqs is None else {int(s) for s in seqs}
        kept = [] if wanted is None else [c for c in current if c["seq"] not in wanted]
        store.set_state(conn, **{STATE_KEY: kept})
    return len(current) - len(kept)
