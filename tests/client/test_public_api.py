"""The SDK's public surface is what it means to be (STYLE.md 5), and its errors are one tree
under fieldsync.errors.Error (STYLE.md 6)."""

from __future__ import annotations

import fieldsync.client as client_module
from fieldsync.client import (ClientError, DeviceRevoked, PinMismatch, ProtocolError, SchemaTooNew,
                              ServerUnavailable, StoreLocked, TransportError, ValidationError, WrongStoreKey)
from fieldsync.errors import Error, ValidationFailed


def test_all_lists_exactly_the_public_names():
    assert sorted(client_module.__all__) == sorted([
        "Client", "HttpTransport", "WsgiTransport", "SyncReport", "Status", "QuarantinedMutation", "Conflict",
        "ClientError", "TransportError", "ServerUnavailable", "SchemaTooNew", "DeviceRevoked",
        "ProtocolError", "ValidationError", "PinMismatch", "enroll", "Enrollment", "StoreKey", "StoreLocked", "WrongStoreKey",
        "BundleProgress", "TusClient", "UploadGone"])
    for name in client_module.__all__:   # the SDK's errors are defined in the one tree, fieldsync.errors
        assert getattr(client_module, name).__module__.startswith(("fieldsync.client.", "fieldsync.errors"))


def test_errors_form_one_tree_under_fieldsync_error():
    for error in (TransportError, ServerUnavailable, SchemaTooNew, DeviceRevoked, ProtocolError, ValidationError,
                  StoreLocked, WrongStoreKey):
        assert issubclass(error, ClientError)
    assert issubclass(WrongStoreKey, StoreLocked)          # both: this client cannot open the store
    assert issubclass(ClientError, Error)
    assert issubclass(ServerUnavailable, TransportError)   # retryable like a network error
    assert issubclass(PinMismatch, TransportError)          # nothing was sent; retried with backoff
    assert issubclass(ValidationError, ValidationFailed)   # same .problems as every write path


def test_protocol_error_names_the_problem_type():
    error = ProtocolError(410, {"type": "https://fieldsync.dev/problems/sync-reset", "detail": "too old"})
    assert error.name == "sync-reset" and error.status == 410 and error.problem["detail"] == "too old"
    assert "sync-reset" in str(error)
