"""The audit trail's storage and integrity primitives (invariant 8; docs/audit.md): its tables,
the canonical encoding and hash of an entry, the per-entry seal and the signed checkpoint.

`fieldsync.audit.trail.AuditLog` writes and reads the chain with these; the verifier
(`fieldsync.audit.verify`) checks it with the same ones, without depending on the log.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import uuid
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fieldsync.errors import ConfigError
from fieldsync.store.tables import PLATFORM_PREFIX
from fieldsync.store.engine import create_tables

__all__ = [
    "CHECKPOINTS", "ENTRIES", "GENESIS", "HEAD", "HEAD_ID", "KEYS", "Checkpoint", "DataKey", "audit_metadata", "b64",
    "create_audit_tables", "entry_hash", "filter_clauses", "iso", "json_detail", "json_list", "key_fingerprint", "load_public_key",
    "reason_aad", "utc", "verify_signature",
]

GENESIS = "0" * 64              # the prev_hash of entry 1
HASH_VERSION = "fsa1"           # names the canonical encoding; a new encoding gets a new tag
HEAD_ID = 1                     # the head table's one row


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that entry `seq` has hash `entry_hash`. `statement` is the exact
    JSON that was signed; `signature` its Ed25519 signature (base64)."""

    seq: int
    entry_hash: str
    statement: str
    signature: str
    key_id: str

    def as_json(self) -> str:
        """One line a verifier can keep outside the database (`audit verify --checkpoints`)."""
        return json.dumps({"statement": self.statement, "signature": self.signature, "key_id": self.key_id},
                          separators=(",", ":"), sort_keys=True)


# -- tables --------------------------------------------------------------------------------------

audit_metadata = sa.MetaData()

HEAD = sa.Table(
    PLATFORM_PREFIX + "audit_head", audit_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),             # the last seq handed out
    sa.Column("hash", sa.String(64), nullable=False),            # the entry hash at `seq`
    sa.Column("log_id", sa.String(36), nullable=False),          # names this log in signed statements
    # retention: entries up to anchor_seq were purged; anchor_hash is entry anchor_seq's hash
    sa.Column("anchor_seq", sa.BigInteger, nullable=False),
    sa.Column("anchor_hash", sa.String(64), nullable=False),
    # HMAC of the row's values under the audit key (NULL only for the empty log): a head moved
    # or edited by hand does not match, so it cannot hide a truncated tail or an appended entry
    sa.Column("key_id", sa.String(32), nullable=True),
    sa.Column("seal", sa.String(64), nullable=True),
    sa.CheckConstraint(f"id = {HEAD_ID}", name="ck_fs_audit_head_one_row"),
)

ENTRIES = sa.Table(
    PLATFORM_PREFIX + "audit_entries", audit_metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(128), nullable=True),
    sa.Column("role", sa.String(64), nullable=True),
    sa.Column("device", sa.String(64), nullable=True),
    sa.Column("channel", sa.String(16), nullable=False),
    sa.Column("entity", sa.String(64), nullable=True),
    sa.Column("record_ids", sa.Text, nullable=False),            # JSON list
    sa.Column("fields", sa.Text, nullable=False),                # JSON list of PHI field names
    sa.Column("subjects", sa.Text, nullable=False),              # JSON list of subject references
    sa.Column("purpose", sa.String(64), nullable=True),
    sa.Column("reason", sa.Text, nullable=True),                 # r1.<base64(nonce || AES-GCM)>, never plaintext
    sa.Column("key_id", sa.String(32), nullable=False),          # the data key of seal and reason
    sa.Column("detail", sa.Text, nullable=False),                # JSON object, non-PHI extras
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
    sa.Column("seal", sa.String(64), nullable=False),            # HMAC-SHA256(seal key, entry_hash)
    sa.Index("ix_fs_audit_entries_recorded_at", "recorded_at"),
)

CHECKPOINTS = sa.Table(
    PLATFORM_PREFIX + "audit_checkpoints", audit_metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("entry_hash", sa.String(64), nullable=False),
    sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("key_id", sa.String(32), nullable=False),          # fingerprint of the public key
    sa.Column("statement", sa.Text, nullable=False),             # the signed JSON
    sa.Column("signature", sa.Text, nullable=False),             # base64 Ed25519 signature
)

KEYS = sa.Table(
    PLATFORM_PREFIX + "audit_keys", audit_metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),        # wrapped by the key provider
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


def create_audit_tables(engine: sa.Engine) -> None:
    """Create the audit tables and the head row when missing (safe to run again, from several
    servers at once)."""
    create_tables(engine, audit_metadata)
    with engine.connect() as conn:
        exists = conn.execute(sa.select(HEAD.c.id)).first() is not None
    if exists:
        return
    try:
        with engine.begin() as conn:
            conn.execute(HEAD.insert().values(id=HEAD_ID, seq=0, hash=GENESIS, log_id=str(uuid.uuid4()),
                                              anchor_seq=0, anchor_hash=GENESIS))
    except sa.exc.IntegrityError:
        pass  # another server inserted it first


# -- encoding ------------------------------------------------------------------------------------

def utc(value: dt.datetime) -> dt.datetime:
    """`value` in UTC; a naive value (SQLite keeps no zone) is taken as UTC already."""
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def iso(value: dt.datetime) -> str:
    """The canonical text of a time: UTC, microseconds, `Z`."""
    return utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_list(values: Sequence[str]) -> str:
    return json.dumps(list(values), separators=(",", ":"), ensure_ascii=True)


def json_detail(detail: Mapping[str, Any]) -> str:
    return json.dumps(dict(detail), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def entry_hash(row: Mapping[str, Any], seq: int | None = None) -> str:
    """SHA-256 over the canonical encoding of a stored entry (its columns as stored, the JSON
    ones as their text), with `seq` in place of the row's own when given (the verifier asks
    "was this entry written at another position?")."""
    material = [HASH_VERSION, row["seq"] if seq is None else seq, row["prev_hash"], iso(row["recorded_at"]),
                row["action"], row["outcome"], row["actor"], row["role"], row["device"], row["channel"],
                row["entity"], row["record_ids"], row["fields"], row["subjects"], row["purpose"], row["reason"],
                row["key_id"], row["detail"]]
    return hashlib.sha256(json.dumps(material, separators=(",", ":"), ensure_ascii=True).encode()).hexdigest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class DataKey:
    """One audit data key: a sealing key and a reason-encryption key derived from it."""

    key_id: str
    seal_key: bytes
    reason: AESGCM

    @classmethod
    def derive(cls, key_id: str, data_key: bytes) -> "DataKey":
        def sub(info: bytes) -> bytes:
            return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(data_key)
        return cls(key_id, sub(b"fieldsync audit seal v1"), AESGCM(sub(b"fieldsync audit reason v1")))

    def seal(self, digest: str) -> str:
        return hmac.new(self.seal_key, digest.encode(), hashlib.sha256).hexdigest()

    def seal_head(self, log_id: str, seq: int, digest: str, anchor_seq: int, anchor_hash: str) -> str:
        return self.seal(json.dumps(["head", log_id, seq, digest, anchor_seq, anchor_hash], separators=(",", ":")))


def reason_aad(log_id: str, seq: int) -> bytes:
    # binds the ciphertext to its entry: a reason moved to another entry does not decrypt
    return f"fieldsync-audit-reason\x1f{log_id}\x1f{seq}".encode()


def key_fingerprint(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (what `fieldsync audit public-key` writes)."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise ConfigError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("the audit public key must be an Ed25519 key")
    return key


def verify_signature(public: Ed25519PublicKey, checkpoint: Checkpoint) -> bool:
    try:
        public.verify(base64.b64decode(checkpoint.signature), checkpoint.statement.encode())
        return True
    except (InvalidSignature, ValueError):
        return False


def filter_clauses(*, start: dt.datetime | None = None, end: dt.datetime | None = None, actor: str | None = None,
                   entity: str | None = None, subject: str | None = None, action: str | None = None,
                   outcome: str | None = None) -> list:
    """SQL conditions on the entries table for the filters given (None: any). A subject is
    matched by text, so callers check `subject in entry.subjects` exactly afterwards."""
    where = []
    if start is not None:
        where.append(ENTRIES.c.recorded_at >= utc(start))
    if end is not None:
        where.append(ENTRIES.c.recorded_at < utc(end))
    if actor is not None:
        where.append(ENTRIES.c.actor == actor)
    if entity is not None:
        where.append(ENTRIES.c.entity == entity)
    if action is not None:
        where.append(ENTRIES.c.action == action)
    if outcome is not None:
        where.append(ENTRIES.c.outcome == outcome)
    if subject is not None:
        # narrowed by text, then checked exactly (a subject reference is a JSON string in a list)
        where.append(ENTRIES.c.subjects.contains(json.dumps(subject)))
    return where
