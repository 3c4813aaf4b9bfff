"""The errors of the device SDK, all under `fieldsync.errors.Error`.

    fieldsync.errors.Error
     +-- ClientError              base of everything the SDK raises on purpose
          +-- TransportError      no answer: network error, timeout, a response cut short.
          |    |                  Nothing is known; outbox entries stay `sent` and are resent
          |    |                  with the same seqs next time.
          |    +-- ServerUnavailable   the server answered 408/429/5xx (`retry_after` when given)
          |    +-- PinMismatch    the server's TLS key is not one of the pinned keys; the
          |                       connection was closed before anything was sent
          +-- SchemaTooNew        the device's schema is newer than the server's; nothing was
          |                       sent, everything is kept; retry later with a long backoff
          +-- DeviceRevoked       an admin revoked this device; its data and outbox stay
          +-- ProtocolError       an unexpected 4xx answer (`status`, `problem`, `name`)
          +-- ValidationError     a local write was refused (`problems`: field and reason);
          |                       also a fieldsync.errors.ValidationFailed
          +-- StoreLocked         the device store is encrypted and no key was given, or its
               |                  key header (`<store>.header`) is missing
               +-- WrongStoreKey  the store does not open with the key given (wrong device
                                  secret or PIN); nothing was read or changed

A mutation the server refuses is not an exception: it is quarantined (`Client.quarantined()`).
"""

from __future__ import annotations

from typing import Any, Mapping

from fieldsync.errors import Error, ValidationFailed


class ClientError(Error):
    """Base class of the SDK's errors."""


class TransportError(ClientError):
    """The request got no (complete) answer; retrying it is safe."""

    retry_after: float | None = None


class ServerUnavailable(TransportError):
    """The server answered but cannot serve now (408, 429, 5xx)."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None,
                 problem: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.problem = dict(problem or {})


class PinMismatch(TransportError):
    """The server's certificate verified, but its public key is not one of the pinned keys
    (`host`, `presented` pin, `expected` pins). Nothing was sent on that connection. Retried
    like any transport failure; tell the user when it persists (an interception, or a server
    moved to a key the app does not pin)."""

    def __init__(self, host: str, presented: str | None, expected: tuple[str, ...]):
        self.host = host
        self.presented = presented
        self.expected = tuple(expected)
        shown = presented or "no certificate"
        super().__init__(f"{host}: the server's public key pin {shown} is not one of the pinned keys "
                         f"({', '.join(self.expected)}); the connection was closed before anything was sent")


class ProtocolError(ClientError):
    """An answer the SDK cannot recover from by itself (a client bug or an admin decision)."""

    def __init__(self, status: int, problem: Mapping[str, Any] | None, message: str | None = None):
        self.status = status
        self.problem = dict(problem or {})
        self.name = problem_name(self.problem)
        detail = self.problem.get("detail") or self.problem.get("title") or ""
        super().__init__(message or f"HTTP {status} {self.name}: {detail}".rstrip(": "))


class SchemaTooNew(ClientError):
    """The server speaks an older schema than this device; sync waits for the server upgrade."""

    def __init__(self, server_version: int | None, device_version: int):
        super().__init__(f"the device schema (version {device_version}) is newer than the "
                         f"server's ({server_version}); the outbox is kept until the server is upgraded")
        self.server_version = server_version
        self.device_version = device_version
        self.retry_after: float | None = None


class DeviceRevoked(ClientError):
    """An admin revoked this device; it no longer syncs. Local data and the outbox are kept."""


class ValidationError(ClientError, ValidationFailed):
    """A local write was refused before anything was stored; `problems` names field and reason."""

    def __init__(self, entity: str, problems):
        problems = list(problems)
        text = "; ".join(f"{p.field or entity}: {p.reason}" for p in problems)
        ValidationFailed.__init__(self, problems, f"{entity}: {text}")
        self.entity = entity


class StoreLocked(ClientError):
    """The device store cannot be opened: it is encrypted and no usable key was given."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path


class WrongStoreKey(StoreLocked):
    """The store at `path` does not open with the key given (wrong device secret or PIN)."""


def problem_name(problem: Mapping[str, Any] | None) -> str:
    """The stable name of a problem type (`.../problems/sync-reset` -> `sync-reset`)."""
    kind = (problem or {}).get("type") or ""
    return kind.rsplit("/", 1)[-1] if isinstance(kind, str) else ""
