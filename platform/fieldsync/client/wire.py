"""The sync endpoints as function calls: JSON bodies, the protocol headers, the bearer token,
and problem answers turned into the SDK's errors (protocol §2.5).

A token callable is asked on every request, and once more after a 401 before the request is
repeated (a 401 is never a data error). Once the device is registered the requests carry its
device token instead (`device_token`, issued at registration and bound to the device), so sync
goes on while the user's own token is idle or expired; a device token the server refuses
(idle, expired) is dropped and the request repeated with the user's token, one refused with
reason `revoked` raises `DeviceRevoked` (docs/access.md). 408, 429 and 5xx become `ServerUnavailable` (with `Retry-After` as `retry_after`),
403 `device-revoked` `DeviceRevoked`, 409 `schema-too-new` `SchemaTooNew`; every other 4xx is
a `ProtocolError` whose `name` the sync engine switches on (`sync-reset`, `unknown-device`, ...).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import json
import time
from typing import Any, Callable, Mapping

from fieldsync.client.clock_offset import ClockOffset
from fieldsync.errors import (DeviceRevoked, ProblemType, ProtocolError, SchemaTooNew, ServerUnavailable,
                              TransportError, problem_name)
from fieldsync.client.transport import Transport
from fieldsync import json_wire

PROTOCOL_VERSION = 1
SYNC_PREFIX = "/api/v1/sync"

TokenSource = str | Callable[[], str]


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _problem_member(data: bytes, name: str) -> Any:
    try:
        document = json.loads(data) if data else None
    except ValueError:
        return None
    return document.get(name) if isinstance(document, dict) else None


class Wire:
    """Requests to one server with one device's credentials."""

    def __init__(self, transport: Transport, token: TokenSource, *, device_version: Callable[[], int],
                 clock: Callable[[], dt.datetime] | None = None):
        self.transport = transport
        self.clock = clock
        self.clock_offset = ClockOffset()   # sampled on every answer (protocol §8.1)
        self._token_source = token
        self._device_version = device_version
        self.device_token: str | None = None   # set by the sync engine from the store after registering
        self.on_device_token_refused: Callable[[], None] | None = None
        self.last_user_token: str | None = None   # the user token of the latest request that sent one

    def _token(self) -> str:
        # a callable is asked on every request, so a token the app renewed (a new territory,
        # a new role) is used at once; it should answer from the app's cache
        return self._token_source if isinstance(self._token_source, str) else self._token_source()

    def user_token_fingerprint(self, token: str | None = None) -> str:
        """A short hash of `token` (default: the user's current one), to remember which user
        token a device token was issued from without keeping the token."""
        return hashlib.sha256((token if token is not None else self._token()).encode()).hexdigest()[:16]

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
             user_token: bool = False) -> dict[str, Any]:
        """One request; the answer's JSON body, or the SDK error the answer means.

        `user_token` sends the user's token even when a device token is set (registration)."""
        payload = None if body is None else json_wire.dumps_bytes(body)
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        status, answer_headers, data = self.exchange(method, SYNC_PREFIX + path, headers, payload,
                                                     user_token=user_token)
        return self._interpret(status, answer_headers, data, method, path)

    def exchange(self, method: str, path: str, headers: Mapping[str, str], body: bytes | None, *,
                 user_token: bool = False) -> tuple[int, dict[str, str], bytes]:
        """One authenticated request with raw bytes to any path of the server (the tus client's
        uploads): the bearer token (the device token when set, renewed after a 401 as `call`
        does), the protocol header and the clock offset sample; the answer as the transport gave it."""
        retried = False
        while True:
            device_token = None if user_token else self.device_token
            if device_token is None:
                self.last_user_token = self._token()
            sent_headers = {**headers, "Authorization": f"Bearer {device_token or self.last_user_token}",
                            "Fieldsync-Protocol": str(PROTOCOL_VERSION)}
            sent = self.clock() if self.clock is not None else None
            status, answer_headers, data = self.transport.request(method, path, headers=sent_headers, body=body)
            if sent is not None and self.clock is not None:
                self.clock_offset.observe(sent, self.clock(), answer_headers.get("fieldsync-server-time"))
            if status == 401 and device_token is not None:
                if _problem_member(data, "reason") == "revoked":
                    raise DeviceRevoked("an administrator revoked this device; its token is refused")
                self.device_token = None   # idle or expired: sync on with the user's token
                if self.on_device_token_refused is not None:
                    self.on_device_token_refused()
                continue
            if status == 401 and not retried and not isinstance(self._token_source, str):
                retried = True  # never a data error: ask for a fresh token, once
                continue
            return status, answer_headers, data

    def fetch_range(self, path: str, first: int, last: int) -> bytes:
        """Bytes `first`..`last` (inclusive) of a sync resource (a snapshot bundle) by HTTP
        Range, with the device's credentials; exactly that many bytes, or an SDK error."""
        if not path.startswith(SYNC_PREFIX + "/"):
            raise ProtocolError(200, {"detail": f"a bundle URL outside the sync API: {path[:100]!r}"})
        status, answer_headers, data = self.exchange("GET", path, {"Range": f"bytes={first}-{last}"}, None)
        path = path[len(SYNC_PREFIX):]
        if status == 200:      # a server that ignores Range sends it all: take the part asked for
            data = data[first:last + 1]
        elif status != 206:
            self._interpret(status, answer_headers, data, "GET", path)
            raise TransportError(f"GET {path}: HTTP {status} is not the range asked for")
        if len(data) != last - first + 1:
            raise TransportError(f"GET {path}: {len(data)} bytes of the {last - first + 1} asked for")
        return data

    def _interpret(self, status: int, headers: Mapping[str, str], data: bytes, method: str, path: str) -> dict:
        try:
            document = json_wire.loads(data) if data else None
        except ValueError:
            document = None
        if 200 <= status < 300:
            # every sync endpoint answers a JSON object: anything else is an answer cut short
            if not isinstance(document, dict):
                raise TransportError(f"{method} {path}: HTTP {status} without a complete JSON body")
            return document
        problem = document if isinstance(document, dict) else {"detail": data[:200].decode("utf-8", "replace")}
        retry_after = retry_after_seconds(headers.get("retry-after"))
        if status in (408, 429) or status >= 500:
            raise ServerUnavailable(status, f"{method} {path}: HTTP {status} {problem_name(problem)}".rstrip(),
                                    retry_after=retry_after, problem=problem)
        name = problem_name(problem)
        if status == 403 and name == ProblemType.DEVICE_REVOKED.slug:
            raise DeviceRevoked(problem.get("detail") or "this device was revoked by an administrator")
        if status == 409 and name == ProblemType.SCHEMA_TOO_NEW.slug:
            error = SchemaTooNew(problem.get("schema_version"), self._device_version())
            error.retry_after = retry_after
            raise error
        raise ProtocolError(status, problem)
