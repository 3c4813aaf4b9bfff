"""The whole error tree of fieldsync, and the one registry of problem types.

Every exception a caller may see (a user of the library, the HTTP layer, the CLI, an app that
embeds the SDK) is defined here; the modules that raise one import it from here. This module is
standard library only: the device SDK imports it (`import fieldsync.client` loads no server
module), so the SDK's own errors are defined here too, and `fieldsync.client` exports them as
part of its public API. Exceptions private to one module (a name starting with `_`, used for
control flow and never let out) are the only ones defined elsewhere; tests/docs/test_errors.py
keeps it so.

    Error                          base of everything fieldsync raises on purpose
     +-- ConfigError               configuration is missing or invalid
     +-- DefinitionErrors          the YAML definitions are invalid (.errors: every problem, in file order)
     +-- ExprError (ValueError)    an expression of the definitions does not parse (.position)
     +-- ValueProblem (ValueError) a value breaks a field's rules (its message is the reason)
     +-- BadQuery (ValueError)     a list request that cannot be run (filter value, sort, cursor)
     +-- Unconvertible (ValueError)  a value no column of that type can hold (so it equals no row)
     +-- IntRefused (ValueError)   client input that is not a whole number within its bounds
     +-- JsonRefused (ValueError)  client input that is not JSON, or nests too deep
     +-- GenerationError           the generator cannot produce its files
     +-- MigrationRefused          a schema change needs --allow-destructive (.steps)
     +-- ChangeLogMissing (RuntimeError)  the change log tables do not exist
     +-- AuthError                 a token is missing, malformed, expired or forged
     |    +-- TokenError           ... with a machine-readable .reason
     |    +-- LoginRefused         the user directory refused a login, with a .reason
     |    +-- SecretUnreadable     a stored second-factor secret does not open (altered, moved, key gone)
     +-- PermissionDenied          the user's role may not do this
     +-- NotFound                  no such entity or record
     +-- ValidationFailed          a record's values were refused (.problems lists field and reason)
     |    +-- ValidationError      (also a ClientError, below)
     +-- Conflict                  a write met a newer version (stale If-Match / base version)
     +-- SyncReset                 a pull's cursor can no longer be served (410 sync-reset)
     +-- InvalidResume             a pull's resume token was not issued by this server
     +-- NotReceived               the durable queue refused a push's batch: nothing was received (503)
     +-- IntegrityFailure          a stored ciphertext does not decrypt (altered or moved)
     +-- KeyShredded               a ciphertext's data key was destroyed: the value is gone
     +-- KeyMissing                a ciphertext names a key the database does not hold
     +-- KeyUnavailable            a data key cannot be unwrapped or made (KMS, master key)
     |    +-- KeyProviderUnreachable  the key provider did not answer in time, or answered busy (503)
     +-- AuditUnavailable          an audit entry could not be appended: the PHI operation fails
     +-- AuditTampered             the audit trail does not verify
     +-- AnchorUnavailable         an audit anchor store could not be read or written
     +-- AuditTrailReplaced        the audit trail is not the one the anchor records
     +-- QueueClosed               the queue object was closed
     +-- QueueTimeout              the push queue did not answer within QUEUE_SEND_TIMEOUT
     +-- QueueDecryptError         a queued body does not open (altered, or another key)
     +-- SqsError                  SQS or S3 refused a request or could not be reached
     |    +-- SqsSendFailed        not every message of a send was accepted
     +-- BrokerUnavailable         the STOMP broker could not be reached in time
     +-- BrokerRefused             the STOMP broker answered a frame with an ERROR
     +-- LinkLost                  the STOMP connection ended before a frame was confirmed
     +-- InvalidPoolSize           a listener pool size out of range, or an unknown queue (.field)
     +-- ChunkRefused (ValueError) a sealed transfer chunk or manifest is not what it must be (changed, moved, cut, forged)
     +-- Problem                   an HTTP answer with a problem document (.kind: a ProblemType)
     +-- ClientError               base of everything the device SDK raises on purpose
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
          |    +-- UploadGone     a resumable upload is no longer on the server (404, 410
          |                       expired): create another
          +-- ValidationError     a local write was refused (`problems`: field and reason);
          |                       also a ValidationFailed
          +-- StoreLocked         the device store is encrypted and no key was given, or its
               |                  key header (`<store>.header`) is missing
               +-- WrongStoreKey  the store does not open with the key given (wrong device
                                  secret or PIN); nothing was read or changed

The classes that were ValueError or RuntimeError before they joined the tree keep that second
base, so `except ValueError` around a parser still catches them. A mutation the server refuses
is not an exception: it is a rejected result (docs/protocol.md §5), and the SDK quarantines it
(`Client.quarantined()`).

Problem types: every `type` of a problem document (RFC 9457) the server answers with, every
rejection type of a push result, and the SDK's local quarantine codes are members of
`ProblemType`, declared once with their HTTP status and titles; `ProblemType("slug")` raises
ValueError for a slug that is not declared, so no code can emit an unknown one.
docs/rest.md ("Problem types") lists them all; tests/docs/test_errors.py keeps the two in step.
"""

from __future__ import annotations

import enum
from typing import Any, Iterable, Mapping

PROBLEM_BASE = "https://fieldsync.dev/problems/"


# -- problem types -------------------------------------------------------------------------------

@enum.unique
class ProblemType(enum.Enum):
    """A problem type: its slug (the `type` URI's last segment, what clients switch on), the HTTP
    status and title of an answer of this type, and the title of a rejected push result of this
    type. `status` and `title` are None for a type that is never an HTTP answer; `rejection` is
    None for a type no mutation is rejected with. ERROR alone has a title and no status: the web
    framework's answer of a status that has no type of its own keeps that status."""

    # slug, HTTP status, title of the answer, title of a rejected push result
    # -- the default type of each status (an HTTP error of the web framework, a view's plain refusal)
    BAD_REQUEST = ("bad-request", 400, "Bad request")
    UNAUTHORIZED = ("unauthorized", 401, "Authentication required")
    FORBIDDEN = ("forbidden", 403, "Forbidden", "Not allowed")
    NOT_FOUND = ("not-found", 404, "Not found")
    METHOD_NOT_ALLOWED = ("method-not-allowed", 405, "Method not allowed")
    CONFLICT = ("conflict", 409, "Conflict")
    PRECONDITION_FAILED = ("precondition-failed", 412, "Precondition failed")
    PAYLOAD_TOO_LARGE = ("payload-too-large", 413, "Payload too large")
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", 415, "Unsupported media type")
    VALIDATION = ("validation", 422, "Validation failed", "Invalid values")
    PRECONDITION_REQUIRED = ("precondition-required", 428, "Precondition required")
    INTERNAL = ("internal", 500, "Internal server error")
    ERROR = ("error", None, "Error")
    # -- the REST API and every endpoint
    MALFORMED_JSON = ("malformed-json", 400, "Malformed JSON")
    BAD_QUERY = ("bad-query", 400, "Bad query parameter")
    BREAK_GLASS_REASON = ("break-glass-reason", 400, "Break-glass needs a reason")
    BREAK_GLASS_NOT_GRANTED = ("break-glass-not-granted", 403, "Break-glass not granted")
    LOGIN_FAILED = ("login-failed", 401, "Login failed")
    DEVICE_TOKEN_NOT_ALLOWED = ("device-token-not-allowed", 403, "Device token not allowed here")
    UNKNOWN_ENTITY = ("unknown-entity", 404, "Unknown entity", "Unknown entity")
    TOO_MANY_REQUESTS = ("too-many-requests", 429, "Too many requests")
    INTEGRITY_FAILURE = ("integrity-failure", 500, "Stored data failed its integrity check")
    AUDIT_UNAVAILABLE = ("audit-unavailable", 503, "Audit trail unavailable")
    # -- the sync endpoints (docs/protocol.md §2.5)
    PROTOCOL_UNSUPPORTED = ("protocol-unsupported", 400, "Protocol version not supported")
    MALFORMED_REQUEST = ("malformed-request", 400, "Malformed request")
    INVALID_RESUME = ("invalid-resume", 400, "Invalid resume token")
    UNAUTHENTICATED = ("unauthenticated", 401, "Authentication required")
    DEVICE_TOKEN_MISMATCH = ("device-token-mismatch", 403, "Token belongs to another device")
    DEVICE_USER_MISMATCH = ("device-user-mismatch", 403, "Device belongs to another user")
    DEVICE_REVOKED = ("device-revoked", 403, "Device revoked")
    UNKNOWN_DEVICE = ("unknown-device", 404, "Unknown device")
    SCHEMA_UPGRADE_REQUIRED = ("schema-upgrade-required", 409, "Device schema must be upgraded")
    SCHEMA_TOO_NEW = ("schema-too-new", 409, "Device schema is newer than the server's")
    SYNC_RESET = ("sync-reset", 410, "Device must resync")
    UNSUPPORTED_ENCODING = ("unsupported-encoding", 415, "Unsupported encoding")
    UNAVAILABLE = ("unavailable", 503, "Service unavailable")
    # -- resumable uploads, /api/v1/transfer/ (docs/protocol.md "Transfer")
    TUS_VERSION_UNSUPPORTED = ("tus-version-unsupported", 412, "tus version not supported")
    OFFSET_MISMATCH = ("offset-mismatch", 409, "Upload offset mismatch")
    CHECKSUM_MISMATCH = ("checksum-mismatch", 460, "Checksum mismatch")
    UPLOAD_EXPIRED = ("upload-expired", 410, "Upload expired")
    UPLOAD_BUSY = ("upload-busy", 423, "Upload is being written")
    UPLOAD_CORRUPT = ("upload-corrupt", 422, "Staged upload failed its integrity check")
    # -- outbox bundles, POST /api/v1/sync/push-bundle (docs/protocol.md §4.7)
    BUNDLE_REFUSED = ("bundle-refused", 422, "Bundle refused")
    BUNDLE_INCOMPLETE = ("bundle-incomplete", 409, "Bundle upload incomplete")
    # -- rejected push results only (docs/protocol.md §5.2)
    MALFORMED_MUTATION = ("malformed-mutation", None, None, "Malformed mutation")
    DIRECTION = ("direction", None, None, "Entity is not pushed by devices")
    UNKNOWN_RECORD = ("unknown-record", None, None, "No such record")
    RECORD_DELETED = ("record-deleted", None, None, "Record was deleted")
    ID_EXISTS = ("id-exists", None, None, "Id already exists")
    STALE = ("stale", None, None, "Record changed since base_version")
    UNPROCESSABLE = ("unprocessable", None, None, "The server could not process this mutation")
    # -- the SDK's own quarantine code (docs/protocol.md §10.5): never sent by the server
    SEQ_REUSED = ("seq-reused", None, None)

    def __new__(cls, slug: str, status: int | None, title: str | None, rejection: str | None = None):
        member = object.__new__(cls)
        member._value_ = slug
        member.status = status
        member.title = title
        member.rejection = rejection
        return member

    @property
    def slug(self) -> str:
        return self.value

    @property
    def uri(self) -> str:
        """The stable `type` URI of a problem document or a rejected result of this type."""
        return PROBLEM_BASE + self.value


# the type of an answer that names only its status (Werkzeug's HTTP errors, a view's plain refusal)
_STATUS_TYPES = {t.status: t for t in (
    ProblemType.BAD_REQUEST, ProblemType.UNAUTHORIZED, ProblemType.FORBIDDEN, ProblemType.NOT_FOUND,
    ProblemType.METHOD_NOT_ALLOWED, ProblemType.CONFLICT, ProblemType.PRECONDITION_FAILED,
    ProblemType.PAYLOAD_TOO_LARGE, ProblemType.UNSUPPORTED_MEDIA_TYPE, ProblemType.VALIDATION,
    ProblemType.PRECONDITION_REQUIRED, ProblemType.INTERNAL)}


def status_type(status: int) -> ProblemType:
    """The default problem type of an HTTP status (ERROR for a status with none)."""
    return _STATUS_TYPES.get(status, ProblemType.ERROR)


def problem_name(problem: Mapping[str, Any] | None) -> str:
    """The stable name of a problem document's type (`.../problems/sync-reset` -> `sync-reset`);
    the SDK reads it from answers, so it is not checked against the registry."""
    kind = (problem or {}).get("type") or ""
    return kind.rsplit("/", 1)[-1] if isinstance(kind, str) else ""


# -- the tree ------------------------------------------------------------------------------------

class Error(Exception):
    """Base class of fieldsync's errors."""


class ConfigError(Error):
    pass


class DefinitionErrors(Error):
    """Raised by build_model/load_model (fieldsync.defs); `.errors` holds every problem (a
    fieldsync.defs.DefinitionError), in file order. They describe the analyst's files."""

    def __init__(self, errors: Iterable[Any]):
        self.errors = sorted(errors, key=lambda e: (e.file, e.line, e.column, e.path, e.message))
        super().__init__("\n".join(str(e) for e in self.errors))


class ExprError(Error, ValueError):
    """A syntax error in an expression; `position` is the 0-based character offset in the source."""

    def __init__(self, message: str, position: int):
        super().__init__(f"{message} (at character {position + 1})")
        self.reason = message
        self.position = position


class ValueProblem(Error, ValueError):
    """A value that breaks its field's rules; the message is the reason (fieldsync.defs.values)."""


class BadQuery(Error, ValueError):
    """A list request that cannot be run (bad filter value, sort column or cursor)."""


class Unconvertible(Error, ValueError):
    """A value that cannot be held by a column of the given type (so it equals no row)."""


class IntRefused(Error, ValueError):
    """A value that is not a whole number within the bounds asked for (fieldsync.untrusted)."""


class JsonRefused(Error, ValueError):
    """A body that is not JSON, or nests deeper than allowed (fieldsync.untrusted)."""


class GenerationError(Error):
    """The generator cannot produce its files (missing templates or generator module, a name clash)."""


class MigrationRefused(Error):
    def __init__(self, steps, message: str):
        super().__init__(message)
        self.steps = list(steps)


class ChangeLogMissing(Error, RuntimeError):
    """The change log tables (or the counter row) do not exist: run create_changelog_tables."""


class AuthError(Error):
    pass


class TokenError(AuthError):
    """An AuthError with a machine-readable `reason`: expired, bad_signature, malformed,
    unknown_role; and from the session check: idle, revoked, superseded."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class LoginRefused(AuthError):
    """A login the user directory refused, with a machine-readable `reason`:
    invalid_credentials (no such user or a wrong password: never said which), disabled,
    totp_required, totp_invalid."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class PermissionDenied(Error):
    pass


class NotFound(Error):
    pass


class ValidationFailed(Error):
    def __init__(self, problems, message: str = "the record has invalid fields"):
        super().__init__(message)
        self.problems = list(problems)


class Conflict(Error):
    pass


class SyncReset(Error):
    """The device must reset (410 sync-reset): its cursor can no longer be served."""

    def __init__(self, reason: str, detail: str, horizon: int):
        super().__init__(detail)
        self.reason, self.detail, self.horizon = reason, detail, horizon


class NotReceived(Error):
    """The durable queue refused the push's batch: nothing of the push was received (503)."""


class InvalidResume(Error):
    """The resume token was not issued by this server (400 invalid-resume)."""


class IntegrityFailure(Error):
    """A stored ciphertext does not decrypt: it was altered, or moved from another row or field.

    The message names entity, field and record, never a value."""


class KeyShredded(Error):
    """The data key of a ciphertext was destroyed (crypto-shredding): the value is gone."""


class KeyMissing(Error):
    """A ciphertext names a key this database does not hold, or a scope has no active key where
    one cannot be created (inside a SQLite write transaction)."""


class KeyUnavailable(Error):
    """A wrapped data key cannot be unwrapped or a data key cannot be made: another master key,
    another encryption context, the data was altered, or the KMS key is unknown, disabled or
    not ours to use. The message names the key, never a key's bytes."""


class KeyProviderUnreachable(KeyUnavailable):
    """The key provider could not be reached within its timeouts, or answered that it cannot
    serve now (throttled, an internal error): an outage, not a refusal. What needs a key the
    process has not cached fails fast (503 with Retry-After; a listener retries by redelivery)."""


class AuditUnavailable(Error):
    """An audit entry could not be appended; the PHI operation that needed it must fail."""


class AuditTampered(Error):
    """The audit log does not verify; an operation that needs an intact log (purge) refused."""


class AnchorUnavailable(Error):
    """An anchor store could not be read or written."""


class AuditTrailReplaced(Error):
    """The database's audit trail is not the one the anchor records (wiped, replaced, cut
    back): the server refuses to start a new trail silently."""


class QueueClosed(Error):
    """The queue object was closed; open a new one."""


class QueueTimeout(Error):
    """The push queue did not answer within QUEUE_SEND_TIMEOUT (the send may still land)."""


class SecretUnreadable(AuthError):
    """A stored TOTP secret that does not open: altered, moved from another user's row, or its key
    destroyed. The login concerned is refused; the message names the user, never a value."""


class QueueDecryptError(Error):
    """A queued body is not an envelope this process can open (altered, or another key)."""


class SqsError(Error):
    """SQS or S3 refused a request or could not be reached."""


class SqsSendFailed(SqsError):
    """Not every message of a send was accepted: the push is not "received" (answer 503)."""


class BrokerUnavailable(Error):
    """The broker could not be reached within `reconnect_timeout`."""


class BrokerRefused(Error):
    """The broker answered a frame with an ERROR (its message says why)."""


class LinkLost(Error):
    """The connection ended before the broker confirmed a frame."""


class InvalidPoolSize(Error):
    """A desired pool size outside 1..64, or for a queue that does not exist (`field` names
    which: "threads" or "queue")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Problem(Error):
    """Raised by the API's views to answer with a problem document of type `kind`.

    `status` overrides the type's only for ERROR (Werkzeug's answer of a status without a type);
    `errors` are field problems (fieldsync.defs.FieldProblem), `extra` the extension members
    (RFC 9457 §3.2, e.g. max_bytes)."""

    def __init__(self, kind: ProblemType, detail: str, *, status: int | None = None,
                 errors: Iterable[Any] | None = None, headers: Mapping[str, str] | None = None,
                 extra: Mapping[str, Any] | None = None):
        if not isinstance(kind, ProblemType) or kind.title is None:
            raise ValueError(f"{kind!r} is not a problem type an HTTP answer may have")
        super().__init__(detail)
        self.kind = kind
        self.status = status if kind.status is None else kind.status
        if self.status is None:
            raise ValueError(f"a problem of type {kind.slug!r} needs a status")
        self.slug = kind.slug
        self.title = kind.title
        self.detail = detail
        self.errors = list(errors) if errors is not None else None
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


class ChunkRefused(Error, ValueError):
    """A chunk or manifest of a transfer (transfer/chunks.py) that is not what the signed
    manifest says: nothing of it is used."""


# -- the device SDK's errors (exported by fieldsync.client) ---------------------------------------

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


class UploadGone(ProtocolError):
    """A resumable upload is no longer on the server (404, or 410 after it expired)."""


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
