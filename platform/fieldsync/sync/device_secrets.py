"""Device secrets: the random 32 bytes a device derives its encrypted store's key from
(docs/device-store.md). Issued at registration when the device asks (`issue_secret`), kept
by the server wrapped by the key provider, and issued again to the same device — the same
user on the same install, and only while the device is not revoked — so a user who signs in
again after the app's keystore was wiped can still open the store and its unsynced outbox.

The secret is a data key of the key provider: `generate_data_key` gives the random secret
and its wrapped form in one call (KMS included), bound to the device id by the encryption
context. The database holds only the wrapped form (invariant 7).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from fieldsync.crypto.keys import KeyProvider
from fieldsync.store.sync_tables import DEVICE_SECRETS

__all__ = ["DeviceSecrets"]

PURPOSE = "device-store-secret"


class DeviceSecrets:
    """Issues and re-issues device secrets through one key provider."""

    def __init__(self, keys: KeyProvider):
        self.keys = keys

    @staticmethod
    def context(device_id: str) -> dict[str, str]:
        """The encryption context of a device's wrapped secret: references only, never PHI."""
        return {"purpose": PURPOSE, "device_id": device_id}

    def issue(self, conn: sa.Connection, device_id: str, now: dt.datetime) -> tuple[bytes, bool]:
        """The device's secret inside the caller's write transaction, made on first issue:
        `(secret, first)`. A wrapped secret that does not unwrap raises KeyUnavailable."""
        row = conn.execute(sa.select(DEVICE_SECRETS.c.wrapped)
                           .where(DEVICE_SECRETS.c.device_id == device_id)).first()
        if row is not None:
            return self.keys.decrypt_data_key(bytes(row.wrapped), context=self.context(device_id)), False
        secret, wrapped = self.keys.generate_data_key(context=self.context(device_id))
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        # two registrations of one install at once: the first insert wins, both answer its secret
        inserted = conn.execute(insert(DEVICE_SECRETS).on_conflict_do_nothing().values(
            device_id=device_id, wrapped=wrapped, issued_at=now)).rowcount
        if inserted:
            return secret, True
        return self.issue(conn, device_id, now)
