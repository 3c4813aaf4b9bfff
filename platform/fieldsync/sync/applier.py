"""Applying a queued push batch in seq order, at most `APPLY_TRANSACTION_MUTATIONS` mutations
per database transaction (the listener's handler calls `MutationApplier.apply_batch`; the
decisions are `fieldsync.sync.apply`).

Each transaction skips every seq the dedupe ledger already holds (a redelivery, invariant 2),
forgets its mutations' received seqs, and commits their effects, change-log entries and ledger
rows together. A worker killed before a commit leaves nothing of that part; one killed after it
(a later part, or the queue ack, still to come) leaves the ledger rows that make the
redelivered batch skip what was done and apply the rest, in order. Parts of at most a few
hundred mutations keep SQLite's one write lock short: a push being received waits for one part,
not for a whole batch of a thousand (docs/benchmarks.md "Push end to end, second round").
A database error that is not a rule violation (a unique index raced by a concurrent writer)
makes the part fall back to one transaction per mutation, so one bad mutation can never
poison the batch into the dead-letter queue. The data keys a batch needs are made before its
transactions open (`ensure_keys`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable, Iterable, Mapping, Sequence

import sqlalchemy as sa

from fieldsync.audit.trail import AuditLog
from fieldsync.defs.values import validate_record
from fieldsync.errors import ProblemType
from fieldsync.ids import utc_now
from fieldsync.store.engine import write_transaction
from fieldsync.store.records import RecordStore
from fieldsync.sync.apply import Batch, NamedMutation, PushBatch, read_mutations
from fieldsync.store.sync_tables import LEDGER, clear_received, seq_run

__all__ = ["APPLY_TRANSACTION_MUTATIONS", "MutationApplier"]

# mutations per apply transaction: large enough that a commit's fsync (4-8 ms on a slow disk) is
# a small share of it (about 30 ms of work for 500 visits), small enough that a push receipt
# waiting on SQLite's write lock waits for that, not for a whole batch of 1,000. Measured against
# 250 and 1,000 in docs/benchmarks.md "Push end to end, second round"
APPLY_TRANSACTION_MUTATIONS = 500


# the ledger's seqs of a device in a run without gaps, built once (see `seq_run`)
_PROCESSED_RUN = sa.select(LEDGER.c.seq).where(LEDGER.c.device_id == sa.bindparam("device"),
                                               LEDGER.c.seq.between(sa.bindparam("first"), sa.bindparam("last")))


class MutationApplier:
    """Applies queued push batches. `store` returns the current RecordStore (the model can be
    swapped while the server runs), which writes the records and the change log; `audit`, the
    server's AuditLog, records the PHI each batch writes (None: no audit, tools and tests)."""

    def __init__(self, store: Callable[[], RecordStore], *, audit: AuditLog | None = None,
                 clock: Callable[[], dt.datetime] = utc_now):
        self.store = store
        self.audit = audit
        self.clock = clock

    def _processed(self, conn: sa.Connection, device_id: str, seqs: Sequence[int]) -> set[int]:
        done: set[int] = set()
        ordered = sorted({s for s in seqs if isinstance(s, int) and not isinstance(s, bool)})
        for i in range(0, len(ordered), 500):
            chunk = ordered[i:i + 500]
            run = seq_run(chunk)
            if run is not None:
                rows = conn.execute(_PROCESSED_RUN, {"device": device_id, "first": run[0], "last": run[1]})
            else:
                rows = conn.execute(sa.select(LEDGER.c.seq).where(LEDGER.c.device_id == device_id,
                                                                  LEDGER.c.seq.in_(chunk)))
            done.update(r[0] for r in rows)
        return done

    @staticmethod
    def ensure_keys(store: RecordStore, named: Iterable[NamedMutation]) -> None:
        """Create the data keys of every subject the batch writes encrypted values for, before
        its transaction opens (crypto/keyring.py: on SQLite a key cannot be created while the
        batch holds the write lock). A subject is read from the mutation, or for an update
        without it from the stored record. A subject value that is no valid value of its field
        gets no key (the mutation is rejected when decided)."""
        subjects: dict[str, list[Any]] = {}
        lookups: dict[str, set[str]] = {}
        for n in named:
            entity = n.entity
            if entity is None or entity.subject is None or not any(
                    f.encrypted and f.name in n.fields for f in entity.fields):
                continue
            value = n.fields.get(entity.subject)
            if value is not None:
                _clean, problems = validate_record(entity, {entity.subject: value}, partial=True)
                if not problems:
                    subjects.setdefault(entity.name, []).append(value)
            elif n.op == "update":
                lookups.setdefault(entity.name, set()).add(n.record_id)
        if lookups:
            with store.engine.connect() as conn:
                for name, ids in lookups.items():
                    entity = store.model.entity(name)
                    subjects.setdefault(name, []).extend(store.subject_of(conn, entity, i) for i in sorted(ids))
        for name, values in subjects.items():
            store.codec.ensure_subjects(store.model.entity(name), sorted(set(v for v in values if v is not None), key=str))

    def apply_batch(self, batch: PushBatch) -> list[dict[str, Any]]:
        """Process `batch`; return the ledger rows written (empty for a full redelivery).

        Nothing here retries the batch: an exception (a database outage, a subject's key
        shredded between `ensure_keys` and the transaction: KeyMissing) fails this delivery,
        and the queue redelivers it with backoff (`fieldsync.workers.pool`, the one retry of
        a push batch; `SyncService.handle` decides its last delivery). A unique value or id
        raced by a concurrent writer is no failure: that part is split, one transaction per
        mutation, and only the offending mutation is rejected (invariant 5)."""
        store = self.store()   # one model for the whole batch, even if it is swapped meanwhile
        named = read_mutations(store.model, batch)
        self.ensure_keys(store, named.values())
        ordered = sorted(batch.mutations, key=_seq_order)
        results: list[dict[str, Any]] = []
        for i in range(0, len(ordered), APPLY_TRANSACTION_MUTATIONS):
            results += self._apply_part(store, batch, ordered[i:i + APPLY_TRANSACTION_MUTATIONS], named)
        return results

    def _apply_part(self, store: RecordStore, batch: PushBatch, mutations: Sequence[Mapping[str, Any]],
                    named: Mapping[int, NamedMutation]) -> list[dict[str, Any]]:
        try:
            return self._apply(store, batch, mutations, named)
        except sa.exc.IntegrityError:
            # a concurrent writer took a unique value or an id between our checks and the write:
            # redo the part one mutation per transaction, so only the offending one is rejected
            results: list[dict[str, Any]] = []
            for m in mutations:
                try:
                    results += self._apply(store, batch, [m], named)
                except sa.exc.IntegrityError:
                    results += self._reject_alone(batch, m)
            return results

    def _apply(self, store: RecordStore, batch: PushBatch, mutations: Sequence[Mapping[str, Any]],
               named: Mapping[int, NamedMutation]) -> list[dict[str, Any]]:
        with write_transaction(store.engine) as conn:
            done = self._processed(conn, batch.device_id, [m.get("seq") for m in mutations])
            todo = sorted((m for m in mutations if m.get("seq") not in done), key=lambda m: m["seq"])
            clear_received(conn, batch.device_id, [m.get("seq") for m in mutations])
            if not todo:
                return []
            state = Batch(store, conn, batch, self.clock(), audit=self.audit, named=named)
            state.prefetch(todo)
            for m in todo:
                state.results.append(state.apply(m))
            state.flush()
            return state.results

    def reject_unprocessable(self, batch: PushBatch, detail: str) -> list[dict[str, Any]]:
        """Give every unprocessed mutation of `batch` a permanent `unprocessable` result: the
        last delivery of a batch that failed every time, so its device learns and quarantines
        rather than waiting forever (invariant 5: nothing dropped silently)."""
        return self._reject(batch, batch.mutations, ProblemType.UNPROCESSABLE, detail[:500])

    def _reject_alone(self, batch: PushBatch, m: Mapping[str, Any]) -> list[dict[str, Any]]:
        return self._reject(batch, [m], ProblemType.VALIDATION,
                            "the write conflicts with a unique value or id another writer just took")

    def _reject(self, batch: PushBatch, mutations: Sequence[Mapping[str, Any]], kind: ProblemType,
                detail: str) -> list[dict[str, Any]]:
        """Record a permanent rejection of type `kind` for each of `mutations` not yet in the
        ledger, without touching any record."""
        store = self.store()
        with write_transaction(store.engine) as conn:
            seqs = [m.get("seq") for m in mutations]
            done = self._processed(conn, batch.device_id, seqs)
            clear_received(conn, batch.device_id, seqs)
            state = Batch(store, conn, batch, self.clock(), audit=self.audit)
            for m in sorted((m for m in mutations if m.get("seq") not in done), key=lambda m: m["seq"]):
                row = state.ledger_row(m)
                row.update(status="rejected", problem=kind.slug, detail=detail)
                state.results.append(row)
            state.flush()
            return state.results


def _seq_order(mutation: Mapping[str, Any]) -> tuple[int, int]:
    """Seq order; a seq that is no int (refused at receipt, so only in a hand-made batch)
    sorts first and is judged malformed there."""
    seq = mutation.get("seq")
    return (1, seq) if isinstance(seq, int) and not isinstance(seq, bool) else (0, 0)
