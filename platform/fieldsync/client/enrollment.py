"""`enroll()`: the one online step before an encrypted device store exists.

The store's key is derived from a device secret the server issues at registration, so the
device must register before its store can be created: `enroll()` registers the install (asking
for its secret), writes the store's clear header next to the store path and returns the
secret for the app to keep in the OS keystore. From then on `Client(path, ...,
store_key=StoreKey(secret, pin))` opens the store offline. Enrolling again on the same install
(a re-login after the keystore was wiped) registers the same install id and gets the same
secret back: the server keeps it, wrapped by its key provider (docs/device-store.md).
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from fieldsync.errors import ProtocolError, StoreLocked
from fieldsync.client.outbox import new_install_id
from fieldsync.client.schema import DeviceSchema
from fieldsync.client.store_cipher import store_kind
from fieldsync.client.store_key import SCRYPT_N, SECRET_BYTES, StoreHeader, StoreKey
from fieldsync.client.transport import Transport
from fieldsync.client.wire import TokenSource, Wire


@dataclass(frozen=True)
class Enrollment:
    """What `enroll()` returns. Keep `device_secret` in the OS keystore (Android Keystore,
    iOS Keychain); `device_id` and `install_id` are also in the store header."""

    device_id: str
    install_id: str
    user_id: str | None
    device_secret: bytes = field(repr=False)

    def store_key(self, pin: str | None = None) -> "StoreKey":
        """The `StoreKey` of this enrolment, with the user's PIN when the app sets one."""
        return StoreKey(self.device_secret, pin)


def enroll(path: str | Path, transport: Transport, token: TokenSource, *,
           schema: Mapping[str, Any] | None = None, install_info: Mapping[str, Any] | None = None,
           scrypt_n: int = SCRYPT_N) -> Enrollment:
    """Register the device whose store is (or will be) at `path` and get its device secret.

    Online, once per install. Reuses the install id of the store header, or of an existing
    plain store (an app that starts encrypting its store), so the server answers with the
    same device and the same secret; otherwise makes a new install id. Writes the header
    (device id, install id, PIN salt) when there is none; an existing header is never
    changed, since its salt is part of the store's key. `schema` is the device schema the
    app passes to `Client` (its version is registered); `scrypt_n` the PIN's scrypt cost.
    Raises the SDK's transport and protocol errors; `DeviceRevoked` for a revoked device.
    """
    path = str(path)
    header = StoreHeader.read(path)
    kind = store_kind(path)
    if header is None and kind == "encrypted":
        raise StoreLocked(path, f"the store at {path} is encrypted but its header {StoreHeader.path_for(path)} "
                                "is missing: without the header's salt the store's key cannot be derived")
    plain = _plain_state(path) if kind == "plain" else {}
    install_id = header.install_id if header is not None else (plain.get("install_id") or new_install_id())
    version = 0
    wire = Wire(transport, token, device_version=lambda: version)
    if schema is not None:
        version = DeviceSchema(schema).version
    elif plain.get("schema_version") is not None:
        version = int(plain["schema_version"])
    else:
        version = int(wire.call("GET", "/capabilities")["schema_version"])
    body: dict[str, Any] = {"install_id": install_id, "schema_version": version, "issue_secret": True}
    for key in ("platform", "app_version"):
        if (install_info or {}).get(key) is not None:
            body[key] = install_info[key]
    answer = wire.call("POST", "/devices", body)
    secret = _secret(answer)
    if header is None:
        StoreHeader.new(str(answer["device_id"]), install_id, scrypt_n=scrypt_n).write(path)
    return Enrollment(device_id=str(answer["device_id"]), install_id=install_id, user_id=answer.get("user_id"),
                      device_secret=secret)


def _secret(answer: Mapping[str, Any]) -> bytes:
    encoded = answer.get("device_secret")
    try:
        secret = base64.b64decode(encoded, validate=True) if isinstance(encoded, str) else b""
    except (binascii.Error, ValueError):
        secret = b""
    if len(secret) != SECRET_BYTES:
        raise ProtocolError(200, {"detail": "the registration answer has no valid device_secret "
                                            f"({SECRET_BYTES} bytes, base64); is the server older than this SDK?"})
    return secret


def _plain_state(path: str) -> dict[str, Any]:
    """The install id and schema version of an existing plain store (read only)."""
    conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        out: dict[str, Any] = {}
        if "_sync_state" in tables:
            row = conn.execute('SELECT value FROM "_sync_state" WHERE key = ?', ("install_id",)).fetchone()
            if row is not None and row[0] is not None:
                out["install_id"] = json.loads(row[0])
        if "_meta" in tables:
            row = conn.execute('SELECT value FROM "_meta" WHERE key = ?', ("schema_version",)).fetchone()
            if row is not None:
                out["schema_version"] = int(row[0])
        return out
    finally:
        conn.close()
