"""Snapshot bundles (docs/protocol.md §11, docs/decisions.md "Snapshot bundles").

A device that needs a snapshot (first sync, a scope change, a reset) and says it reads bundles
gets one instead of pull pages: every row its scope holds, in device storage form, as sealed
chunks (transfer/chunks.py) under a signed manifest. A bundle is built once per (schema version,
entity set, scope hash) — the scope hash already digests the role's predicates, visible columns
and the user attributes they use — and handed to every device with that share key while it is
fresh; the device then streams on by cursor from the position the bundle is consistent with.

At rest a bundle is ciphertext (invariant 7): its chunks are sealed with a per-bundle key, and
that key is stored wrapped by the key ring (scope `transfer:bundle`). The key reaches a device
only inside a pull answer, over TLS, to a principal whose scope is the bundle's (invariant 6).
The manifest's Ed25519 signing key is derived from the key ring's `transfer:manifest` key: no
private key file, rotated with the ring.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fieldsync.defs.values import format_datetime
from fieldsync.errors import KeyMissing, KeyShredded
from fieldsync.store.changelog import head_position, oldest_retained_position
from fieldsync.store.codec import decrypted, wire_step
from fieldsync.store.engine import create_tables, write_transaction
from fieldsync.store.records import RecordStore
from fieldsync.store.tables import PLATFORM_PREFIX
from fieldsync.sync.pull import snapshot_query
from fieldsync.defs import expr as ex
from fieldsync.auth.tokens import Principal
from fieldsync.sync.scope import DeviceScope, device_scope, scope_hash_of
from fieldsync.transfer.chunks import (ChunkRefused, key_text, new_key, public_key_text, sign_manifest,
                                       write_payload)

__all__ = ["BUNDLES", "BundleService", "Offer", "manifest_keys", "create_bundle_tables", "subset_hash"]

log = logging.getLogger("fieldsync.transfer")

KEY_SCOPE = "transfer:bundle"
SIGN_SCOPE = "transfer:manifest"
URL_PREFIX = "/api/v1/sync/bundles/"

_metadata = sa.MetaData()

BUNDLES = sa.Table(
    PLATFORM_PREFIX + "bundles", _metadata,
    sa.Column("bundle_id", sa.String(36), primary_key=True),
    sa.Column("share_key", sa.String(64), nullable=False, index=True),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("scope_hash", sa.String(80), nullable=False),
    sa.Column("entities", sa.Text, nullable=False),           # JSON list
    sa.Column("cursor", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rows", sa.BigInteger, nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),            # JSON: no row values, only counts and digests
    sa.Column("signature", sa.Text, nullable=False),
    sa.Column("sign_kid", sa.String(64), nullable=False),
    sa.Column("key_kid", sa.String(64), nullable=False),
    sa.Column("wrapped_key", sa.LargeBinary, nullable=False),  # the bundle key, sealed by the key ring
    sa.Column("disclosed", sa.LargeBinary),                    # the PHI it discloses, sealed by the bundle key
    # who it was built for (a user id, a role, the attributes: no PHI) and when a device last took
    # it, so a stale bundle still in use is rebuilt ahead of the next device (`refresh`)
    sa.Column("principal", sa.Text),
    sa.Column("served_at", sa.DateTime(timezone=True)),
)


def create_bundle_tables(engine: sa.Engine) -> None:
    create_tables(engine, _metadata)


def _signing_key(raw: bytes) -> Ed25519PrivateKey:
    seed = HKDF(hashes.SHA256(), 32, salt=None, info=b"fieldsync manifest signing").derive(raw)
    return Ed25519PrivateKey.from_private_bytes(seed)


def manifest_keys(keyring) -> dict[str, str]:
    """The public keys a device checks manifest signatures with, by key id (capabilities)."""
    keyring.ensure(SIGN_SCOPE)
    return {kid: public_key_text(_signing_key(raw)) for kid, raw in keyring.materials_in_use(SIGN_SCOPE)}


@dataclass
class Offer:
    """A bundle handed to one device in a pull answer, and the PHI that hands out."""

    bundle: dict[str, Any]               # the pull answer's `bundle` member
    disclosed: list[dict[str, Any]]      # items for the audit trail's read events (PHI fields shown)
    rows: int
    partial: dict[str, str] | None = None   # the device's digests after it, when the phase goes on


def _storage_step(field_type: str):
    """Wire value -> device storage form (codegen/device_schema.py STORAGE): what the device
    writes with `executemany` as it arrives."""
    if field_type == "boolean":
        return lambda v: 1 if v else 0
    if field_type in ("json", "geopoint"):
        return lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"))
    return None


class BundleService:
    """Builds, finds and serves the snapshot bundles of one server's database."""

    def __init__(self, engine: sa.Engine, config: Mapping[str, Any], keyring, *, clock=None):
        self.engine = engine
        self.keyring = keyring
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.directory = Path(config["DATA_DIR"]) / "bundles"
        self.enabled = bool(config.get("SYNC_BUNDLES", True))
        self.min_rows = int(config.get("BUNDLE_MIN_ROWS", 500))
        self.max_age = float(config.get("BUNDLE_MAX_AGE_SECONDS", 3600))
        self.max_lag = int(config.get("BUNDLE_MAX_LAG", 10000))
        self.frame_bytes = int(config.get("BUNDLE_FRAME_BYTES", 1024 * 1024))
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._stop = threading.Event()
        create_bundle_tables(engine)

    # -- offering --------------------------------------------------------------------------------

    def offer(self, store: RecordStore, scope: DeviceScope, entities: Sequence[str], device_cursor: int,
              *, clear: Sequence[str] = (), old_digests: Mapping[str, str] | None = None) -> Offer | None:
        """A bundle for a device whose scope is `scope`, whose phase has `entities` to send and
        whose cursor is `device_cursor`: a fresh one of the same share key, or one built now;
        None when its rows are too few to be worth a bundle (the phase then comes as pages).

        Entities whose rules use `$user.id` (the rep's own visits, orders) make a bundle
        personal. So the bundle takes the phase's shared entities only, when there are any, and
        every device of the same territories and role gets the same one; the device's scope
        hash afterwards says the personal entities are still to come (`partial`), so its next
        pull is a phase of just those (pages, or a bundle of their own when large)."""
        if not self.enabled:
            return None
        wanted = [name for name in scope.order if name in set(entities)]
        shared = [name for name in wanted if not _personal(scope, name)]
        chosen = shared or wanted
        if not chosen:
            return None
        version = store.model.schema_version
        subset = scope_hash_of({name: scope.digests[name] for name in chosen})
        share = _share_key(version, subset, chosen)
        with self._lock_for(share):
            row = self._fresh(share, device_cursor)
            if row is None:
                if self._count(store, scope, chosen) < self.min_rows:
                    return None
                row = self._build(store, scope, chosen, share, subset)
            try:
                key = self._unwrap(row)
            except (KeyMissing, KeyShredded, ChunkRefused):
                log.warning("bundle %s: its key is gone; building another", row["bundle_id"])
                self._drop([row["bundle_id"]])
                row = self._build(store, scope, chosen, share, subset)
                key = self._unwrap(row)
        with write_transaction(self.engine) as conn:
            conn.execute(BUNDLES.update().where(BUNDLES.c.bundle_id == row["bundle_id"]).values(served_at=self.clock()))
        # the device's digests once the bundle is in: the rest of the phase still differs
        later = [name for name in wanted if name not in chosen]
        old = dict(old_digests or {})
        digests = {name: (old.get(name, "pending") if name in later else digest)
                   for name, digest in scope.digests.items()}
        manifest = json.loads(row["manifest"])
        bundle = {"id": row["bundle_id"], "url": URL_PREFIX + row["bundle_id"], "key": key_text(key),
                  "manifest": manifest, "signature": row["signature"], "signing_key": row["sign_kid"],
                  "clear": sorted(set(clear) | set(chosen)), "size": int(row["size"]), "rows": int(row["rows"]),
                  "scope_hash": scope_hash_of(digests) if later else scope.hash}
        return Offer(bundle, self._disclosed(row, key), int(row["rows"]), digests if later else None)

    def _lock_for(self, share: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(share, threading.Lock())

    def _fresh(self, share: str, device_cursor: int) -> Mapping[str, Any] | None:
        """The newest bundle of `share` a device at `device_cursor` can take: not stale, and not
        behind the device (it streams on from its own cursor after a rescope, so the bundle must
        not be older)."""
        with self.engine.connect() as conn:
            head = head_position(conn)
            retained = oldest_retained_position(conn)
            row = conn.execute(sa.select(BUNDLES).where(BUNDLES.c.share_key == share)
                               .order_by(BUNDLES.c.created_at.desc()).limit(1)).mappings().first()
        if row is None or self._stale(row, head, retained) or row["cursor"] < device_cursor:
            return None
        return row

    def _stale(self, row: Mapping[str, Any], head: int, retained: int) -> bool:
        """Too old, too far behind the head, behind the retained change log, or its file gone."""
        too_old = (self.clock() - _aware(row["created_at"])).total_seconds() > self.max_age
        return (too_old or head - row["cursor"] > self.max_lag or row["cursor"] < retained - 1
                or not self.path(row["bundle_id"]).exists())

    # -- rebuilding ahead of the next device ----------------------------------------------------

    def refresh(self, current) -> int:
        """Rebuild the stale bundles that devices took within the age limit, for the principal
        each was built for, so the next device of that scope is not the one that waits for the
        build. `current()` gives the live model snapshot (api/app.py). Returns how many were
        rebuilt; a scope whose rules changed since is left to the next device that asks."""
        if not self.enabled:
            return 0
        snapshot = current()
        now = self.clock()
        since = now - dt.timedelta(seconds=self.max_age)
        with self.engine.connect() as conn:
            head = head_position(conn)
            retained = oldest_retained_position(conn)
            rows = list(conn.execute(sa.select(BUNDLES).where(BUNDLES.c.served_at >= since)
                                     .order_by(BUNDLES.c.created_at.desc())).mappings())
        newest: dict[str, Mapping[str, Any]] = {}
        for row in rows:
            newest.setdefault(row["share_key"], row)
        rebuilt = 0
        for share, row in newest.items():
            if (not row["principal"] or row["schema_version"] != snapshot.model.schema_version
                    or not self._stale(row, head, retained)):
                continue
            raw = json.loads(row["principal"])
            principal = Principal(user_id=raw["user_id"], role=raw["role"], attributes=raw.get("attributes") or {})
            scope = device_scope(snapshot.model, principal, now, snapshot.store.codec)
            entities = json.loads(row["entities"])
            subset = subset_hash(scope, entities)
            if subset != row["scope_hash"]:
                continue
            with self._lock_for(share):
                if self._fresh(share, 0) is None:
                    self._build(snapshot.store, scope, entities, share, subset, principal=raw)
                    rebuilt += 1
        return rebuilt

    def start_refresh(self, current, *, interval: float) -> threading.Thread:
        """`refresh` every `interval` seconds in a daemon thread (`fieldsync serve`); a failed
        pass is logged and the next one tries again."""
        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh(current)
                except Exception:   # a database blip must not end the thread
                    log.exception("bundle refresh failed; trying again in %s s", interval)
        thread = threading.Thread(target=loop, name="fieldsync-bundle-refresh", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    def _count(self, store: RecordStore, scope: DeviceScope, entities: Sequence[str]) -> int:
        total = 0
        with self.engine.connect() as conn:
            for name in entities:
                query = snapshot_query(store, scope, name)
                total += conn.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar_one()
                if total >= self.min_rows:
                    break
        return total

    # -- building --------------------------------------------------------------------------------

    def path(self, bundle_id: str) -> Path:
        return self.directory / f"{bundle_id}.fsb"

    def _build(self, store: RecordStore, scope: DeviceScope, entities: Sequence[str], share: str,
               subset: str, *, principal: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
        """Write a new bundle of `entities` as `scope` sees them, consistent with the head read
        first (rows written after it are sent again by the stream: upserts are idempotent)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        bundle_id = str(uuid.uuid4())
        key = new_key()
        disclosed: list[list[Any]] = []
        partial = self.directory / f"{bundle_id}.part"
        try:
            with self.engine.connect() as conn, conn.begin():
                head = head_position(conn)
                with open(partial, "wb") as out:
                    manifest = write_payload(out, self._frames(conn, store, scope, entities, disclosed),
                                             key=key, bundle_id=bundle_id, kind="snapshot")
                    out.flush()
                    os.fsync(out.fileno())
            os.replace(partial, self.path(bundle_id))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        now = self.clock()
        manifest.cursor = head
        manifest.schema_version = store.model.schema_version
        manifest.scope_hash = subset
        manifest.entities = list(entities)
        manifest.created_at = format_datetime(now)
        sign_kid, raw = self.keyring.material(SIGN_SCOPE)
        signature = sign_manifest(_signing_key(raw), manifest)
        key_kid, aead = self.keyring.active(KEY_SCOPE)
        nonce = os.urandom(12)
        wrapped = nonce + aead.encrypt(nonce, key, _key_aad(bundle_id))
        sealed_disclosed = None
        if disclosed:
            nonce = os.urandom(12)
            sealed_disclosed = nonce + AESGCM(key).encrypt(nonce, json.dumps(disclosed).encode(),
                                                           b"fieldsync-disclosed:" + bundle_id.encode())
        row = {"bundle_id": bundle_id, "share_key": share, "schema_version": store.model.schema_version,
               "scope_hash": subset, "entities": json.dumps(list(entities)), "cursor": head, "created_at": now,
               "rows": sum(manifest.rows.values()), "size": manifest.size, "manifest": json.dumps(manifest.to_dict()),
               "signature": signature, "sign_kid": sign_kid, "key_kid": key_kid, "wrapped_key": wrapped,
               "disclosed": sealed_disclosed, "served_at": None,
               "principal": json.dumps(principal if principal is not None else {
                   "user_id": scope.principal.user_id, "role": scope.principal.role,
                   "attributes": dict(scope.principal.attributes)}, default=str)}
        with write_transaction(self.engine) as conn:
            conn.execute(BUNDLES.insert().values(**row))
        log.info("bundle %s built: %d rows, %d bytes, cursor %d", bundle_id, row["rows"], row["size"], head)
        self.sweep(keep=bundle_id)
        return row

    def _frames(self, conn: sa.Connection, store: RecordStore, scope: DeviceScope, entities: Sequence[str],
                disclosed: list[list[Any]]) -> Iterator[tuple[bytes, int, str]]:
        """Each entity's rows as frames of about `frame_bytes`: `{"entity", "columns", "rows"}`,
        a row being `[id, *columns, version, created_at, updated_at]` in device storage form."""
        for name in entities:
            entity_scope = scope.entities[name]
            entity = entity_scope.entity
            visible = entity_scope.visible
            query = snapshot_query(store, scope, name)
            raw_times = _raw_time_columns(conn, store, entity, visible)
            if raw_times:
                query = query.with_only_columns(*[sa.type_coerce(c, sa.String()).label(c.name) if c.name in raw_times
                                                  else c for c in store.table(entity).c])
            result = conn.execution_options(stream_results=True, yield_per=2000).execute(query)
            columns = tuple(result.keys())
            build = _row_builder(store, entity, columns, visible, raw_times)
            id_at = columns.index("id")
            phi = tuple(f.name for f in entity.phi_fields if f.name in visible)
            subject_at = 1 + visible.index(entity.subject) if entity.subject in visible else None
            rows: list[list[Any]] = []
            per_frame = 0     # rows per frame, from the size of the first row (one dumps per frame)
            for row in result:
                values = build(row)
                rows.append(values)
                if phi:
                    disclosed.append([name, row[id_at], list(phi), entity.subject if subject_at else None,
                                      values[subject_at] if subject_at else None])
                if not per_frame:
                    per_frame = max(1, self.frame_bytes // (len(json.dumps(values, separators=(",", ":"))) + 1))
                if len(rows) >= per_frame:
                    yield _frame(name, visible, rows), len(rows), name
                    rows = []
            if rows:
                yield _frame(name, visible, rows), len(rows), name

    # -- keys, audit -----------------------------------------------------------------------------

    def _unwrap(self, row: Mapping[str, Any]) -> bytes:
        wrapped = row["wrapped_key"]
        try:
            return self.keyring.cipher(row["key_kid"]).decrypt(wrapped[:12], wrapped[12:], _key_aad(row["bundle_id"]))
        except Exception as exc:   # InvalidTag: a row that does not belong to its key
            if isinstance(exc, (KeyMissing, KeyShredded)):
                raise
            raise ChunkRefused(f"bundle {row['bundle_id']}: its key does not unwrap") from None

    def _disclosed(self, row: Mapping[str, Any], key: bytes) -> list[dict[str, Any]]:
        """The bundle's PHI as items `api.audit_trail.sync_read_events` takes (the field names
        shown and the subject; the values are not needed for the events)."""
        sealed = row["disclosed"]
        if not sealed:
            return []
        items = json.loads(AESGCM(key).decrypt(sealed[:12], sealed[12:],
                                               b"fieldsync-disclosed:" + row["bundle_id"].encode()))
        out = []
        for name, record_id, shown, subject, subject_value in items:
            values: dict[str, Any] = {f: None for f in shown}
            if subject:
                values[subject] = subject_value
            out.append({"entity": name, "id": record_id, "row": values})
        return out

    # -- serving and sweeping --------------------------------------------------------------------

    def find(self, bundle_id: str) -> Mapping[str, Any] | None:
        try:
            uuid.UUID(bundle_id)
        except (ValueError, TypeError, AttributeError):
            return None
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(BUNDLES).where(BUNDLES.c.bundle_id == bundle_id)).mappings().first()
        if row is None or not self.path(bundle_id).exists():
            return None
        return row

    def sweep(self, *, keep: str | None = None) -> int:
        """Remove bundles past twice their age limit (a device still downloading one by then
        is handed a new one) and files without a row (a build cut short)."""
        cutoff = self.clock() - dt.timedelta(seconds=2 * self.max_age)
        with self.engine.connect() as conn:
            old = [r.bundle_id for r in conn.execute(sa.select(BUNDLES.c.bundle_id)
                                                     .where(BUNDLES.c.created_at < cutoff))]
            known = {r.bundle_id for r in conn.execute(sa.select(BUNDLES.c.bundle_id))}
        doomed = [b for b in old if b != keep]
        self._drop(doomed)
        if self.directory.exists():
            for path in self.directory.glob("*.fsb"):
                if path.stem not in known and path.stem != keep:
                    path.unlink(missing_ok=True)
        return len(doomed)

    def _drop(self, bundle_ids: Sequence[str]) -> None:
        if not bundle_ids:
            return
        with write_transaction(self.engine) as conn:
            conn.execute(BUNDLES.delete().where(BUNDLES.c.bundle_id.in_(list(bundle_ids))))
        for bundle_id in bundle_ids:
            self.path(bundle_id).unlink(missing_ok=True)


def _raw_time_columns(conn: sa.Connection, store: RecordStore, entity, visible: Sequence[str]) -> frozenset[str]:
    """On SQLite, the timestamp columns read as the text SQLAlchemy stored them
    (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC), which `_text_stamp` turns into the wire form by
    slicing: parsing each into a datetime and formatting it again is a quarter of a bundle's
    build. Elsewhere (PostgreSQL) none."""
    if conn.dialect.name != "sqlite":
        return frozenset()
    table = store.table(entity)
    names = {"created_at", "updated_at"} | {f for f in visible if entity.field(f).type == "datetime"
                                             and not entity.field(f).encrypted}
    return frozenset(n for n in names if isinstance(table.c[n].type, sa.DateTime))


def _text_stamp(stamp):
    """`stamp` (codec.wire_step of a datetime) for the stored text of a SQLite timestamp."""
    def convert(value: Any) -> Any:
        if type(value) is str and len(value) == 26 and value[10] == " " and value[19] == ".":
            return value[:10] + "T" + value[11:] + "Z"
        if isinstance(value, str):   # another stored shape: parse it as SQLAlchemy would
            value = dt.datetime.fromisoformat(value)
        return stamp(value)
    return convert


def _row_builder(store: RecordStore, entity, columns: Sequence[str], visible: Sequence[str],
                 raw_times: frozenset[str] = frozenset()):
    """A function from a stored row (a tuple of `columns`) to its bundle row `[id, *visible,
    version, created_at, updated_at]` in device storage form: wire conversion (times, decimals,
    decryption) and storage conversion (booleans 0/1, JSON text) in one step per column. The
    function is compiled once per shape, one list display with no loop: it runs for every row
    of a first sync. Only column indexes go into its source; the steps are bound by name."""
    at = {c: i for i, c in enumerate(columns)}
    codec = store.codec
    stamp = wire_step(None, entity, codec)
    steps: dict[str, Any] = {"stamp": _text_stamp(stamp) if "created_at" in raw_times else stamp}
    items = [f"r[{at['id']}]"]
    for k, name in enumerate(visible):
        field = entity.field(name)
        i = at[name]
        wire = None
        if field.encrypted:
            steps[f"w{k}"] = (lambda f: lambda v, rid: decrypted(codec, entity, f, v, rid))(field)
            wire_call = f"w{k}(r[{i}], r[{at['id']}])"
        else:
            if field.type in ("datetime", "date", "decimal"):
                wire = wire_step(field, entity, codec)
                steps[f"w{k}"] = wire = _text_stamp(wire) if name in raw_times else wire
            wire_call = f"w{k}(r[{i}])" if wire is not None else f"r[{i}]"
        storage = _storage_step(field.type)
        if storage is not None:
            steps[f"s{k}"] = storage
            wire_call = f"s{k}({wire_call})"
        items.append(wire_call if wire_call == f"r[{i}]" else f"(None if r[{i}] is None else {wire_call})")
    items += [f"r[{at['version']}]", f"stamp(r[{at['created_at']}])", f"stamp(r[{at['updated_at']}])"]
    source = "lambda r: [" + ", ".join(items) + "]"
    return eval(source, {"__builtins__": {}, **steps})   # noqa: S307 - indexes and bound names only


def _frame(name: str, columns: Sequence[str], rows: list[list[Any]]) -> bytes:
    return json.dumps({"entity": name, "columns": list(columns), "rows": rows}, separators=(",", ":")).encode()


def _personal(scope: DeviceScope, name: str) -> bool:
    """Whether the entity's rows depend on who the user is (`$user.id`), not only on attributes
    many users share: its bundle would be one user's."""
    entity_scope = scope.entities[name]
    if any("id" in ex.user_attributes(p) for p in entity_scope.predicates):
        return True
    parent = entity_scope.entity.parent
    return parent is not None and parent in scope.entities and _personal(scope, parent)


def subset_hash(scope: DeviceScope, entities: Sequence[str]) -> str | None:
    """The hash of `scope`'s digests of `entities` (a bundle's `scope_hash`), None when the
    scope lacks one of them."""
    if any(name not in scope.digests for name in entities):
        return None
    return scope_hash_of({name: scope.digests[name] for name in entities})


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)   # SQLite: naive UTC


def _key_aad(bundle_id: str) -> bytes:
    return b"fieldsync-bundle-key:" + bundle_id.encode()


def _share_key(schema_version: int, scope_hash: str, entities: Sequence[str]) -> str:
    raw = json.dumps([schema_version, scope_hash, list(entities)], separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()
