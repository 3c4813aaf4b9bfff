"""Field-level encryption driven by the definitions (invariant 7).

Every encrypted field is stored as text carrying its mode and key id:

- `encrypt`:       `e1.<kid>.<base64(nonce || AES-256-GCM ciphertext)>`, a random 96-bit nonce;
                   the associated data binds entity, record id, field and key id, so a ciphertext
                   moved to another row or another field does not decrypt.
- `deterministic`: `d1.<kid>.<base64(AES-256-SIV ciphertext)>`, bound to entity, field and key
                   id (not the record: equal values must give equal ciphertexts for lookups).
- `blind_index`:   stored like `encrypt`, plus a keyed HMAC of the normalised value in the column
                   `fs_bidx_<field>` (see `blind_index`), which equality searches compare.

Keys (see `crypto/keyring.py`): one data key per entity, one per subject where the
definition names one (`encryption.subject`, e.g. the prescription's patient), one HMAC key per
entity for blind indexes, and one global key for subject references. The subject field itself
is encrypted under the entity key (it is what finds the subject's key); every other encrypted
field of a record with a subject uses that subject's key, so shredding the subject's key makes
exactly that patient's values unreadable.

The plaintext inside a ciphertext is the wire value with a one-byte type tag (`s` a string,
`j` anything else as JSON), so a value decrypts to the same wire value that was written.
"""

from __future__ import annotations

import binascii
import json
import os
from typing import Any, Iterable

from cryptography.exceptions import InvalidTag

from fieldsync.defs.model import Entity, Field
from fieldsync.errors import IntegrityFailure, KeyShredded
from fieldsync.store.tables import normalise_for_index

__all__ = ["FieldCrypto", "IntegrityFailure", "KeyShredded", "ciphertext_key_id"]

_RANDOM = "e1"
_DETERMINISTIC = "d1"
_SEP = "\x1f"


def ciphertext_key_id(stored: str) -> str | None:
    """The key id a stored ciphertext names (None for anything that is not one)."""
    if isinstance(stored, str) and len(stored) > 4 and stored[2] == "." and stored[:2] in (_RANDOM, _DETERMINISTIC):
        end = stored.find(".", 3)
        if end > 3:
            return stored[3:end]
    return None


def _pack(value: Any) -> bytes:
    if type(value) is str:
        return b"s" + value.encode()
    return b"j" + json.dumps(value, separators=(",", ":")).encode()


def _unpack(data: bytes) -> Any:
    if data[:1] == b"s":
        return data[1:].decode()
    return json.loads(data[1:])


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _unb64(text: str) -> bytes:
    return binascii.a2b_base64(text, strict_mode=True)


def _integrity(entity: Entity, field: Field, record_id: str | None, what: str) -> IntegrityFailure:
    where = f"{entity.name}.{field.name}" + (f" of record {record_id}" if record_id else "")
    return IntegrityFailure(f"the stored value of {where} {what}")


class FieldCrypto:
    """The codec of a RecordStore: encodes wire values of encrypted fields into their stored
    text and back, computes blind indexes and subject references.

    `keyring` is a `fieldsync.crypto.keyring.KeyRing`.
    """

    def __init__(self, keyring) -> None:
        self.keyring = keyring
        self._subject_scopes: dict[str, dict[Any, str]] = {}   # entity -> subject value -> scope

    # -- scopes ------------------------------------------------------------------------------
    @staticmethod
    def entity_scope(entity: Entity) -> str:
        return f"entity:{entity.name}"

    @staticmethod
    def index_scope(entity: Entity) -> str:
        return f"index:{entity.name}"

    def subject_scope(self, entity: Entity, subject_value: Any) -> str:
        cache = self._subject_scopes.get(entity.name)
        if cache is None:
            cache = self._subject_scopes.setdefault(entity.name, {})
        scope = cache.get(subject_value) if isinstance(subject_value, (str, int)) else None
        if scope is None:
            scope = f"subject:{entity.name}:{self.subject_ref(subject_value)}"
            if isinstance(subject_value, (str, int)):
                if len(cache) > 100_000:
                    cache.clear()   # a bound, not an LRU: refilled on demand
                cache[subject_value] = scope
        return scope

    # -- subjects ----------------------------------------------------------------------------
    def subject_ref(self, value: Any) -> str:
        """A keyed reference to a data subject (e.g. a patient id): the same value gives the
        same reference in every entity and in the audit log, and reveals nothing without the
        key. Never the value itself."""
        return "sr_" + self.keyring.mac("subject-ref", normalise_for_index(value))[:16].hex()

    def ensure_subjects(self, entity: Entity, values: Iterable[Any]) -> None:
        """Make sure each subject in `values` has an active data key. Called before a write
        transaction opens (a key is created in its own committed transaction, so a write that
        later fails leaves at most an unused key, never a ciphertext without its key)."""
        if entity.subject is None:
            return
        self.keyring.ensure_many([self.subject_scope(entity, v) for v in values if v is not None])

    # -- encode / decode ---------------------------------------------------------------------
    def encode(self, entity: Entity, field: Field, value: Any, record_id: str | None = None,
               subject: Any = None) -> str:
        """The stored text of `value` (a wire value) for `field` of record `record_id`, whose
        subject (when the entity names one) is `subject`."""
        if field.encryption == "deterministic":
            kid, siv = self.keyring.siv(self.entity_scope(entity))
            ad = f"{entity.name}{_SEP}{field.name}{_SEP}{kid}".encode()
            return f"{_DETERMINISTIC}.{kid}.{_b64(siv.encrypt(_pack(value), [ad]))}"
        if record_id is None:
            raise ValueError(f"{entity.name}.{field.name} is encrypted per record: the record id is required")
        if subject is not None and entity.subject is not None and field.name != entity.subject:
            scope = self.subject_scope(entity, subject)
        else:
            scope = "entity:" + entity.name
        kid, aead = self.keyring.active(scope)
        nonce = os.urandom(12)   # a fresh random nonce per value (one getrandom call)
        ad = f"{entity.name}\x1f{record_id}\x1f{field.name}\x1f{kid}".encode()
        return f"e1.{kid}.{_b64(nonce + aead.encrypt(nonce, _pack(value), ad))}"

    def decode(self, entity: Entity, field: Field, stored: str, record_id: str | None = None) -> Any:
        """The wire value of a stored ciphertext; IntegrityFailure when it does not decrypt
        (altered, or moved from another row or field), KeyShredded when its key was destroyed."""
        parts = stored.split(".", 2) if isinstance(stored, str) else ()
        if len(parts) != 3 or parts[0] not in (_RANDOM, _DETERMINISTIC) or not parts[1]:
            raise _integrity(entity, field, record_id, "is not a fieldsync ciphertext")
        mode, kid, body = parts
        try:
            data = _unb64(body)
        except (binascii.Error, ValueError):
            raise _integrity(entity, field, record_id, "is damaged") from None
        try:
            if mode == _DETERMINISTIC:
                if field.encryption != "deterministic":
                    raise InvalidTag()
                siv = self.keyring.siv_for(kid)
                ad = f"{entity.name}{_SEP}{field.name}{_SEP}{kid}".encode()
                return _unpack(siv.decrypt(data, [ad]))
            if field.encryption == "deterministic" or record_id is None:
                raise InvalidTag()
            aead = self.keyring.cipher(kid)
            ad = f"{entity.name}\x1f{record_id}\x1f{field.name}\x1f{kid}".encode()
            return _unpack(aead.decrypt(data[:12], data[12:], ad))
        except InvalidTag:
            raise _integrity(entity, field, record_id, "does not decrypt: it was altered, or moved from "
                                                       "another record or field") from None

    def lookup_values(self, entity: Entity, field: Field, value: Any) -> list[str]:
        """Every stored form `value` may have in a deterministic column: one per key of the
        entity still in use (during a rotation rows hold the old key's ciphertexts too)."""
        out = []
        for kid, siv in self.keyring.sivs_in_use(self.entity_scope(entity)):
            ad = f"{entity.name}{_SEP}{field.name}{_SEP}{kid}".encode()
            out.append(f"{_DETERMINISTIC}.{kid}.{_b64(siv.encrypt(_pack(value), [ad]))}")
        return out

    def blind_index(self, entity: Entity, field: Field, value: Any) -> str:
        """The blind index of `value` (keyed HMAC-SHA256, 128 bits, hex) for equality search."""
        msg = field.name.encode() + b"\x1f" + normalise_for_index(value)
        return self.keyring.mac("index:" + entity.name, msg)[:16].hex()

    def blind_indexes(self, entity: Entity, field: Field, value: Any) -> list[str]:
        """Every blind index `value` may have (one per index key still in use)."""
        msg = field.name.encode() + b"\x1f" + normalise_for_index(value)
        return [mac[:16].hex() for mac in self.keyring.macs_in_use(self.index_scope(entity), msg)]
