"""Data keys: created per scope, wrapped by the key provider, cached unwrapped for a short time.

A scope is what one key protects:

- `entity:<name>`            the entity's fields without a subject key, and deterministic fields
- `subject:<entity>:<ref>`   one data subject's fields in one entity (`ref` from `subject_ref`)
- `index:<name>`             the HMAC key of the entity's blind indexes
- `subject-ref`              the HMAC key of subject references (never rotated: audit entries
                             and exports match subjects by it)

Each scope has versions; at most one is `active` (new writes), older ones are `retired` (still
decrypt, re-encrypted away by `fieldsync keys rotate` and the server's key maintenance) and end
`destroyed` (the wrapped key is erased: rotation once no ciphertext uses them, shredding at once).
Key ids are random (12 hex digits), so they say nothing about the scope.

Unwrapped keys are cached in the process for `KEY_CACHE_SECONDS` (default 5 s): each cached
entry's state is re-read after that, so a rotation or a shred made by another process (the CLI)
reaches every server process within that time without a provider call per value.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fieldsync.errors import KeyMissing, KeyShredded
from fieldsync.crypto.keys import KeyProvider
from fieldsync.store.engine import create_tables, in_write_transaction, write_transaction

__all__ = ["DATA_KEYS", "KeyRing", "KeyMissing", "create_key_tables"]

_metadata = sa.MetaData()

DATA_KEYS = sa.Table(
    "fs_data_keys", _metadata,
    sa.Column("kid", sa.String(16), primary_key=True),
    sa.Column("scope", sa.String(200), nullable=False),
    sa.Column("kind", sa.String(8), nullable=False),          # aead | hmac
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("state", sa.String(12), nullable=False),        # active | retired | destroyed
    sa.Column("wrapped", sa.LargeBinary, nullable=True),      # NULL once destroyed
    sa.Column("provider", sa.String(16), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("destroyed_at", sa.DateTime(timezone=True), nullable=True),
    sa.UniqueConstraint("scope", "version", name="uq_fs_data_keys_scope_version"),
    sa.Index("ix_fs_data_keys_scope_state", "scope", "state"),
)


def create_key_tables(engine: sa.Engine) -> None:
    create_tables(engine, _metadata)


@dataclass
class _Key:
    kid: str
    scope: str
    kind: str
    state: str
    raw: bytes | None
    checked: float
    aead: AESGCM | None = None
    _siv: AESSIV | None = None
    _pads: tuple[Any, Any] | None = None

    def mac(self, message: bytes) -> bytes:
        """HMAC-SHA256 of `message` under this key (RFC 2104, computed from the two padded key
        states hashed once: half the cost of a one-shot HMAC call on this path)."""
        if self._pads is None:
            block = self.raw.ljust(64, b"\0")
            self._pads = (hashlib.sha256(bytes(b ^ 0x36 for b in block)),
                          hashlib.sha256(bytes(b ^ 0x5C for b in block)))
        inner, outer = self._pads[0].copy(), self._pads[1].copy()
        inner.update(message)
        outer.update(inner.digest())
        return outer.digest()

    @property
    def siv(self) -> AESSIV:
        if self._siv is None:
            derived = HKDF(hashes.SHA256(), 64, salt=None, info=b"fieldsync deterministic").derive(self.raw)
            self._siv = AESSIV(derived)
        return self._siv


def _kind(scope: str) -> str:
    return "hmac" if scope.startswith(("index:", "subject-ref")) else "aead"


def _context(scope: str, kid: str) -> dict[str, str]:
    """The provider's encryption context: references only (KMS logs it in CloudTrail)."""
    kind, _, rest = scope.partition(":")
    entity = rest.split(":", 1)[0] if rest else ""
    return {"fieldsync:purpose": "data-key", "fieldsync:scope-kind": kind, "fieldsync:entity": entity,
            "fieldsync:kid": kid}


class KeyRing:
    """The data keys of one database, wrapped by `provider`."""

    def __init__(self, engine: sa.Engine, provider: KeyProvider, *, provider_name: str = "local",
                 cache_seconds: float = 5.0, retire_grace_seconds: float | None = None,
                 clock: Callable[[], dt.datetime] | None = None, monotonic: Callable[[], float] = time.monotonic):
        self.engine = engine
        self.provider = provider
        self.provider_name = provider_name
        self.cache_seconds = cache_seconds
        # how long after its retirement a key may still be used for a write somewhere: a
        # process's cache, plus a write transaction that loaded the key just before it expired
        self.retire_grace_seconds = cache_seconds + 120.0 if retire_grace_seconds is None else retire_grace_seconds
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.monotonic = monotonic
        self._lock = threading.RLock()
        self._by_kid: dict[str, _Key] = {}
        self._active: dict[str, tuple[_Key, float]] = {}   # scope -> (active key, fresh until)
        self._in_use: dict[str, tuple[list[_Key], float]] = {}

    # -- loading -----------------------------------------------------------------------------
    def _unwrap(self, row: Any) -> _Key:
        now = self.monotonic()
        if row.state == "destroyed" or row.wrapped is None:
            return _Key(row.kid, row.scope, row.kind, "destroyed", None, now)
        raw = self.provider.decrypt_data_key(bytes(row.wrapped), context=_context(row.scope, row.kid))
        key = _Key(row.kid, row.scope, row.kind, row.state, raw, now)
        if row.kind == "aead":
            key.aead = AESGCM(raw)
        return key

    def _load_kid(self, kid: str) -> _Key:
        cached = self._by_kid.get(kid)   # the hot path: a dict read, no lock
        if cached is not None and self.monotonic() - cached.checked < self.cache_seconds:
            return cached
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(DATA_KEYS).where(DATA_KEYS.c.kid == kid)).first()
        if row is None:
            raise KeyMissing(f"no data key {kid} in this database")
        with self._lock:
            if cached is not None and cached.raw is not None and row.state != "destroyed":
                cached.state, cached.checked = row.state, self.monotonic()   # no second unwrap
                key = cached
            else:
                key = self._unwrap(row)
            self._by_kid[kid] = key
        return key

    def _load_active(self, scope: str) -> _Key | None:
        hit = self._active.get(scope)
        if hit is not None and self.monotonic() < hit[1]:
            return hit[0]
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(DATA_KEYS).where(DATA_KEYS.c.scope == scope,
                                                          DATA_KEYS.c.state == "active")).first()
        if row is None:
            return None
        key = self._load_kid(row.kid)
        self._active[scope] = (key, self.monotonic() + self.cache_seconds)
        return key

    # -- creating ----------------------------------------------------------------------------
    def ensure(self, scope: str) -> str:
        """The active key id of `scope`, creating the scope's first (or, after a shred, next)
        key in its own committed transaction when there is none."""
        key = self._load_active(scope)
        if key is not None:
            return key.kid
        self.ensure_many([scope])
        key = self._load_active(scope)
        assert key is not None
        return key.kid

    def ensure_many(self, scopes) -> None:
        """Make sure every scope of `scopes` has an active key: one query finds the missing
        ones, one transaction creates them (a push batch naming 200 new patients costs one
        commit, not 200)."""
        wanted = sorted(set(scopes))
        now = self.monotonic()
        missing = [s for s in wanted
                   if (hit := self._active.get(s)) is None or now >= hit[1]]
        if not missing:
            return
        have: set[str] = set()
        with self.engine.connect() as conn:
            for i in range(0, len(missing), 500):
                have.update(r[0] for r in conn.execute(sa.select(DATA_KEYS.c.scope).where(
                    DATA_KEYS.c.scope.in_(missing[i:i + 500]), DATA_KEYS.c.state == "active")))
        todo = [s for s in missing if s not in have]
        if not todo:
            return
        if in_write_transaction.get() and self.engine.dialect.name == "sqlite":
            raise KeyMissing(f"no active data key for {len(todo)} scope(s) inside a write transaction; "
                             "keys are created before the transaction opens")
        made = []
        for scope in todo:
            kid = os.urandom(6).hex()
            _raw, wrapped = self.provider.generate_data_key(context=_context(scope, kid))
            made.append((scope, kid, wrapped))   # loaded back through the provider like any other key
        try:
            self._insert_keys(made)
        except sa.exc.IntegrityError:
            # another process created some of them at the same moment: one per transaction,
            # keeping whichever key won
            for one in made:
                try:
                    self._insert_keys([one])
                except sa.exc.IntegrityError:
                    pass
        with self._lock:
            for scope in todo:
                self._active.pop(scope, None)
                self._in_use.pop(scope, None)

    def _insert_keys(self, made: list[tuple[str, str, bytes]]) -> None:
        with write_transaction(self.engine) as conn:
            for scope, kid, wrapped in made:
                if conn.execute(sa.select(DATA_KEYS.c.kid).where(DATA_KEYS.c.scope == scope,
                                                                  DATA_KEYS.c.state == "active")).first():
                    continue   # another process created it first
                version = conn.execute(sa.select(sa.func.coalesce(sa.func.max(DATA_KEYS.c.version), 0))
                                       .where(DATA_KEYS.c.scope == scope)).scalar_one() + 1
                conn.execute(DATA_KEYS.insert().values(
                    kid=kid, scope=scope, kind=_kind(scope), version=version, state="active", wrapped=wrapped,
                    provider=self.provider_name, created_at=self.clock()))

    # -- what the codec asks for -------------------------------------------------------------
    def _active_key(self, scope: str) -> _Key:
        """The scope's active key: the hot path of every encryption, one dict read (no lock)
        while the cached entry is fresh."""
        hit = self._active.get(scope)
        if hit is not None and self.monotonic() < hit[1]:
            return hit[0]
        key = self._load_active(scope)
        if key is None:
            self.ensure(scope)
            key = self._load_active(scope)
        assert key is not None and key.raw is not None
        return key

    def active(self, scope: str) -> tuple[str, AESGCM]:
        """(key id, cipher) of the scope's active key."""
        key = self._active_key(scope)
        return key.kid, key.aead

    def siv(self, scope: str) -> tuple[str, AESSIV]:
        """(key id, AES-SIV cipher) of the scope's active key."""
        key = self._active_key(scope)
        return key.kid, key.siv

    def hmac_key(self, scope: str) -> bytes:
        return self._active_key(scope).raw

    def material(self, scope: str) -> tuple[str, bytes]:
        """(key id, raw key) of the scope's active key, for a key derived from it (the bundle
        manifests' Ed25519 signing key, transfer/snapshots.py)."""
        key = self._active_key(scope)
        return key.kid, key.raw

    def materials_in_use(self, scope: str) -> list[tuple[str, bytes]]:
        """(key id, raw key) of every key of the scope still in use, newest first."""
        return [(k.kid, k.raw) for k in self._keys_in_use(scope)]

    def mac(self, scope: str, message: bytes) -> bytes:
        """HMAC-SHA256 of `message` under the scope's active key (blind indexes, subject refs)."""
        return self._active_key(scope).mac(message)

    def macs_in_use(self, scope: str, message: bytes) -> list[bytes]:
        """HMAC-SHA256 of `message` under every key of the scope still in use."""
        return [k.mac(message) for k in self._keys_in_use(scope)]

    def _usable(self, kid: str) -> _Key:
        key = self._load_kid(kid)
        if key.raw is None:
            raise KeyShredded(f"data key {kid} was destroyed; the values it protected are gone")
        return key

    def cipher(self, kid: str) -> AESGCM:
        key = self._usable(kid)
        if key.aead is None:
            raise KeyMissing(f"data key {kid} is not an encryption key")
        return key.aead

    def siv_for(self, kid: str) -> AESSIV:
        return self._usable(kid).siv

    def _keys_in_use(self, scope: str) -> list[_Key]:
        with self._lock:
            hit = self._in_use.get(scope)
            if hit is not None and self.monotonic() - hit[1] < self.cache_seconds:
                return hit[0]
        self._active_key(scope)
        with self.engine.connect() as conn:
            kids = [r.kid for r in conn.execute(
                sa.select(DATA_KEYS.c.kid).where(DATA_KEYS.c.scope == scope,
                                                 DATA_KEYS.c.state.in_(("active", "retired")))
                .order_by(DATA_KEYS.c.version.desc()))]
        keys = [k for k in (self._load_kid(kid) for kid in kids) if k.raw is not None]
        with self._lock:
            self._in_use[scope] = (keys, self.monotonic())
        return keys

    def sivs_in_use(self, scope: str) -> list[tuple[str, AESSIV]]:
        return [(k.kid, k.siv) for k in self._keys_in_use(scope)]

    # -- operations (fieldsync keys ...) -----------------------------------------------------
    def scopes(self, prefix: str = "", *, states: tuple[str, ...] = ("active",)) -> list[str]:
        """The scopes starting with `prefix` that hold a key in one of `states`."""
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(
                sa.select(DATA_KEYS.c.scope).distinct().where(
                    DATA_KEYS.c.state.in_(states), DATA_KEYS.c.scope.startswith(prefix, autoescape=True))
                .order_by(DATA_KEYS.c.scope))]

    def rotate(self, scope: str) -> tuple[str | None, str]:
        """Retire the active key of `scope` and make a new one: `(old kid, new kid)`."""
        kid = os.urandom(6).hex()
        _raw, wrapped = self.provider.generate_data_key(context=_context(scope, kid))
        with write_transaction(self.engine) as conn:
            old = conn.execute(sa.select(DATA_KEYS.c.kid, DATA_KEYS.c.version)
                               .where(DATA_KEYS.c.scope == scope, DATA_KEYS.c.state == "active")).first()
            version = conn.execute(sa.select(sa.func.coalesce(sa.func.max(DATA_KEYS.c.version), 0))
                                   .where(DATA_KEYS.c.scope == scope)).scalar_one() + 1
            now = self.clock()
            if old is not None:
                conn.execute(DATA_KEYS.update().where(DATA_KEYS.c.kid == old.kid)
                             .values(state="retired", retired_at=now))
            conn.execute(DATA_KEYS.insert().values(
                kid=kid, scope=scope, kind=_kind(scope), version=version, state="active", wrapped=wrapped,
                provider=self.provider_name, created_at=now))
        self.forget(scope)
        return (old.kid if old is not None else None), kid

    def retired(self, prefix: str = "") -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(
                sa.select(DATA_KEYS.c.kid, DATA_KEYS.c.scope, DATA_KEYS.c.retired_at)
                .where(DATA_KEYS.c.state == "retired", DATA_KEYS.c.scope.startswith(prefix, autoescape=True))
                .order_by(DATA_KEYS.c.scope, DATA_KEYS.c.version)))

    def destroy(self, kids: list[str]) -> int:
        """Erase the wrapped keys `kids` (they no longer decrypt anything); returns how many."""
        if not kids:
            return 0
        with write_transaction(self.engine) as conn:
            n = conn.execute(DATA_KEYS.update().where(DATA_KEYS.c.kid.in_(kids), DATA_KEYS.c.state != "destroyed")
                             .values(state="destroyed", wrapped=None, destroyed_at=self.clock())).rowcount
        with self._lock:
            for kid in kids:
                self._by_kid.pop(kid, None)
            self._active.clear()
            self._in_use.clear()
        return n

    def destroy_scope(self, scope: str) -> list[str]:
        """Crypto-shred: destroy every key of `scope`; returns their ids."""
        with self.engine.connect() as conn:
            kids = [r[0] for r in conn.execute(sa.select(DATA_KEYS.c.kid).where(
                DATA_KEYS.c.scope == scope, DATA_KEYS.c.state != "destroyed"))]
        self.destroy(kids)
        return kids

    def forget(self, scope: str | None = None) -> None:
        """Drop cached state (all of it without `scope`): the next use re-reads the database."""
        with self._lock:
            if scope is None:
                self._active.clear()
                self._in_use.clear()
                for key in self._by_kid.values():
                    key.checked = float("-inf")
            else:
                self._active.pop(scope, None)
                self._in_use.pop(scope, None)

    def describe(self) -> Iterator[dict[str, Any]]:
        """Every key without its material, for `fieldsync keys list`."""
        with self.engine.connect() as conn:
            for r in conn.execute(sa.select(DATA_KEYS.c.kid, DATA_KEYS.c.scope, DATA_KEYS.c.version, DATA_KEYS.c.state,
                                            DATA_KEYS.c.provider, DATA_KEYS.c.created_at, DATA_KEYS.c.retired_at,
                                            DATA_KEYS.c.destroyed_at).order_by(DATA_KEYS.c.scope, DATA_KEYS.c.version)):
                yield dict(r._mapping)


def prepare_keys(keyring: KeyRing, model) -> None:
    """Create the entity, blind-index and subject-reference keys `model` needs (at server start
    and when the model changes: outside any write transaction)."""
    needed = False
    for entity in model.entities:
        if entity.has_encrypted:
            needed = True
            keyring.ensure(f"entity:{entity.name}")
            if any(f.encryption == "blind_index" for f in entity.fields):
                keyring.ensure(f"index:{entity.name}")
    if needed:
        keyring.ensure("subject-ref")


def crypto_from_config(config, engine: sa.Engine, *, model=None, clock=None):
    """The FieldCrypto of a server or CLI process: the configured key provider (`KEY_PROVIDER`),
    the key tables created, and the keys `model` needs made."""
    from fieldsync.crypto.fields import FieldCrypto
    from fieldsync.crypto.providers import key_provider_from_config

    create_key_tables(engine)
    keyring = KeyRing(engine, key_provider_from_config(config),
                      provider_name=str(config.get("KEY_PROVIDER") or "local"),
                      cache_seconds=float(config.get("KEY_CACHE_SECONDS", 5.0)),
                      retire_grace_seconds=(float(config["KEY_RETIRE_GRACE_SECONDS"])
                                            if config.get("KEY_RETIRE_GRACE_SECONDS") is not None else None),
                      clock=clock)
    if model is not None:
        prepare_keys(keyring, model)
    return FieldCrypto(keyring)
