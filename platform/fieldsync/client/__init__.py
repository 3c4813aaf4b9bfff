"""fieldsync.client: the Python device SDK (protocol v1, docs/protocol.md, docs/sync-design.md).

    from fieldsync.client import Client, HttpTransport

    client = Client("device.db", HttpTransport("https://fieldsync.example:8443"), token=get_token,
                    schema=json.load(open("generated/device/schema.json")),
                    install_info={"platform": "android 14", "app_version": "2.3.0"})
    visit_id = client.insert("visit", {...})     # offline, instant
    report = client.sync()                       # push, pull, settle, ack
    for lost in client.conflicts():              # writes another writer's values beat
        ...
    client.status().fully_synced                 # every write settled, cursor at the head
    client.start(interval=300)                   # or keep syncing in the background

An app that holds PHI encrypts its store (docs/device-store.md): once, online,
`enrollment = enroll("device.db", transport, token, schema=...)` registers the device and
returns its device secret for the OS keystore; then `Client(..., store_key=StoreKey(secret,
pin))` opens the store with SQLCipher, offline, and `client.rekey(StoreKey(secret, new_pin))`
changes the PIN.

Resumable uploads (media, large outbox bundles): `TusClient(wire).upload(path, metadata,
resume_url=url)` over the same transport and tokens (docs/protocol.md "Transfer").

Everything else in this package is private.
"""

from fieldsync.client.client import Client
from fieldsync.client.enrollment import Enrollment, enroll
from fieldsync.errors import (ClientError, DeviceRevoked, PinMismatch, ProtocolError, SchemaTooNew,
                              ServerUnavailable, StoreLocked, TransportError, UploadGone, ValidationError,
                              WrongStoreKey)
from fieldsync.client.reports import Conflict, QuarantinedMutation, Status, SyncReport
from fieldsync.client.store_key import StoreKey
from fieldsync.client.transport import HttpTransport, WsgiTransport
from fieldsync.client.bundles import BundleProgress
from fieldsync.client.tus import TusClient

__all__ = [
    "Client", "HttpTransport", "WsgiTransport", "SyncReport", "Status", "QuarantinedMutation", "Conflict",
    "ClientError", "TransportError", "ServerUnavailable", "SchemaTooNew", "DeviceRevoked",
    "ProtocolError", "ValidationError", "PinMismatch",
    "enroll", "Enrollment", "StoreKey", "StoreLocked", "WrongStoreKey", "BundleProgress",
    "TusClient", "UploadGone",
]
