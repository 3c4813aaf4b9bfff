"""The tamper-evident audit trail of PHI access (invariant 8).

Every PHI read, write, export and admin view, every authentication event and key operation is
an `AuditEvent`: references only (user, role, device, entity, record ids, PHI field *names*,
subject references), never a PHI value. The one free-text member, a break-glass `reason`, may
hold PHI and is stored encrypted (AES-256-GCM under a data key from the key provider).

Entries live in the main database (SQLite or PostgreSQL), in four platform tables
(`fieldsync.audit.chain`, with the encoding, seals and checkpoints):

    fs_audit_head         one row: the last seq and entry hash, the log id, the purge anchor
    fs_audit_entries      one row per event, with prev_hash, entry_hash and seal
    fs_audit_checkpoints  Ed25519-signed statements "entry S has hash H"
    fs_audit_keys         the wrapped data keys (sealing and reason encryption)

Integrity, three layers (docs/audit.md):

1. A hash chain. `entry_hash` is SHA-256 over a canonical encoding of the entry, its `seq` and
   the previous entry's hash; `prev_hash` links it. The head row is updated inside the
   appending transaction (`UPDATE fs_audit_head SET seq = seq + n RETURNING ...`), so its row
   lock serialises appenders like `fs_position` does for the change log: one chain, no forks.
2. A seal per entry: HMAC-SHA256 of the entry hash under a key only the key provider can
   unwrap. Anyone can recompute a SHA-256 chain; nobody without the key can seal a forged or
   re-hashed entry, so an inserted or rewritten entry is found wherever it is.
3. Checkpoints signed with Ed25519 every `checkpoint_every` entries, on demand and at every
   purge. The signing key is a file in KEYS_DIR (0600, created on first use); its public half
   is exported (`fieldsync audit public-key`), so a verifier holding it detects truncation of
   the tail and a rewrite of the whole chain, even by someone holding the sealing key.

If an append fails, `AuditUnavailable` is raised and the caller's PHI operation fails with it:
`append` runs inside the caller's write transaction (the PHI write and its entry commit or roll
back together), `record` in a transaction of its own before PHI is returned.

Lock order (PostgreSQL): the change log's `fs_position` row before `fs_audit_head`, never the
other way round; both are taken as late as possible in a transaction.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import logging
import os
import stat
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fieldsync.errors import (AnchorUnavailable, AuditTampered, AuditTrailReplaced, AuditUnavailable,
                              ConfigError, Error)
from fieldsync.audit.anchor import Anchor, AnchorStore, read_anchors
from fieldsync.audit.chain import (CHECKPOINTS, ENTRIES, HEAD, HEAD_ID, KEYS, Checkpoint, DataKey, b64,
                                   create_audit_tables, entry_hash, filter_clauses, iso, json_detail, json_list,
                                   key_fingerprint, reason_aad, utc)
from fieldsync.store.engine import write_transaction

__all__ = [
    "ACTIONS", "CHANNELS", "OUTCOMES", "AuditEntry", "AuditEvent", "AuditLog", "AuditTrailReplaced",
    "AuditUnavailable",
]

ACTIONS = ("read", "create", "update", "delete", "export", "auth", "key", "admin")
OUTCOMES = ("success", "failure", "denied")
CHANNELS = ("rest", "sync", "pull", "push", "cli", "admin", "system")
SIGNING_KEY_FILE = "audit-signing.key"
_log = logging.getLogger("fieldsync.audit")
_NO_HEAD_ROW = "the audit trail's head row (fs_audit_head) is missing; run `fieldsync audit verify`"
_KEY_CONTEXT = {"purpose": "audit"}


# -- events and entries --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AuditEvent:
    """What happened, in references: who, on which device, through which channel, to which
    records, which PHI fields (names), which subjects (`codec.subject_ref` values)."""

    action: str
    outcome: str = "success"
    actor: str | None = None
    role: str | None = None
    device: str | None = None
    channel: str = "rest"
    entity: str | None = None
    record_ids: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()
    purpose: str | None = None
    reason: str | None = None
    detail: Mapping[str, Any] = dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"audit action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"audit outcome {self.outcome!r} is not one of {', '.join(OUTCOMES)}")
        if self.channel not in CHANNELS:
            raise ValueError(f"audit channel {self.channel!r} is not one of {', '.join(CHANNELS)}")
        for name in ("record_ids", "fields", "subjects"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"AuditEvent.{name} is a tuple of strings")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """An entry as stored: the event's references, its place in the chain and whether it holds
    an (encrypted) reason. `reason` is filled only when asked to decrypt."""

    seq: int
    recorded_at: dt.datetime
    action: str
    outcome: str
    actor: str | None
    role: str | None
    device: str | None
    channel: str
    entity: str | None
    record_ids: tuple[str, ...]
    fields: tuple[str, ...]
    subjects: tuple[str, ...]
    purpose: str | None
    detail: Mapping[str, Any]
    has_reason: bool
    entry_hash: str
    reason: str | None = None


# the statements of an append, built once (building them cost more than running them)
_TAKE_SEQS = (HEAD.update().where(HEAD.c.id == HEAD_ID).values(seq=HEAD.c.seq + sa.bindparam("n", type_=sa.BigInteger))
              .returning(HEAD.c.seq, HEAD.c.hash, HEAD.c.log_id, HEAD.c.anchor_seq, HEAD.c.anchor_hash))
_MOVE_HEAD = HEAD.update().where(HEAD.c.id == HEAD_ID).values(
    hash=sa.bindparam("h"), key_id=sa.bindparam("k"), seal=sa.bindparam("s"))
_INSERT_ENTRIES = ENTRIES.insert()


# -- the log -------------------------------------------------------------------------------------

@contextmanager
def _unavailable_on_failure() -> Iterator[None]:
    """Any failure to record becomes AuditUnavailable (the caller's PHI operation then fails)."""
    try:
        yield
    except AuditUnavailable:
        raise
    except Exception as exc:
        raise AuditUnavailable(f"the audit trail could not record this access ({_describe(exc)}); "
                               "nothing was done") from exc


class AuditLog:
    """Appends, checkpoints, verifies, exports and purges the audit trail in `engine`'s database.

    `keys` is the key provider (`fieldsync.crypto.keys`), `signing_key_path` the Ed25519 key
    file, `clock` the time source (injected by tests); `checkpoint_every` entries a checkpoint
    is signed inside the appending transaction; `retention_days` is what `purge` keeps;
    `anchors` the stores of the anchor kept outside the database (`audit_anchor`; none: the
    log is not anchored, as in unit tests of the chain).
    """

    def __init__(self, engine: sa.Engine, keys, signing_key_path: str | os.PathLike[str], *,
                 checkpoint_every: int = 1000, retention_days: int = 2192,
                 clock: Callable[[], dt.datetime] | None = None, anchors: Sequence[AnchorStore] = ()):
        if checkpoint_every < 0:
            raise ConfigError(f"AUDIT_CHECKPOINT_EVERY must be 0 (off) or more, not {checkpoint_every}")
        if retention_days < 1:
            raise ConfigError(f"AUDIT_RETENTION_DAYS must be at least 1, not {retention_days}")
        self.engine = engine
        self.keys = keys
        self.signing_key_path = Path(signing_key_path)
        self.checkpoint_every = checkpoint_every
        self.retention_days = retention_days
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self._lock = threading.Lock()
        self._active: DataKey | None = None
        self._data_keys: dict[str, DataKey] = {}
        self._signer: Ed25519PrivateKey | None = None
        self.anchors: list[AnchorStore] = list(anchors)
        self._anchor_lock = threading.Lock()
        self._anchored: tuple[str, int] | None = None    # (log id, seq) this process last anchored
        self._pending_key = f"fieldsync_audit_anchor_{id(self)}"
        if self.anchors:
            _watch_commits(engine, self)

    @classmethod
    def from_config(cls, config, engine: sa.Engine, *, clock: Callable[[], dt.datetime] | None = None) -> "AuditLog":
        """The audit log of a configuration: key provider from KEY_PROVIDER, signing key
        AUDIT_SIGNING_KEY (default `<KEYS_DIR>/audit-signing.key`), AUDIT_CHECKPOINT_EVERY and
        AUDIT_RETENTION_DAYS. Nothing is opened or created until `prepare` or first use."""
        from fieldsync.audit.anchor import anchor_stores_from_config
        from fieldsync.crypto.providers import key_provider_from_config
        keys_dir = Path(config.get("KEYS_DIR") or (config.data_dir / "keys"))
        signing = Path(config.get("AUDIT_SIGNING_KEY") or (keys_dir / SIGNING_KEY_FILE))
        return cls(engine, key_provider_from_config(config), signing,
                   checkpoint_every=int(config.get("AUDIT_CHECKPOINT_EVERY", 1000)),
                   retention_days=int(config.get("AUDIT_RETENTION_DAYS", 2192)), clock=clock,
                   anchors=anchor_stores_from_config(config, signing))

    def prepare(self) -> None:
        """Create the tables, the head row, the data key and the signing key when missing, after
        checking the database's trail against the anchor kept outside it, and write the anchor.
        Called at app start, outside any transaction: an append inside a caller's transaction
        must not have to create a key in another one (on SQLite that would wait on itself).

        AuditTrailReplaced when the trail is not the anchored one (tables dropped, rows deleted,
        another log, cut back before the anchored entry): a server that has written entries
        never starts a new trail silently (`fieldsync audit acknowledge-reset` accepts a
        deliberate reset). AnchorUnavailable when an anchor store cannot be read or written."""
        found, unreadable = read_anchors(self.anchors)
        if unreadable:
            raise AnchorUnavailable("; ".join(unreadable) + "; restore it, or accept the trail in the database "
                                    "with `fieldsync audit acknowledge-reset`")
        head = self._stored_head()
        for store, anchor in found:
            what = _contradiction(anchor, head)
            if what is not None:
                raise AuditTrailReplaced(self._refusal(store, anchor, what))
        self._prepare_tables(head)
        self._write_anchor(self._current_checkpoint(), strict=True)

    def _stored_head(self) -> Mapping[str, Any] | None | bool:
        """The head row; False when the audit tables do not exist, None when the row is missing."""
        if not sa.inspect(self.engine).has_table(HEAD.name):
            return False
        with self.engine.connect() as conn:
            return conn.execute(sa.select(HEAD).where(HEAD.c.id == HEAD_ID)).mappings().first()

    def _leftovers(self) -> list[str]:
        """What the audit tables still hold besides the head (rows that a missing head orphaned)."""
        out = []
        with self.engine.connect() as conn:
            for table, what in ((ENTRIES, "entries"), (CHECKPOINTS, "checkpoints"), (KEYS, "data keys")):
                if sa.inspect(conn).has_table(table.name):
                    n = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                    if n:
                        out.append(f"{n} {what}")
        return out

    def _refusal(self, store: AnchorStore, anchor: Anchor, what: str) -> str:
        database = self.engine.url.render_as_string(hide_password=True)
        return (f"the audit trail in {database} is not the one anchored in {store.location}: the anchor is a "
                f"signed checkpoint of {anchor.describe()}, but {what}. "
                "The trail was wiped or replaced, or the server points at another database; it does not start "
                "a new trail silently. Restore the database or point the server at the right one; if the reset "
                f"is deliberate, run `fieldsync audit acknowledge-reset --log {anchor.log_id} --reason TEXT` "
                "(it is recorded in the trail) and start again")

    def _prepare_tables(self, head: Mapping[str, Any] | None | bool) -> None:
        if head is None:
            leftovers = self._leftovers()
            if leftovers:   # a new head would start a second trail over the rows of the first
                raise AuditTrailReplaced(
                    "the audit trail's head row is missing (deleted) but its tables still hold "
                    + ", ".join(leftovers) + "; restore the database, and run `fieldsync audit verify`")
        create_audit_tables(self.engine)
        key = self._active_key(None)
        self._signing_key()
        with write_transaction(self.engine) as conn:   # the empty log's head is sealed too
            head = self.head(conn)
            if head["seal"] is None and head["seq"] == 0:
                conn.execute(HEAD.update().where(HEAD.c.id == HEAD_ID, HEAD.c.seq == 0).values(
                    key_id=key.key_id, seal=key.seal_head(head["log_id"], 0, head["hash"], head["anchor_seq"],
                                                          head["anchor_hash"])))

    # -- the anchor ------------------------------------------------------------------------------
    def _current_checkpoint(self) -> Checkpoint:
        """A signed checkpoint at the head now: signed at the newest entry, the purge's at the
        purge anchor, or a statement that the (empty) log exists (seq 0, kept outside only)."""
        cp = self.checkpoint()
        if cp is not None:
            return cp
        with self.engine.connect() as conn:
            head = self.head(conn)
            if head["seq"] != 0:
                row = conn.execute(sa.select(CHECKPOINTS).where(CHECKPOINTS.c.seq == head["seq"])).mappings().first()
                if row is None:
                    raise AuditTampered(f"the log was purged through entry {head['seq']} but its checkpoint there is "
                                        "missing; run `fieldsync audit verify`")
                return Checkpoint(row["seq"], row["entry_hash"], row["statement"], row["signature"], row["key_id"])
        return self._statement(0, head["hash"], None, head["log_id"])

    def _write_anchor(self, cp: Checkpoint, *, strict: bool = False, force: bool = False) -> None:
        """Write `cp` to every anchor store, unless a store already holds a later checkpoint of
        the same log (several servers, or a slow write overtaken). `strict`: raise
        AnchorUnavailable when a store fails (at start); else log it (after a commit, the
        entries are written; the next checkpoint retries)."""
        if not self.anchors:
            return
        anchor = Anchor.parse(cp.as_json())
        with self._anchor_lock:
            if not force and self._anchored is not None and self._anchored[0] == anchor.log_id \
                    and self._anchored[1] >= anchor.seq and not strict:
                return
            failures = []
            for store in self.anchors:
                try:
                    if not force:
                        current = store.read()
                        try:
                            held = Anchor.parse(current) if current else None
                        except ValueError:
                            held = None
                        if held is not None and held.log_id == anchor.log_id and held.seq >= anchor.seq:
                            continue
                    store.write(anchor.as_json())
                except AnchorUnavailable as exc:
                    failures.append(str(exc))
            if not failures:
                self._anchored = (anchor.log_id, anchor.seq)
        if failures:
            if strict:
                raise AnchorUnavailable("; ".join(failures))
            _log.error("the audit anchor was not written after checkpoint %s: %s", anchor.seq, "; ".join(failures))

    def _checkpoint_committed(self, conn: sa.Connection, cp: Checkpoint) -> None:
        """Anchor `cp` once the transaction that signed it has committed (never before: an
        anchor of a rolled-back checkpoint would accuse the intact trail of being cut)."""
        if self.anchors:
            conn.info.setdefault(self._pending_key, []).append(cp)

    def read_anchors(self) -> tuple[list[tuple[AnchorStore, Anchor]], list[str]]:
        """The anchors found in the stores, and problems (an unreadable anchor or store)."""
        try:
            return read_anchors(self.anchors)
        except AnchorUnavailable as exc:
            return [], [str(exc)]

    def acknowledge_reset(self, previous_log: str, *, reason: str, actor: str | None) -> Checkpoint:
        """Accept that the trail in the database is not the anchored log `previous_log` (a
        restored backup, a deliberate new trail): create the trail when it is gone, record an
        `audit-trail-reset` entry naming the old anchor (the reason encrypted), sign a
        checkpoint and make it the anchor. ConfigError when no anchor names `previous_log` or
        the trail agrees with it."""
        if not reason or not reason.strip():
            raise ConfigError("say why the audit trail was reset (--reason)")
        found, unreadable = read_anchors(self.anchors)
        anchored = {anchor.log_id: (store, anchor) for store, anchor in found}
        if previous_log not in anchored:
            named = ", ".join(sorted(anchored)) or "none"
            raise ConfigError(f"no audit anchor records log {previous_log} (looked in "
                              f"{', '.join(s.location for s in self.anchors) or 'no anchor store'}; the anchored "
                              f"log(s): {named})")
        store, old = anchored[previous_log]
        head = self._stored_head()
        what = _contradiction(old, head)
        if what is None and not unreadable:
            raise ConfigError(f"the audit trail in the database is log {previous_log} and agrees with its anchor: "
                              "there is no reset to acknowledge")
        self._prepare_tables(head)
        event = AuditEvent(action="admin", actor=actor, channel="cli", purpose="operations", reason=reason, detail={
            "event": "audit-trail-reset", "previous_log": old.log_id, "previous_seq": old.seq,
            "previous_hash": old.entry_hash, "previous_signed_at": old.signed_at, "previous_anchor": old.as_json(),
            "anchor": store.location, "found": what or "; ".join(unreadable)})
        self.record(event)
        cp = self._current_checkpoint()
        self._write_anchor(cp, strict=True, force=True)
        return cp

    # -- keys ------------------------------------------------------------------------------------
    def _unwrap(self, wrapped: bytes) -> bytes:
        try:
            return self.keys.decrypt_data_key(bytes(wrapped), context=_KEY_CONTEXT)
        except TypeError:  # a provider without encryption contexts
            return self.keys.decrypt_data_key(bytes(wrapped))

    def _generate(self) -> tuple[bytes, bytes]:
        try:
            return self.keys.generate_data_key(context=_KEY_CONTEXT)
        except TypeError:
            return self.keys.generate_data_key()

    def _active_key(self, conn: sa.Connection | None) -> DataKey:
        """The newest audit data key; created (in its own transaction) only when `conn` is None."""
        with self._lock:
            if self._active is not None:
                return self._active
        query = sa.select(KEYS.c.key_id, KEYS.c.wrapped).order_by(KEYS.c.created_at.desc(), KEYS.c.key_id).limit(1)
        if conn is not None:
            row = conn.execute(query).first()
        else:
            with self.engine.connect() as c:
                row = c.execute(query).first()
            if row is None:
                key, wrapped = self._generate()
                key_id = uuid.uuid4().hex
                with self.engine.begin() as c:
                    c.execute(KEYS.insert().values(key_id=key_id, wrapped=wrapped, created_at=self.clock()))
                row = (key_id, wrapped)
        if row is None:
            raise AuditUnavailable("the audit log has no data key yet; the server creates it at start "
                                   "(AuditLog.prepare)")
        data_key = self._data_key(row[0], row[1])
        with self._lock:
            self._active = data_key
        return data_key

    def _data_key(self, key_id: str, wrapped: bytes) -> DataKey:
        with self._lock:
            found = self._data_keys.get(key_id)
        if found is None:
            found = DataKey.derive(key_id, self._unwrap(wrapped))
            with self._lock:
                self._data_keys[key_id] = found
        return found

    def data_keys(self, conn: sa.Connection) -> tuple[dict[str, DataKey], dict[str, str]]:
        """Every audit data key by id, and the ids that cannot be unwrapped with why."""
        out: dict[str, DataKey] = {}
        failed: dict[str, str] = {}
        for key_id, wrapped in conn.execute(sa.select(KEYS.c.key_id, KEYS.c.wrapped)):
            try:
                out[key_id] = self._data_key(key_id, wrapped)
            except Error as exc:
                failed[key_id] = str(exc)
        return out, failed

    def _signing_key(self) -> Ed25519PrivateKey:
        """The Ed25519 checkpoint key: read from its file, created there (0600) on first use."""
        with self._lock:
            if self._signer is not None:
                return self._signer
            path = self.signing_key_path
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                key = Ed25519PrivateKey.generate()
                pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
                try:
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    pass  # another process made it first: use theirs
                else:
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(pem)
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise ConfigError(f"the audit signing key {path} is readable by others (mode {mode:o}); "
                                  "chmod 600 it")
            try:
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            except ValueError:
                raise ConfigError(f"{path} is not a PEM private key") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise ConfigError(f"{path} must hold an Ed25519 private key")
            self._signer = key
            return key

    def public_key_pem(self) -> str:
        """The public half of the checkpoint signing key, PEM (give it to whoever verifies)."""
        public = self._signing_key().public_key()
        return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def local_public_key(self) -> Ed25519PublicKey | None:
        """The public half of the local signing key, None when there is no key file (a verifier
        never creates one)."""
        if self._signer is None and not self.signing_key_path.exists():
            return None
        return self._signing_key().public_key()

    # -- appending -------------------------------------------------------------------------------
    def append(self, conn: sa.Connection, event: AuditEvent) -> int:
        """Append `event` inside the caller's open write transaction, so the PHI write and its
        entry commit or roll back together; returns the entry's seq."""
        return self.append_all(conn, [event])[0]

    def append_all(self, conn: sa.Connection, events: Sequence[AuditEvent]) -> list[int]:
        """Append `events` in order inside the caller's write transaction (one head update for
        all of them); returns their seqs. AuditUnavailable when anything fails."""
        if not events:
            return []
        with _unavailable_on_failure():
            return self._append(conn, events)

    def record(self, event: AuditEvent) -> int:
        """Append `event` in a write transaction of its own (reads, auth events, exports, key
        operations); returns its seq. AuditUnavailable when it cannot be recorded."""
        return self.record_all([event])[0]

    def record_all(self, events: Sequence[AuditEvent]) -> list[int]:
        """`record` for several events, in one transaction."""
        if not events:
            return []
        with _unavailable_on_failure(), write_transaction(self.engine) as conn:   # begin/commit can fail too
            return self.append_all(conn, events)

    def _append(self, conn: sa.Connection, events: Sequence[AuditEvent]) -> list[int]:
        key = self._active_key(conn)
        n = len(events)
        # invariant 8: one chain. The head row's lock (held until commit) serialises appenders,
        # so every entry's prev_hash is the committed hash of the one before it.
        head = conn.execute(_TAKE_SEQS, {"n": n}).first()
        if head is None:
            raise AuditUnavailable(_NO_HEAD_ROW)
        last, prev, log_id, anchor_seq, anchor_hash = head
        first = last - n + 1
        now = utc(self.clock())
        rows = []
        for i, event in enumerate(events):
            seq = first + i
            reason = None
            if event.reason is not None:
                nonce = os.urandom(12)
                reason = "r1." + b64(nonce + key.reason.encrypt(nonce, event.reason.encode(), reason_aad(log_id, seq)))
            row = {"seq": seq, "recorded_at": now, "action": event.action, "outcome": event.outcome,
                   "actor": event.actor, "role": event.role, "device": event.device, "channel": event.channel,
                   "entity": event.entity, "record_ids": json_list(event.record_ids),
                   "fields": json_list(event.fields), "subjects": json_list(event.subjects),
                   "purpose": event.purpose, "reason": reason, "key_id": key.key_id,
                   "detail": json_detail(event.detail), "prev_hash": prev}
            row["entry_hash"] = prev = entry_hash(row)
            row["seal"] = key.seal(prev)
            rows.append(row)
        conn.execute(_INSERT_ENTRIES, rows)
        conn.execute(_MOVE_HEAD, {"h": prev, "k": key.key_id, "s": key.seal_head(log_id, last, prev, anchor_seq,
                                                                                   anchor_hash)})
        every = self.checkpoint_every
        if every:
            for r in rows:
                if r["seq"] % every == 0:
                    self._sign(conn, r["seq"], r["entry_hash"], now, log_id)
        return [r["seq"] for r in rows]

    # -- checkpoints -----------------------------------------------------------------------------
    def _sign(self, conn: sa.Connection, seq: int, digest: str, recorded_at: dt.datetime, log_id: str) -> Checkpoint:
        existing = conn.execute(sa.select(CHECKPOINTS).where(CHECKPOINTS.c.seq == seq)).mappings().first()
        if existing is not None:
            return Checkpoint(seq, existing["entry_hash"], existing["statement"], existing["signature"],
                              existing["key_id"])
        cp = self._statement(seq, digest, recorded_at, log_id)
        conn.execute(CHECKPOINTS.insert().values(seq=seq, entry_hash=digest, signed_at=utc(self.clock()),
                                                 key_id=cp.key_id, statement=cp.statement, signature=cp.signature))
        self._checkpoint_committed(conn, cp)
        return cp

    def _statement(self, seq: int, digest: str, recorded_at: dt.datetime | None, log_id: str) -> Checkpoint:
        """A signed statement "entry `seq` of log `log_id` has hash `digest`"."""
        signer = self._signing_key()
        now = utc(self.clock())
        statement = json.dumps({"v": 1, "log": log_id, "seq": seq, "hash": digest,
                                "recorded_at": iso(recorded_at if recorded_at is not None else now),
                                "signed_at": iso(now)}, sort_keys=True, separators=(",", ":"))
        signature = b64(signer.sign(statement.encode()))
        return Checkpoint(seq, digest, statement, signature, key_fingerprint(signer.public_key()))

    def checkpoint(self) -> Checkpoint | None:
        """Sign a checkpoint at the newest entry now (None for an empty log); returns it, or the
        one already signed at that entry."""
        with write_transaction(self.engine) as conn:
            head = conn.execute(sa.select(HEAD).where(HEAD.c.id == HEAD_ID)).mappings().first()
            if head is None or head["seq"] == 0 or head["seq"] == head["anchor_seq"]:
                return None
            row = conn.execute(sa.select(ENTRIES.c.recorded_at).where(ENTRIES.c.seq == head["seq"])).first()
            if row is None:
                raise AuditTampered(f"the head names entry {head['seq']}, which is missing; run `fieldsync audit verify`")
            return self._sign(conn, head["seq"], head["hash"], row[0], head["log_id"])

    def checkpoints(self, conn: sa.Connection) -> list[Checkpoint]:
        return [Checkpoint(r["seq"], r["entry_hash"], r["statement"], r["signature"], r["key_id"])
                for r in conn.execute(sa.select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq)).mappings()]

    # -- reading ---------------------------------------------------------------------------------
    @contextmanager
    def snapshot(self) -> Iterator[sa.Connection]:
        """A connection reading one consistent state of the log (a verifier must not see an
        entry committed after it read the head)."""
        with self.engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN")  # a deferred read transaction: one WAL snapshot
                try:
                    yield conn
                finally:
                    conn.rollback()
            else:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn

    def head_or_none(self, conn: sa.Connection) -> Mapping[str, Any] | None:
        """The head row, None when it was deleted."""
        return conn.execute(sa.select(HEAD).where(HEAD.c.id == HEAD_ID)).mappings().first()

    def head(self, conn: sa.Connection) -> Mapping[str, Any]:
        head = conn.execute(sa.select(HEAD).where(HEAD.c.id == HEAD_ID)).mappings().first()
        if head is None:
            raise AuditUnavailable(_NO_HEAD_ROW)
        return head

    def entries(self, *, start: dt.datetime | None = None, end: dt.datetime | None = None,
                actor: str | None = None, entity: str | None = None, subject: str | None = None,
                decrypt_reasons: bool = False) -> Iterator[AuditEntry]:
        """Entries recorded in [start, end), oldest first, filtered by actor, entity and subject
        reference. Reasons are decrypted only with `decrypt_reasons`."""
        where = filter_clauses(start=start, end=end, actor=actor, entity=entity, subject=subject)
        query = sa.select(ENTRIES).where(*where).order_by(ENTRIES.c.seq)
        with self.snapshot() as conn:
            log_id = self.head(conn)["log_id"]
            keys = self.data_keys(conn)[0] if decrypt_reasons else {}
            result = conn.execution_options(yield_per=500).execute(query)
            try:   # a reader may stop early: the server-side cursor is closed either way
                for row in result.mappings():
                    entry = _entry(row)
                    if subject is not None and subject not in entry.subjects:
                        continue
                    if decrypt_reasons and row["reason"] is not None:
                        entry = _with_reason(entry, self._decrypt_reason(keys, row, log_id))
                    yield entry
            finally:
                result.close()

    def _decrypt_reason(self, keys: Mapping[str, DataKey], row: Mapping[str, Any], log_id: str) -> str:
        key = keys.get(row["key_id"])
        text = row["reason"]
        if key is None or not text.startswith("r1."):
            raise AuditTampered(f"the reason of entry {row['seq']} cannot be decrypted (key {row['key_id']})")
        data = base64.b64decode(text[3:])
        try:
            return key.reason.decrypt(data[:12], data[12:], reason_aad(log_id, row["seq"])).decode()
        except Exception:
            raise AuditTampered(f"the reason of entry {row['seq']} does not decrypt: it was altered or moved") from None

    # -- verification and retention --------------------------------------------------------------
    def verify(self, *, checkpoints: Iterable[Checkpoint] = (), public_keys: Iterable[Ed25519PublicKey] = (),
               use_anchors: bool = True):
        """Check the whole log; returns a `fieldsync.audit.verify.VerifyReport` naming
        every problem found. `checkpoints` kept outside the database and `public_keys` given by
        the verifier are checked too (the local signing key's public half always is), and so is
        the anchor in each anchor store unless `use_anchors` is False."""
        from fieldsync.audit.verify import verify_log
        return verify_log(self, external=list(checkpoints), public_keys=list(public_keys),
                          anchors=self.read_anchors() if use_anchors and self.anchors else None)

    def purge(self, retention_days: int | None = None, *, actor: str | None = None,
              channel: str = "cli") -> dict[str, Any]:
        """Retention: delete the entries older than `retention_days` (default the configured
        AUDIT_RETENTION_DAYS). Refused when the log does not verify (evidence is not destroyed).
        The purge signs a checkpoint at the last purged entry and appends an entry recording
        it, so verification starts at the first retained entry and a deletion from the start
        that no purge recorded is still detected."""
        days = self.retention_days if retention_days is None else int(retention_days)
        if days < 1:
            raise ConfigError(f"the audit retention must be at least 1 day, not {days}")
        report = self.verify()
        if not report.ok:
            raise AuditTampered("the audit log does not verify, so nothing is purged: "
                                + "; ".join(report.problems[:5]))
        cutoff = utc(self.clock()) - dt.timedelta(days=days)
        with write_transaction(self.engine) as conn:
            head = self.head(conn)
            through = conn.execute(sa.select(sa.func.max(ENTRIES.c.seq))
                                   .where(ENTRIES.c.recorded_at < cutoff)).scalar_one_or_none()
            if through is None or through <= head["anchor_seq"]:
                return {"purged": 0, "through": head["anchor_seq"], "cutoff": iso(cutoff)}
            row = conn.execute(sa.select(ENTRIES.c.entry_hash, ENTRIES.c.recorded_at)
                               .where(ENTRIES.c.seq == through)).one()
            self._sign(conn, through, row[0], row[1], head["log_id"])
            self.append_all(conn, [AuditEvent(action="admin", actor=actor, channel=channel,
                                              detail={"event": "audit-purge", "through": through,
                                                      "cutoff": iso(cutoff), "retention_days": days})])
            deleted = conn.execute(ENTRIES.delete().where(ENTRIES.c.seq <= through)).rowcount
            head = self.head(conn)
            key = self._active_key(conn)
            conn.execute(HEAD.update().where(HEAD.c.id == HEAD_ID).values(
                anchor_seq=through, anchor_hash=row[0], key_id=key.key_id,
                seal=key.seal_head(head["log_id"], head["seq"], head["hash"], through, row[0])))
        return {"purged": deleted, "through": through, "cutoff": iso(cutoff)}


def _entry(row: Mapping[str, Any]) -> AuditEntry:
    return AuditEntry(seq=row["seq"], recorded_at=utc(row["recorded_at"]), action=row["action"],
                      outcome=row["outcome"], actor=row["actor"], role=row["role"], device=row["device"],
                      channel=row["channel"], entity=row["entity"], record_ids=tuple(json.loads(row["record_ids"])),
                      fields=tuple(json.loads(row["fields"])), subjects=tuple(json.loads(row["subjects"])),
                      purpose=row["purpose"], detail=json.loads(row["detail"]), has_reason=row["reason"] is not None,
                      entry_hash=row["entry_hash"])


def _with_reason(entry: AuditEntry, reason: str) -> AuditEntry:
    return dataclasses.replace(entry, reason=reason)


def _describe(exc: BaseException) -> str:
    """A short, value-free description of a failure: its type and the database's first line
    (SQLAlchemy's own message also lists the statement's parameters)."""
    orig = getattr(exc, "orig", None)
    if orig is not None:
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
        return f"{type(orig).__name__}: {first[:200]}"
    return type(exc).__name__


def _contradiction(anchor: Anchor, head: Mapping[str, Any] | None | bool) -> str | None:
    """How the database's trail (its head row; None: deleted, False: no tables) contradicts
    `anchor`, or None. Only what would make a server start a new trail, or reuse positions,
    is checked here; `verify` checks the rest."""
    if head is False:
        return "the database has no audit tables (dropped)"
    if head is None:
        return "the trail's head row is missing (deleted)"
    if head["log_id"] != anchor.log_id:
        return (f"the database holds another audit log, {head['log_id']}, at entry {head['seq']}"
                + (" (a new, empty trail)" if head["seq"] == 0 else ""))
    if head["seq"] < anchor.seq:
        return (f"its trail ends at entry {head['seq']}, before the anchored entry (entries were removed, or an "
                "older backup was restored)")
    return None


def _watch_commits(engine: sa.Engine, log: "AuditLog") -> None:
    """Anchor the checkpoints a transaction signed once it has committed: noted on the
    connection when signed, kept at COMMIT, dropped at ROLLBACK or a failed COMMIT, written when
    the connection goes back to the pool (after its commit returned)."""
    pending, committed = log._pending_key, log._pending_key + "_committed"

    def on_commit(conn) -> None:
        if pending in conn.info:
            conn.info[committed] = conn.info.pop(pending)

    def info(conn) -> dict | None:
        """The connection's info, or None when a database outage invalidated the connection
        mid-transaction: reading it would raise PendingRollbackError in place of the outage
        (a 500 instead of a 503), and what it held was dropped with the connection anyway."""
        try:
            return conn.info
        except sa.exc.InvalidRequestError:
            return None

    def on_rollback(conn) -> None:   # what an earlier COMMIT of this connection made stays anchored
        found = info(conn)
        if found is not None:
            found.pop(pending, None)

    def on_error(context) -> None:     # a failed COMMIT too
        found = info(context.connection) if context.connection is not None else None
        if found is not None:
            found.pop(pending, None)
            found.pop(committed, None)

    def on_checkin(_dbapi_connection, record) -> None:
        if record is None:
            return
        done = record.info.pop(committed, None)
        record.info.pop(pending, None)   # signed but never committed: not anchored
        if done:
            try:
                log._write_anchor(max(done, key=lambda cp: cp.seq))
            except Exception:   # never fail a returned connection; the next checkpoint retries
                _log.exception("the audit anchor was not written")

    sa.event.listen(engine, "commit", on_commit)
    sa.event.listen(engine, "rollback", on_rollback)
    sa.event.listen(engine, "handle_error", on_error)
    sa.event.listen(engine, "checkin", on_checkin)
