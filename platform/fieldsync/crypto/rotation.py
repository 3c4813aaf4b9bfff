"""Key rotation, re-encryption and crypto-shredding (`fieldsync keys ...`).

Rotation makes a new active key for each scope of an entity (entity, blind index, every
subject) and retires the old ones: new writes use the new keys at once in this process and
within `KEY_CACHE_SECONDS` in every other. Retired keys still decrypt. The re-encryption pass
then rewrites every ciphertext under a retired key — in the entity tables and in the change log
(`row` and `prev`) — and recomputes blind indexes; it runs in batches, each in its own short
write transaction, and never changes a record's version (nothing changed for a device).

A retired key is destroyed only when a pass that started after every process stopped using it
for writes (retired more than `KEY_RETIRE_GRACE_SECONDS` before the pass began: the cache time
plus two minutes for a write transaction that loaded the key just before) found no ciphertext
naming it. A pass started too early leaves the key retired; the next one (the server's key
maintenance runs them, or `fieldsync keys reencrypt`) finishes the job. So no readable value is
ever lost to a rotation.

Shredding destroys the keys of one subject (one patient in one entity, or in every entity
that names a subject) or of a whole entity at once, and clears the blind indexes of the rows
concerned: those values become unreadable for good (reads return null), everything else stays.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable

import sqlalchemy as sa

from fieldsync.defs.model import Entity, Model
from fieldsync.crypto.fields import FieldCrypto, ciphertext_key_id
from fieldsync.errors import KeyShredded
from fieldsync.store.engine import write_transaction
from fieldsync.store.tables import bidx_column
from fieldsync.store.records import RecordStore

__all__ = ["KeyMaintenance", "ReencryptReport", "reencrypt", "rotate", "shred_entity", "shred_subject",
           "values_under_retired_keys"]

BATCH = 200


@dataclass
class ReencryptReport:
    rows: int = 0                 # entity rows rewritten
    values: int = 0               # ciphertexts re-encrypted in entity rows
    changes: int = 0              # change-log entries rewritten
    skipped: int = 0              # rows changed by a writer meanwhile (the next pass takes them)
    destroyed: list[str] = dc_field(default_factory=list)   # retired keys no ciphertext uses any more
    still_retired: list[str] = dc_field(default_factory=list)

    def summary(self) -> str:
        return (f"{self.rows} rows ({self.values} values) and {self.changes} change-log entries re-encrypted; "
                f"{len(self.destroyed)} retired keys destroyed, {len(self.still_retired)} still retired"
                + (f"; {self.skipped} rows changed meanwhile (next pass)" if self.skipped else ""))


def _encrypted_entities(model: Model, entity: str | None) -> list[Entity]:
    out = [e for e in model.entities if e.has_encrypted and (entity is None or e.name == entity)]
    if entity is not None and not out:
        raise KeyError(f"entity {entity!r} has no encrypted field" if model.has_entity(entity)
                       else f"no entity {entity!r}")
    return out


def rotate(crypto: FieldCrypto, model: Model, entity: str | None = None) -> list[tuple[str, str | None, str]]:
    """New active keys for every scope of `entity` (every encrypted entity without one):
    `(scope, old kid, new kid)` each. The subject-reference key is never rotated."""
    keyring = crypto.keyring
    done = []
    for e in _encrypted_entities(model, entity):
        scopes = [crypto.entity_scope(e)]
        if any(f.encryption == "blind_index" for f in e.fields):
            scopes.append(crypto.index_scope(e))
        scopes += keyring.scopes(f"subject:{e.name}:")
        for scope in scopes:
            old, new = keyring.rotate(scope)
            done.append((scope, old, new))
    return done


def _retired_kids(crypto: FieldCrypto) -> dict[str, Any]:
    return {r.kid: r for r in crypto.keyring.retired()}


def reencrypt(store: RecordStore, crypto: FieldCrypto, *, entity: str | None = None,
              batch: int = BATCH, stop: threading.Event | None = None,
              report: ReencryptReport | None = None) -> ReencryptReport:
    """One re-encryption pass (see the module text); returns what it did. Pass `report` to
    watch the counts grow from another thread while the pass runs (the admin UI's progress)."""
    keyring = crypto.keyring
    keyring.forget()
    started = keyring.clock()
    retired = _retired_kids(crypto)
    report = report if report is not None else ReencryptReport()
    entities = _encrypted_entities(store.model, entity)
    seen: set[str] = set()
    index_rotated = {e.name for e in entities
                     if any(r.scope == crypto.index_scope(e) for r in retired.values())}
    for e in entities:
        _reencrypt_table(store, crypto, e, retired, e.name in index_rotated, report, seen, batch, stop)
    _reencrypt_changes(store, crypto, entities, retired, report, seen, batch, stop)
    if stop is not None and stop.is_set():
        return report
    grace = dt.timedelta(seconds=keyring.retire_grace_seconds)
    names = {e.name for e in entities}
    for kid, row in retired.items():
        scope_entity = row.scope.split(":")[1] if ":" in row.scope else ""
        if scope_entity not in names:
            continue
        retired_at = row.retired_at if row.retired_at.tzinfo else row.retired_at.replace(tzinfo=dt.timezone.utc)
        if kid not in seen and retired_at + grace <= started:
            report.destroyed.append(kid)
        else:
            report.still_retired.append(kid)
    keyring.destroy(report.destroyed)
    return report


def values_under_retired_keys(store: RecordStore, crypto: FieldCrypto, *, entity: str | None = None,
                              batch: int = 1000) -> int:
    """How many encrypted values in the entity tables of `entity` (every encrypted entity
    without one) are still under a retired key: the work a re-encryption pass has left, in
    the unit of `ReencryptReport.values`. Reads ciphertext headers only, never decrypts."""
    retired = _retired_kids(crypto)
    if not retired:
        return 0
    count = 0
    for e in _encrypted_entities(store.model, entity):
        table = store.table(e)
        secret = [f.name for f in e.fields if f.encrypted]
        columns = [table.c.id] + [table.c[name] for name in secret]
        last = ""
        while True:
            with store.engine.connect() as conn:
                rows = conn.execute(sa.select(*columns).where(table.c.id > last).order_by(table.c.id)
                                    .limit(batch)).all()
            if not rows:
                break
            last = rows[-1][0]
            count += sum(1 for row in rows for value in row[1:]
                         if value is not None and ciphertext_key_id(value) in retired)
    return count


def _reencrypt_table(store: RecordStore, crypto: FieldCrypto, entity: Entity, retired: dict[str, Any],
                     index_rotated: bool, report: ReencryptReport, seen: set[str], batch: int,
                     stop: threading.Event | None) -> None:
    table = store.table(entity)
    secret = [f for f in entity.fields if f.encrypted]
    subject_field = entity.field(entity.subject) if entity.subject else None
    last = ""
    while stop is None or not stop.is_set():
        with store.engine.connect() as conn:
            rows = list(conn.execute(sa.select(table).where(table.c.id > last).order_by(table.c.id)
                                     .limit(batch)).mappings())
        if not rows:
            return
        last = rows[-1]["id"]
        updates = []

        def holds(values) -> None:   # the key ids a row keeps after this pass
            seen.update(ciphertext_key_id(values[f.name]) for f in secret if values.get(f.name) is not None)

        for row in rows:
            stale = [f for f in secret if row.get(f.name) is not None and ciphertext_key_id(row[f.name]) in retired]
            redo_index = index_rotated and any(f.encryption == "blind_index" and row.get(f.name) is not None
                                               for f in secret)
            if not stale and not redo_index:
                holds(row)
                continue
            record_id = row["id"]
            try:
                subject = (crypto.decode(entity, subject_field, row[subject_field.name], record_id)
                           if subject_field is not None and row.get(subject_field.name) is not None else None)
                values = {}
                for f in secret:
                    if row.get(f.name) is None or (f not in stale and not (redo_index and f.encryption == "blind_index")):
                        continue
                    values[f.name] = crypto.decode(entity, f, row[f.name], record_id)
            except KeyShredded:
                holds(row)
                continue   # a shredded subject: nothing readable to move
            if subject is not None:
                crypto.ensure_subjects(entity, [subject])
            new = store.values_to_db(entity, values, record_id, subject)
            # untouched ciphertexts keep their form; only the stale ones and the indexes change
            new = {k: v for k, v in new.items()
                   if k.startswith("fs_bidx_") or entity.field(k) in stale}
            report.values += sum(1 for k in new if not k.startswith("fs_bidx_"))
            updates.append((row, new))
        if updates:
            with write_transaction(store.engine) as conn:
                for row, new in updates:
                    n = conn.execute(table.update().where(table.c.id == row["id"], table.c.version == row["version"])
                                     .values(new)).rowcount if new else 0
                    if n == 1:
                        report.rows += 1
                        holds({**row, **new})
                    else:
                        # changed by a writer meanwhile (with an active key: retired ones are past
                        # their grace when the pass may destroy them); counted as it was read
                        report.skipped += 1 if new else 0
                        holds(row)


def _reencrypt_changes(store: RecordStore, crypto: FieldCrypto, entities: list[Entity], retired: dict[str, Any],
                       report: ReencryptReport, seen: set[str], batch: int, stop: threading.Event | None) -> None:
    from fieldsync.store.changelog import CHANGES_TABLE
    changes = sa.table(CHANGES_TABLE, sa.column("position"), sa.column("entity"), sa.column("row"),
                       sa.column("prev"))
    by_name = {e.name: e for e in entities}
    last = 0
    while stop is None or not stop.is_set():
        with store.engine.connect() as conn:
            rows = list(conn.execute(sa.select(changes).where(changes.c.position > last,
                                                               changes.c.entity.in_(sorted(by_name)))
                                     .order_by(changes.c.position).limit(batch)).mappings())
        if not rows:
            return
        last = rows[-1]["position"]
        updates = []
        for change in rows:
            entity = by_name[change["entity"]]
            new_row = _reencode(crypto, entity, change["row"], retired, seen)
            new_prev = _reencode(crypto, entity, change["prev"], retired, seen) if change["prev"] else None
            if new_row is not None or new_prev is not None:
                updates.append((change["position"], new_row, new_prev))
        if updates:
            with write_transaction(store.engine) as conn:
                for position, new_row, new_prev in updates:
                    values = {}
                    if new_row is not None:
                        values["row"] = new_row
                    if new_prev is not None:
                        values["prev"] = new_prev
                    conn.execute(changes.update().where(changes.c.position == position).values(values))
                    report.changes += 1


def _reencode(crypto: FieldCrypto, entity: Entity, text: str | None, retired: dict[str, Any],
              seen: set[str]) -> str | None:
    """A change-log row (JSON text) with its ciphertexts under retired keys re-encrypted, or
    None when it has none. Records the key ids left in `seen`."""
    if not text:
        return None
    row = json.loads(text)
    changed = False
    subject = None
    for f in entity.fields:
        value = row.get(f.name)
        if not f.encrypted or value is None:
            continue
        kid = ciphertext_key_id(value)
        if kid not in retired:
            seen.add(kid)
            continue
        try:
            if subject is None and entity.subject and row.get(entity.subject) is not None:
                subject = crypto.decode(entity, entity.field(entity.subject), row[entity.subject], row["id"])
            plain = crypto.decode(entity, f, value, row["id"])
        except KeyShredded:
            continue
        if subject is not None:
            crypto.ensure_subjects(entity, [subject])
        row[f.name] = crypto.encode(entity, f, plain, row["id"], subject)
        seen.add(ciphertext_key_id(row[f.name]))
        changed = True
    return json.dumps(row, sort_keys=True, separators=(",", ":")) if changed else None


# -- shredding ----------------------------------------------------------------------------------

def shred_subject(store: RecordStore, crypto: FieldCrypto, subject_value: Any,
                  entity: str | None = None) -> list[str]:
    """Destroy the keys of one subject in `entity` (every entity naming a subject without one)
    and clear the blind indexes of that subject's rows. Returns the destroyed key ids."""
    destroyed = []
    for e in store.model.entities:
        if e.subject is None or not e.has_encrypted or (entity is not None and e.name != entity):
            continue
        table = store.table(e)
        bidx = [bidx_column(f) for f in e.fields if f.encryption == "blind_index"]
        if bidx:
            forms = crypto.lookup_values(e, e.field(e.subject), subject_value)
            with write_transaction(store.engine) as conn:
                conn.execute(table.update().where(table.c[e.subject].in_(forms)).values({c: None for c in bidx}))
        destroyed += crypto.keyring.destroy_scope(crypto.subject_scope(e, subject_value))
    return destroyed


def shred_entity(store: RecordStore, crypto: FieldCrypto, entity: str) -> list[str]:
    """Destroy every key of `entity` (its own, its blind index's and all its subjects'): every
    encrypted value of the entity becomes unreadable. New writes get new keys."""
    e = store.model.entity(entity)
    table = store.table(e)
    bidx = [bidx_column(f) for f in e.fields if f.encryption == "blind_index"]
    if bidx:
        with write_transaction(store.engine) as conn:
            conn.execute(table.update().values({c: None for c in bidx}))
    keyring = crypto.keyring
    destroyed = []
    subjects = keyring.scopes(f"subject:{e.name}:", states=("active", "retired"))
    for scope in [crypto.entity_scope(e), crypto.index_scope(e)] + subjects:
        destroyed += keyring.destroy_scope(scope)
    return destroyed


# -- in the server ------------------------------------------------------------------------------

class KeyMaintenance:
    """A daemon thread of the server that runs a re-encryption pass whenever retired keys
    remain (checked every `interval` seconds): `fieldsync keys rotate --no-reencrypt` leaves
    the work to it, and it finishes what a pass started too early left."""

    def __init__(self, store: Callable[[], RecordStore], crypto: FieldCrypto, *, interval: float = 300.0,
                 on_pass: Callable[[ReencryptReport], None] | None = None):
        self.store = store
        self.crypto = crypto
        self.interval = interval
        self.on_pass = on_pass
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fieldsync-key-maintenance", daemon=True)
        self._thread.start()

    def run_once(self) -> ReencryptReport | None:
        if not self.crypto.keyring.retired():
            return None
        report = reencrypt(self.store(), self.crypto, stop=self._stop)
        if self.on_pass is not None:
            self.on_pass(report)
        return report

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except Exception:   # logged by the caller's hook; the next round tries again
                import logging
                logging.getLogger("fieldsync.keys").exception("key maintenance pass failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
