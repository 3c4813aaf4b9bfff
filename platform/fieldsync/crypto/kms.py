"""The AWS KMS key provider (`KEY_PROVIDER=kms`): data keys from KMS GenerateDataKey (AES_256)
under the key-encryption key `KMS_KEY_ID`, unwrapped with KMS Decrypt. The master key never
leaves KMS; this process only ever holds the data keys it asked for.

The encryption context given to either method is KMS's EncryptionContext: KMS binds it to the
wrapped key (Decrypt with another context fails) and records it in CloudTrail in clear, so
callers put only references in it — entity name, key id, purpose — never PHI.

Wrapped key: `b"K1"`, the length of the KMS key ARN (2 bytes, big-endian), the ARN that
GenerateDataKey answered, and KMS's CiphertextBlob. Decrypt names that ARN as its KeyId (KMS
then refuses a blob of any other key), so data keys stay readable after an alias is moved to a
new KMS key, for as long as the old key is enabled and ours to use.

Caching unwrapped keys is the caller's job (each call here is one request to KMS).

Outages (docs/operations.md "Outages"): every request is bounded by short connect and read
timeouts and few attempts (`KMS_CONNECT_TIMEOUT`, `KMS_READ_TIMEOUT`, `KMS_MAX_ATTEMPTS`), so a
KMS that does not answer costs a thread seconds, not minutes. A failure to reach KMS, or an
answer that it cannot serve now (throttled, an internal error), raises KeyProviderUnreachable;
for `KMS_RETRY_SECONDS` after it, calls fail at once with the same error instead of each waiting
out the timeouts again. Every outcome is told to `observers` (the server's dependency registry).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Mapping

from fieldsync.errors import ConfigError, KeyProviderUnreachable, KeyUnavailable
from fieldsync.crypto.keys import canonical_context, wrapped_by

__all__ = ["KmsKeyProvider", "kms_provider_from_config"]

PREFIX = b"K1"
DATA_KEY_BYTES = 32
CONNECT_TIMEOUT = 2.0     # seconds to open a connection to KMS
READ_TIMEOUT = 3.0        # seconds to wait for its answer (KMS answers in milliseconds)
MAX_ATTEMPTS = 2          # botocore's attempts per call, the first included
RETRY_SECONDS = 2.0       # after an outage, calls fail at once for this long

# KMS's answers that say "not now" rather than "no": retried later, the request itself is fine
_TRANSIENT_CODES = frozenset({"ThrottlingException", "KMSInternalException", "DependencyTimeoutException",
                              "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException",
                              "RequestTimeout", "RequestTimeoutException", "LimitExceededException"})


def _arn_region(key_id: str) -> str | None:
    """The region of a key or alias ARN (`arn:aws:kms:eu-west-1:…`), None for a bare id or name."""
    parts = key_id.split(":")
    if len(parts) >= 6 and parts[0] == "arn" and parts[2] == "kms" and parts[3]:
        return parts[3]
    return None


class KmsKeyProvider:
    """Data keys wrapped by the AWS KMS key `key_id` (a key id, key ARN, alias name `alias/…`
    or alias ARN). `client` (a boto3 KMS client) or `session` (a boto3 Session) inject the
    AWS side; by default a client is made on first use from boto3's usual credential chain.
    Thread-safe."""

    def __init__(self, key_id: str, *, region: str | None = None, endpoint_url: str | None = None,
                 session: Any = None, client: Any = None, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT, max_attempts: int = MAX_ATTEMPTS,
                 retry_seconds: float = RETRY_SECONDS, monotonic: Callable[[], float] = time.monotonic):
        if not key_id or not isinstance(key_id, str):
            raise ConfigError("the KMS key provider needs a key: set KMS_KEY_ID to a key id, key ARN or alias ARN")
        if connect_timeout <= 0 or read_timeout <= 0 or max_attempts < 1 or retry_seconds < 0:
            raise ConfigError("KMS timeouts must be positive, KMS_MAX_ATTEMPTS at least 1 and "
                              "KMS_RETRY_SECONDS not negative")
        self.key_id = key_id
        self.region = region
        self.endpoint_url = endpoint_url
        self.connect_timeout = float(connect_timeout)
        self.read_timeout = float(read_timeout)
        self.max_attempts = int(max_attempts)
        self.retry_seconds = float(retry_seconds)
        self.monotonic = monotonic
        # (ok, error or None) after every request: the server's dependency registry listens
        self.observers: list[Callable[[bool, BaseException | None], None]] = []
        self._session = session
        self._client = client
        self._lock = threading.Lock()
        self._outage: tuple[float, str] | None = None   # (fail fast until, what the last failure was)

    def __repr__(self) -> str:
        return f"KmsKeyProvider({self.key_id!r})"

    def _kms(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config
                session = self._session or boto3.session.Session()
                region = self.region or _arn_region(self.key_id) or session.region_name
                if not region:
                    raise ConfigError(f"the KMS key {self.key_id!r} needs a region: use its ARN, or set "
                                      "AWS_REGION (or AWS_DEFAULT_REGION)")
                config = Config(region_name=region, retries={"mode": "standard", "max_attempts": self.max_attempts},
                                connect_timeout=self.connect_timeout, read_timeout=self.read_timeout)
                self._client = session.client("kms", endpoint_url=self.endpoint_url, config=config)
            return self._client

    def generate_data_key(self, *, context: Mapping[str, str] | None = None) -> tuple[bytes, bytes]:
        params: dict[str, Any] = {"KeyId": self.key_id, "KeySpec": "AES_256"}
        items = canonical_context(context)
        if items:
            params["EncryptionContext"] = items
        answer = self._call("GenerateDataKey", self.key_id, items, params)
        plaintext, blob, arn = answer["Plaintext"], answer["CiphertextBlob"], answer["KeyId"]
        if len(plaintext) != DATA_KEY_BYTES:
            raise KeyUnavailable(f"KMS key {arn}: GenerateDataKey answered a {len(plaintext)}-byte key, "
                                 f"not {DATA_KEY_BYTES}")
        name = arn.encode("utf-8")
        return bytes(plaintext), PREFIX + len(name).to_bytes(2, "big") + name + bytes(blob)

    def decrypt_data_key(self, wrapped: bytes, *, context: Mapping[str, str] | None = None) -> bytes:
        wrapped = bytes(wrapped)
        if not wrapped.startswith(PREFIX):
            raise KeyUnavailable(f"the data key was wrapped by {wrapped_by(wrapped)}, not by AWS KMS "
                                 f"(KEY_PROVIDER=kms, KMS key {self.key_id}); it cannot be unwrapped here")
        size = int.from_bytes(wrapped[2:4], "big") if len(wrapped) >= 4 else 0
        arn = wrapped[4:4 + size].decode("utf-8", "replace")
        blob = wrapped[4 + size:]
        if not size or not blob or _arn_region(arn) is None:
            raise KeyUnavailable(f"not a data key wrapped by AWS KMS (a damaged K1 envelope; KMS key {self.key_id})")
        params: dict[str, Any] = {"CiphertextBlob": blob, "KeyId": arn}
        items = canonical_context(context)
        if items:
            params["EncryptionContext"] = items
        plaintext = self._call("Decrypt", arn, items, params)["Plaintext"]
        if len(plaintext) != DATA_KEY_BYTES:
            raise KeyUnavailable(f"KMS key {arn}: the wrapped value is not a {DATA_KEY_BYTES}-byte data key")
        return bytes(plaintext)

    def _call(self, operation: str, key: str, context: dict[str, str], params: dict[str, Any]) -> dict:
        """One KMS request; every AWS failure becomes a KeyUnavailable naming the key and what
        went wrong (never key material: AWS error messages hold ARNs and codes only)."""
        from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError
        outage = self._outage
        if outage is not None and self.monotonic() < outage[0]:
            raise KeyProviderUnreachable(f"KMS {operation} with key {key} not tried: KMS was unreachable "
                                         f"moments ago ({outage[1]}); retried after {self.retry_seconds:g} s")
        kms = self._kms()
        method = kms.generate_data_key if operation == "GenerateDataKey" else kms.decrypt
        try:
            answer = method(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code, message = str(error.get("Code", "")), str(error.get("Message", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            text = _explain(operation, key, context, code, message)
            failure = (KeyProviderUnreachable(text) if code in _TRANSIENT_CODES or status >= 500
                       else KeyUnavailable(text))
            self._failed(failure)
            raise failure from None
        except (ConnectionError, HTTPClientError) as exc:
            failure = KeyProviderUnreachable(f"KMS {operation} with key {key} failed before KMS answered "
                                             f"({type(exc).__name__}: {exc})")
            self._failed(failure)
            raise failure from None
        except BotoCoreError as exc:
            failure = KeyUnavailable(f"KMS {operation} with key {key} failed before KMS answered "
                                     f"({type(exc).__name__}: {exc})")
            self._failed(failure)
            raise failure from None
        self._outage = None
        self._tell(True, None)
        return answer

    def close(self) -> None:
        """Close the KMS client's connections (a later call opens new ones)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and hasattr(client, "close"):
            client.close()

    def available(self) -> bool:
        """Whether KMS answers again after an outage (DescribeKey, no key material); True at once,
        without a request, when no outage is known. The listener pool asks before it claims
        again, so a batch waits for KMS instead of spending its deliveries."""
        if self._outage is None:
            return True
        try:
            self._kms().describe_key(KeyId=self.key_id)
        except Exception as exc:
            failure = KeyProviderUnreachable(f"KMS DescribeKey with key {self.key_id} failed ({type(exc).__name__})")
            self._outage = (self.monotonic() + self.retry_seconds, str(failure)[:200])
            self._tell(False, failure)
            return False
        self._outage = None
        self._tell(True, None)
        return True

    def _failed(self, failure: KeyUnavailable) -> None:
        if isinstance(failure, KeyProviderUnreachable):
            self._outage = (self.monotonic() + self.retry_seconds, str(failure)[:200])
        self._tell(False, failure)

    def _tell(self, ok: bool, error: BaseException | None) -> None:
        for observer in list(self.observers):
            try:
                observer(ok, error)
            except Exception:   # a registry that fails must not fail the key operation
                pass


def _explain(operation: str, key: str, context: dict[str, str], code: str, message: str) -> str:
    where = f"KMS {operation} with key {key}"
    if code == "NotFoundException":
        return f"{where}: no such KMS key in this account and region ({message})"
    if code == "AccessDeniedException":
        return (f"{where}: access denied — this identity may not use the key, or the data key was "
                f"wrapped under another KMS key ({message})")
    if code == "IncorrectKeyException":
        return f"{where}: the data key was wrapped under another KMS key ({message})"
    if code == "DisabledException":
        return f"{where}: the KMS key is disabled ({message})"
    if code == "KMSInvalidStateException":
        return f"{where}: the KMS key cannot be used in its current state, e.g. pending deletion ({message})"
    if code == "InvalidCiphertextException":
        names = ", ".join(sorted(context)) or "none"
        return (f"{where}: the data key does not unwrap with this encryption context (context keys: "
                f"{names}) — another context than it was wrapped with, or an altered wrapped key")
    return f"{where} failed: {code or 'error'} ({message})"


def kms_provider_from_config(config, *, session: Any = None) -> KmsKeyProvider:
    """`KEY_PROVIDER=kms`: the key `KMS_KEY_ID`; the endpoint `KMS_ENDPOINT_URL` when set, else
    boto3's own (AWS_ENDPOINT_URL_KMS, AWS_ENDPOINT_URL); the region from the key's ARN, else
    AWS_REGION, else boto3's (AWS_DEFAULT_REGION, the profile). Credentials: boto3's chain."""
    key_id = config.get("KMS_KEY_ID")
    if not key_id:
        raise ConfigError("KEY_PROVIDER=kms needs KMS_KEY_ID (a KMS key id, key ARN or alias ARN; "
                          "FIELDSYNC_KMS_KEY_ID in the environment)")
    region = _arn_region(str(key_id)) or os.environ.get("AWS_REGION") or None
    def setting(name: str, default: float) -> float:
        value = config.get(name)
        return default if value is None else float(value)
    return KmsKeyProvider(str(key_id), region=region, endpoint_url=config.get("KMS_ENDPOINT_URL") or None,
                          session=session, connect_timeout=setting("KMS_CONNECT_TIMEOUT", CONNECT_TIMEOUT),
                          read_timeout=setting("KMS_READ_TIMEOUT", READ_TIMEOUT),
                          max_attempts=int(setting("KMS_MAX_ATTEMPTS", MAX_ATTEMPTS)),
                          retry_seconds=setting("KMS_RETRY_SECONDS", RETRY_SECONDS))
