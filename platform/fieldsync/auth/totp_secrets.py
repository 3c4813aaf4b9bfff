"""TOTP secrets at rest: each user's second-factor secret (auth/totp.py) is stored in
`fs_users.totp_secret` sealed, never in clear (docs/access.md, "Users and login").

* *Decision:* the key is the platform key ring's (crypto/keyring.py) data key of the scope
  `directory:totp`, wrapped by the key provider (the local master key file or AWS KMS) like the
  field-encryption keys: a copy of the database alone, without the key provider, holds no usable
  second factor. Every caller of the directory reaches the key ring (the server's
  `state.crypto.keyring`, the CLI's `crypto_from_config`), so nothing is derived from the
  server secret. The scope is none of `fieldsync keys rotate`'s (entity scopes only), so a
  rotation pass never retires nor destroys it.
* Stored form: `t1.<kid>.<base64(nonce || AES-256-GCM ciphertext)>`, a random 96-bit nonce; the
  associated data binds the user id and the key id, so a sealed secret copied into another user's
  row does not decrypt (that login is refused as `totp_invalid`, never a 500).
* Rows written before this change hold the base32 text itself (no `.` in it, so the two forms
  never mix up). They are sealed at server start (`seal_plaintext_secrets`, called by
  `create_app`) and, for a row that pass missed (written by an older server during a rolling
  upgrade, a restored backup), on that user's next successful login: such a user is never locked
  out. Each sealing is a compare-and-set on the plaintext, so servers starting together do not
  seal twice.
* Neither the secret nor its sealed form is ever logged or audited: a failure names the user only.
"""

from __future__ import annotations

import binascii
import logging
import os

import sqlalchemy as sa
from cryptography.exceptions import InvalidTag

from fieldsync.crypto.keyring import KeyRing
from fieldsync.errors import KeyMissing, KeyShredded, SecretUnreadable
from fieldsync.store.directory import USERS
from fieldsync.store.engine import write_transaction

__all__ = ["SCOPE", "SecretUnreadable", "is_sealed", "open_secret", "reseal", "seal_plaintext_secrets", "seal_secret"]

log = logging.getLogger("fieldsync.auth")

SCOPE = "directory:totp"
_FORM = "t1"
_SEP = b"\x1f"


def is_sealed(stored: str) -> bool:
    """True for the sealed form; False for a base32 secret stored before secrets were sealed."""
    return stored.startswith(_FORM + ".")


def _associated(user_id: str, kid: str) -> bytes:
    return b"fieldsync totp" + _SEP + user_id.encode() + _SEP + kid.encode()


def seal_secret(keyring: KeyRing, user_id: str, secret: str) -> str:
    """The stored form of `secret` for `user_id`. Creates the scope's key when there is none, so
    call it before opening a write transaction (SQLite: keys are made outside one)."""
    kid, aead = keyring.active(SCOPE)
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, secret.encode(), _associated(user_id, kid))
    return f"{_FORM}.{kid}.{binascii.b2a_base64(nonce + sealed, newline=False).decode('ascii')}"


def open_secret(keyring: KeyRing, user_id: str, stored: str) -> str:
    """The base32 secret of `user_id` from its stored form (sealed, or a plaintext row of before:
    returned as it is, for the caller to seal). SecretUnreadable when it does not open."""
    if not is_sealed(stored):
        return stored
    try:
        _form, kid, body = stored.split(".", 2)
        data = binascii.a2b_base64(body, strict_mode=True)
        plain = keyring.cipher(kid).decrypt(data[:12], data[12:], _associated(user_id, kid))
        return plain.decode()
    except (ValueError, binascii.Error, InvalidTag, UnicodeDecodeError, KeyMissing, KeyShredded) as exc:
        raise SecretUnreadable(f"the stored second factor of user {user_id} does not open "
                               f"({type(exc).__name__}): altered, moved from another user, or its key destroyed; "
                               "enrol a new one (`fieldsync users set USER --totp`)") from None


def reseal(conn: sa.Connection, user_id: str, plaintext: str, sealed: str) -> bool:
    """Replace the plaintext row's secret with `sealed`, only if it still holds `plaintext`."""
    return conn.execute(USERS.update().where(USERS.c.user_id == user_id, USERS.c.totp_secret == plaintext)
                        .values(totp_secret=sealed)).rowcount == 1


def seal_plaintext_secrets(engine: sa.Engine, keyring: KeyRing) -> int:
    """Seal every TOTP secret still stored in clear (a database from before secrets were sealed);
    returns how many. Safe to run again and from several processes at once."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(USERS.c.user_id, USERS.c.totp_secret)
                            .where(USERS.c.totp_secret.is_not(None))).all()
    plain = [(user_id, stored) for user_id, stored in rows if not is_sealed(stored)]
    if not plain:
        return 0
    sealed = [(user_id, stored, seal_secret(keyring, user_id, stored)) for user_id, stored in plain]
    done = 0
    with write_transaction(engine) as conn:
        for user_id, stored, new in sealed:
            done += reseal(conn, user_id, stored, new)
    log.info("sealed the plaintext TOTP secrets of %d user(s) under the key ring (scope %s)", done, SCOPE)
    return done
