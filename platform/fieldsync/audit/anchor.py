"""The audit trail's anchor: its latest signed checkpoint, kept outside the database
(invariant 8; docs/audit.md "The anchor").

Whoever can write the database can drop the audit tables; a server that then started a fresh,
empty trail would hide the wipe, and so would a verifier that only reads the database. The
anchor is the line `Checkpoint.as_json` prints, written after every checkpoint commits (every
AUDIT_CHECKPOINT_EVERY entries, on demand, at every purge) and at every start, to each store:

    DirectoryAnchorStore   <dir>/audit-anchor.json (0600): AUDIT_ANCHOR_DIR, default the signing
                           key's directory
    S3AnchorStore          s3://<bucket>/<key> (AUDIT_ANCHOR_S3): an object store the database's
                           administrators cannot write (another account, object lock)

A store is anything with `location`, `read() -> str | None` and `write(text)`; tests and other
object stores inject their own. The server compares the database with every anchor before it
starts (`AuditLog.prepare`), `fieldsync audit verify` after it.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence
from urllib.parse import urlsplit

from fieldsync.errors import AnchorUnavailable, AuditTrailReplaced, ConfigError

__all__ = ["ANCHOR_FILE", "Anchor", "AnchorStore", "AnchorUnavailable", "AuditTrailReplaced",
           "DirectoryAnchorStore", "S3AnchorStore", "anchor_stores_from_config"]

ANCHOR_FILE = "audit-anchor.json"
_S3_DEFAULT_KEY = "fieldsync/" + ANCHOR_FILE


@dataclass(frozen=True)
class Anchor:
    """A signed checkpoint statement kept outside the database: audit log `log_id` had entry
    `seq` with hash `entry_hash` (seq 0: the log existed, still empty)."""

    log_id: str
    seq: int
    entry_hash: str
    signed_at: str
    statement: str
    signature: str
    key_id: str

    @classmethod
    def parse(cls, text: str) -> "Anchor":
        try:
            data = json.loads(text)
            statement = json.loads(data["statement"])
            return cls(str(statement["log"]), int(statement["seq"]), str(statement["hash"]),
                       str(statement.get("signed_at", "")), data["statement"], data["signature"],
                       str(data.get("key_id", "")))
        except (ValueError, KeyError, TypeError):
            raise ValueError("not an audit anchor (a JSON object with a signed checkpoint statement)") from None

    def describe(self) -> str:
        """"audit log X at entry S (signed T)", for messages."""
        where = f"at entry {self.seq}" if self.seq else "while still empty (entry 0)"
        return f"audit log {self.log_id} {where}" + (f" (signed {self.signed_at})" if self.signed_at else "")

    def as_json(self) -> str:
        return json.dumps({"statement": self.statement, "signature": self.signature, "key_id": self.key_id},
                          separators=(",", ":"), sort_keys=True)


class AnchorStore(Protocol):
    """Where one copy of the anchor is kept."""

    location: str

    def read(self) -> str | None:
        """The stored anchor's text; None when there is none. AnchorUnavailable when the store
        cannot be read (that is not "no anchor")."""

    def write(self, text: str) -> None:
        """Replace the stored anchor (AnchorUnavailable on failure)."""


class DirectoryAnchorStore:
    """`<directory>/audit-anchor.json`, written atomically (a temporary file renamed over it),
    mode 0600 in a 0700 directory."""

    def __init__(self, directory: str | os.PathLike[str]):
        self.path = Path(directory) / ANCHOR_FILE
        self.location = str(self.path)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DirectoryAnchorStore({self.location!r})"

    def read(self) -> str | None:
        try:
            return self.path.read_text("utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AnchorUnavailable(f"cannot read the audit anchor {self.path}: {exc.strerror or exc}") from None

    def write(self, text: str) -> None:
        temporary = self.path.with_name(f".{ANCHOR_FILE}.{os.getpid()}.{threading.get_ident()}")
        try:
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    fh.write(text + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(temporary, self.path)
        except OSError as exc:
            raise AnchorUnavailable(f"cannot write the audit anchor {self.path}: {exc.strerror or exc}") from None


class S3AnchorStore:
    """One object in S3 (or an S3-compatible store). `client` is a boto3 S3 client; without
    one, a client is made on first use from boto3's usual credential chain (`endpoint_url`,
    `region` when given). The bucket is the operator's: never created here."""

    def __init__(self, bucket: str, key: str = _S3_DEFAULT_KEY, *, client: Any = None,
                 endpoint_url: str | None = None, region: str | None = None, session: Any = None):
        if not bucket or not key:
            raise ConfigError("the S3 audit anchor needs a bucket and a key: s3://<bucket>/<key>")
        self.bucket, self.key = bucket, key
        self.location = f"s3://{bucket}/{key}"
        self._client = client
        self._endpoint_url, self._region, self._session = endpoint_url, region, session
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3AnchorStore({self.location!r})"

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> "S3AnchorStore":
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc or parts.query:
            raise ConfigError(f"AUDIT_ANCHOR_S3 is s3://<bucket>[/<key>], not {url!r}")
        return cls(parts.netloc, parts.path.lstrip("/") or _S3_DEFAULT_KEY, **kwargs)

    def _s3(self) -> Any:
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config
                session = self._session or boto3.session.Session()
                config = Config(region_name=self._region or session.region_name, connect_timeout=10, read_timeout=30,
                                retries={"mode": "standard", "max_attempts": 5},
                                s3={"addressing_style": "path"} if self._endpoint_url else None)
                self._client = session.client("s3", endpoint_url=self._endpoint_url, config=config)
            return self._client

    def read(self) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            return self._s3().get_object(Bucket=self.bucket, Key=self.key)["Body"].read().decode("utf-8")
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("NoSuchKey", "404"):
                return None
            raise AnchorUnavailable(f"cannot read the audit anchor {self.location}: {code}") from None
        except BotoCoreError as exc:
            raise AnchorUnavailable(f"cannot read the audit anchor {self.location}: {exc}") from None

    def write(self, text: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            self._s3().put_object(Bucket=self.bucket, Key=self.key, Body=(text + "\n").encode("utf-8"),
                                  ContentType="application/json")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise AnchorUnavailable(f"cannot write the audit anchor {self.location}: {code}") from None
        except BotoCoreError as exc:
            raise AnchorUnavailable(f"cannot write the audit anchor {self.location}: {exc}") from None


def anchor_stores_from_config(config, signing_key_path: Path) -> list[AnchorStore]:
    """AUDIT_ANCHOR_DIR (default: the signing key's directory) and, when set, AUDIT_ANCHOR_S3
    (endpoint AUDIT_ANCHOR_S3_ENDPOINT_URL, else boto3's own: AWS_ENDPOINT_URL_S3, ...)."""
    stores: list[AnchorStore] = [DirectoryAnchorStore(config.get("AUDIT_ANCHOR_DIR") or signing_key_path.parent)]
    url = config.get("AUDIT_ANCHOR_S3")
    if url:
        stores.append(S3AnchorStore.from_url(str(url), endpoint_url=config.get("AUDIT_ANCHOR_S3_ENDPOINT_URL") or None))
    return stores


def read_anchors(stores: Sequence[AnchorStore]) -> tuple[list[tuple[AnchorStore, Anchor]], list[str]]:
    """Each store's anchor, and a problem for each store holding something that is not one.
    AnchorUnavailable when a store cannot be read."""
    found, problems = [], []
    for store in stores:
        text = store.read()
        if text is None or not text.strip():
            continue
        try:
            found.append((store, Anchor.parse(text)))
        except ValueError as exc:
            problems.append(f"the audit anchor {store.location} is unreadable: {exc}")
    return found, problems
