"""Receiving a push: what `POST /api/v1/sync/push` does in the database (docs/protocol.md §4).

`receive_push` splits a push into the seqs already processed — duplicates, answered with their
stored results from the dedupe ledger (invariant 2) — and the fresh ones. In ONE write
transaction it checks the device, renders and audits the duplicates' results (invariant 8),
records each fresh seq as received (`fs_received`, the `unsettled` count) and notes the push
on the device row; after that commit it seals the fresh mutations as one batch in the durable
queue. Only once the batch is durable is a seq "received" (invariant 1): in the queue, or — when
the queue refuses it or does not answer within QUEUE_SEND_TIMEOUT — in the database's push spool
(sync/spool.py), which a relay forwards to the queue when it is back. While the queue is known
to fail, or the device has batches in the spool, the batch is spooled in the receive transaction
itself without trying the queue. When neither takes it, the seqs are forgotten again and
`NotReceived` says that nothing was received.

Seqs are recorded before the batch is queued because a listener may apply it at once and
forget them in its own transaction; a batch is never recorded after the fact. This module
retries nothing: a refused push is the device's to send again (its outbox keeps it).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import sqlalchemy as sa

from fieldsync.auth.tokens import Principal
from fieldsync.defs.values import format_datetime
from fieldsync.errors import NotReceived
from fieldsync.store.engine import write_transaction
from fieldsync.store.records import RecordStore
from fieldsync.sync.apply import PushBatch, mutation_digest, plausible_offset_ms
from fieldsync.sync.pull import ledger_rows, render_results, write_checkpoint
from fieldsync.sync.scope import device_scope
from fieldsync.store.sync_tables import clear_received, mark_received, note_push, unnote_push, unsettled

__all__ = ["PushReceipt", "receive_push"]

log = logging.getLogger("fieldsync.sync")


@dataclass
class PushReceipt:
    """The answer to a push (docs/protocol.md §4.2): seqs received, duplicates' results."""

    device_id: str
    received: list[int]
    results: list[dict[str, Any]]
    write_checkpoint: int
    unsettled: int

    def to_wire(self) -> dict[str, Any]:
        return {"device_id": self.device_id, "received": self.received, "results": self.results,
                "write_checkpoint": self.write_checkpoint, "unsettled": self.unsettled}


def receive_push(sync, store: RecordStore, audit, principal: Principal, body: Mapping[str, Any], *,
                 mutations: Sequence[dict[str, Any]], schema_version: int, device_values: Mapping[str, Any],
                 now: dt.datetime, authorize: Callable[[sa.Connection, Any], Mapping[str, Any]],
                 disclosed: Callable[[sa.Connection, str, list[dict[str, Any]]], list]) -> PushReceipt:
    """Receive the push `body` of `principal`, whose `mutations` (seqs checked, strictly
    ascending) the endpoint parsed; `sync` is the SyncService whose queue takes the batch.

    `authorize(conn, device_id)` returns the caller's device row or raises; `disclosed(conn,
    device_id, results)` gives the audit events of the PHI the duplicates' results carry,
    appended to `audit` in the same transaction (invariant 8: before they leave). Raises
    NotReceived when the queue refuses the batch."""
    with write_transaction(store.engine) as conn:
        device = authorize(conn, body.get("device_id"))
        device_id = device["device_id"]
        first = ledger_rows(conn, device_id, [m["seq"] for m in mutations])
        fresh = [m for m in mutations if m["seq"] not in first]
        duplicates: list[dict[str, Any]] = []
        if first:
            again = [m for m in mutations if m["seq"] in first]
            scope = device_scope(store.model, principal, now, store.codec)
            stored = render_results(conn, store, scope, [first[m["seq"]] for m in again])
            for m, result in zip(again, stored):
                duplicate = {"seq": m["seq"], "status": "duplicate", "first": result}
                if first[m["seq"]]["digest"] != mutation_digest(m):
                    duplicate["payload_mismatch"] = True
                duplicates.append(duplicate)
            audit.append_all(conn, disclosed(conn, device_id, [d["first"] for d in duplicates]))
        seqs = [m["seq"] for m in fresh]
        mark_received(conn, device_id, seqs)   # before the enqueue: a listener may be quick
        note_push(conn, device_id, {"last_contact_at": now, "role": principal.role, **device_values},
                  received_through=seqs[-1] if seqs else None)
        receipt = PushReceipt(device_id, seqs, duplicates, write_checkpoint(conn, device_id),
                              unsettled(conn, device_id))
        batch = None
        spooled = False
        if fresh:
            batch = PushBatch(device_id=device_id, user_id=principal.user_id, role=principal.role,
                              attributes=dict(principal.attributes), received_at=format_datetime(now),
                              sent_at=body.get("sent_at") if isinstance(body.get("sent_at"), str) else None,
                              schema_version=schema_version, mutations=list(fresh),
                              clock_offset_ms=plausible_offset_ms(body.get("clock_offset_ms")))
            spool = sync.spool
            # while the queue fails, or this device has batches spooled before, the batch joins
            # the spool in this transaction: durable with its seqs, behind the device's others
            if spool is not None and (sync.queue_failing() or spool.holds(conn, device_id)):
                spool.put(conn, device_id, batch.to_bytes(), now)
                spooled = True
    if spooled:
        sync.relay.wake()
    elif batch is not None:
        try:
            sync.enqueue(batch)   # invariant 1: "received" only once this returned, or ...
            sync.queue_answered()
            sync.start()
        except Exception as exc:
            sync.queue_failed(exc)
            if not _spool_after_refusal(sync, store, device_id, batch, now):
                with write_transaction(store.engine) as conn:
                    clear_received(conn, device_id, seqs)
                    if seqs[-1] > device["last_received_seq"]:
                        unnote_push(conn, device_id, seqs[-1], device["last_received_seq"])
                raise NotReceived("the push could not be made durable; nothing was received, send it again") from exc
    return receipt


def _spool_after_refusal(sync, store: RecordStore, device_id: str, batch: PushBatch, now: dt.datetime) -> bool:
    """... once the spool holds it, when the queue refused it or did not answer in time. False
    when there is no spool or the database refused too (then nothing is received)."""
    if sync.spool is None:
        return False
    try:
        with write_transaction(store.engine) as conn:
            sync.spool.put(conn, device_id, batch.to_bytes(), now)
    except Exception:
        log.exception("a push of device %s could be neither queued nor spooled", device_id)
        return False
    log.warning("the push queue did not take a batch of device %s; it is spooled in the database", device_id)
    sync.relay.wake()
    return True
