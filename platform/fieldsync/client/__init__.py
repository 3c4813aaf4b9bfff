"""fieldsync.client: the Python device SDK (protocol v1, docs/protocol.md, docs/sync-design.md).

    from fieldsync.client import Client, HttpTransport

    client = Client("device.db", HttpTransport("https://fieldsync.example:8443"), token=get_token,
                    schema=json.load(open("generated/device/schema.json")),
                    install_info={"platform": "android 14", "app_version": "2.3.0"})
    visit_id = client.insert("visit", {...})     # offline, instant
    report = client.sync()                       # push, pull, settle, ack
    client.start(interval=300)                   # or keep syncing in the background

Everything else in this package is private.
"""

from fieldsync.client.client import Client
from fieldsync.client.errors import (ClientError, DeviceRevoked, ProtocolError, SchemaTooNew, ServerUnavailable,
                                     TransportError, ValidationError)
from fieldsync.client.reports import QuarantinedMutation, Status, SyncReport
from fieldsync.client.transport import HttpTransport, WsgiTransport

__all__ = [
    "Client", "HttpTransport", "WsgiTransport", "SyncReport", "Status", "QuarantinedMutation",
    "ClientError", "TransportError", "ServerUnavailable", "SchemaTooNew", "DeviceRevoked",
    "ProtocolError", "ValidationError",
]
