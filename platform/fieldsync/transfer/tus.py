"""Resumable uploads (tus 1.0): where the bytes and the state of each upload live, the strict
parsing of tus headers, and the completion hooks other parts plug into (docs/protocol.md
"Transfer", docs/decisions.md "tus uploads").

No Flask here: `fieldsync.api.transfer` turns requests into calls on an `UploadStore`.

Storage: one directory (`<DATA_DIR>/transfer/`), per upload a data file `<id>.bin`, a record
`<id>.json` (owner, length, offset, metadata, expiry, outcome) and a lock file `<id>.lock`.
A PATCH streams the body to the data file, fsyncs it, and only then writes the record with the
new offset (atomically: temporary file, fsync, rename), so an offset the server reported is
always backed by durable bytes; bytes past the recorded offset (a crash between the two) are
cut off by the next write. One writer per upload: the lock file is held with `flock` for the
whole PATCH (threads and processes alike); a second PATCH meanwhile gets `UploadBusy` (423).

Completion hooks: `Upload-Metadata` names a `purpose`; `on_complete(purpose)` registers the
handler called once when the last byte lands, under the upload's lock, so two racing requests
cannot both call it. Its dict is stored as the upload's `result`; a `Problem` it raises marks
the upload failed with that problem. An upload without a purpose is a plain file (`file`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.utils
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Mapping

from fieldsync.errors import Problem, ProblemType

__all__ = ["CHECKSUM_ALGORITHMS", "DEFAULT_PURPOSE", "TUS_EXTENSIONS", "TUS_VERSION", "Upload", "UploadStore",
           "format_metadata", "http_date", "on_complete", "parse_checksum", "parse_metadata", "parse_size",
           "purposes"]

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = ("creation", "creation-with-upload", "checksum", "termination", "expiration")
CHECKSUM_ALGORITHMS = ("sha1", "sha256")
DEFAULT_PURPOSE = "file"
METADATA_MAX_CHARS = 4096
METADATA_MAX_KEYS = 32
_ID = re.compile(r"[0-9a-f]{32}")
_KEY = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")   # an RFC 9110 token, bounded
_DIGITS = re.compile(r"[0-9]{1,19}")
READ_SIZE = 256 * 1024

Handler = Callable[["Upload", Path, Any], "dict[str, Any] | None"]
_HANDLERS: dict[str, Handler | None] = {DEFAULT_PURPOSE: None}


def on_complete(purpose: str) -> Callable[[Handler], Handler]:
    """Register `handler(upload, path, principal) -> dict | None` for uploads whose metadata
    names `purpose`: called once, when the last byte is durable, under the upload's lock. Its
    dict is kept as the upload's `result`; a `fieldsync.errors.Problem` it raises fails the
    upload with that problem (the final PATCH answers it). Registering a purpose again replaces
    its handler (an app created twice in one process registers twice)."""
    if not isinstance(purpose, str) or not _KEY.fullmatch(purpose):
        raise ValueError(f"a purpose is a short token of letters, digits and -._: {purpose!r}")

    def register(handler: Handler) -> Handler:
        _HANDLERS[purpose] = handler
        return handler
    return register


def purposes() -> tuple[str, ...]:
    """The purposes an upload may name, sorted."""
    return tuple(sorted(_HANDLERS))


def _bad(detail: str, **extra: Any) -> Problem:
    return Problem(ProblemType.BAD_REQUEST, detail, extra=extra)


# -- strict parsing of tus headers ---------------------------------------------------------------

def parse_size(value: str | None, header: str) -> int:
    """A tus size header (`Upload-Offset`, `Upload-Length`): ASCII digits only, at most 19 of
    them; `-1`, `1e9`, `+5`, ` 5` and `0x10` are 400s."""
    if value is None:
        raise _bad(f"the {header} header is required", header=header)
    if not _DIGITS.fullmatch(value):
        raise _bad(f"{header} must be a non-negative whole number of at most 19 digits", header=header)
    return int(value)


def parse_metadata(value: str | None) -> dict[str, str]:
    """`Upload-Metadata`: comma-separated `key base64value` pairs (a key alone means an empty
    value). Keys are tokens, unique; values strict base64 of UTF-8 text. Anything else is a 400."""
    if value is None or not value.strip():
        return {}
    if len(value) > METADATA_MAX_CHARS:
        raise _bad(f"Upload-Metadata is longer than {METADATA_MAX_CHARS} characters", header="Upload-Metadata")
    pairs = value.split(",")
    if len(pairs) > METADATA_MAX_KEYS:
        raise _bad(f"Upload-Metadata has more than {METADATA_MAX_KEYS} keys", header="Upload-Metadata")
    metadata: dict[str, str] = {}
    for pair in pairs:
        parts = pair.strip().split(" ")
        if len(parts) > 2 or not _KEY.fullmatch(parts[0]):
            raise _bad("Upload-Metadata must be comma-separated 'key base64value' pairs with token keys",
                       header="Upload-Metadata")
        key = parts[0]
        if key in metadata:
            raise _bad(f"Upload-Metadata names {key!r} twice", header="Upload-Metadata")
        encoded = parts[1] if len(parts) == 2 else ""
        try:
            metadata[key] = base64.b64decode(encoded.encode("ascii"), validate=True).decode("utf-8")
        except (UnicodeError, binascii.Error, ValueError):
            raise _bad(f"the Upload-Metadata value of {key!r} is not base64 of UTF-8 text",
                       header="Upload-Metadata") from None
        if "\x00" in metadata[key]:
            raise _bad(f"the Upload-Metadata value of {key!r} holds a NUL character", header="Upload-Metadata")
    return metadata


def format_metadata(metadata: Mapping[str, str]) -> str:
    """The `Upload-Metadata` header of a stored upload (what its creator sent, re-encoded)."""
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" if v else k for k, v in metadata.items())


def parse_checksum(value: str | None) -> tuple[str, bytes] | None:
    """`Upload-Checksum: <algorithm> <base64 digest>`; None when absent. An algorithm this
    server does not offer, or a digest of the wrong form, is a 400 (tus: Checksum extension)."""
    if value is None:
        return None
    algorithm, _, encoded = value.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise _bad(f"Upload-Checksum: the algorithm must be one of {', '.join(CHECKSUM_ALGORITHMS)}",
                   header="Upload-Checksum", algorithms=list(CHECKSUM_ALGORITHMS))
    try:
        digest = base64.b64decode(encoded.strip().encode("ascii"), validate=True)
    except (UnicodeError, binascii.Error, ValueError):
        digest = b""
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise _bad(f"Upload-Checksum: the {algorithm} digest must be base64 of {hashlib.new(algorithm).digest_size} bytes",
                   header="Upload-Checksum")
    return algorithm, digest


def owner_of(principal: Any) -> dict[str, str | None]:
    return {"user": principal.user_id, "device": principal.device_id}


# -- the store -----------------------------------------------------------------------------------

@dataclass
class Upload:
    """One upload's record (what `<id>.json` holds)."""

    id: str
    owner: dict[str, str | None]
    length: int
    offset: int
    metadata: dict[str, str]
    created: float
    expires: float
    completed: bool = False      # the last byte landed and the handler ran (or there is none)
    result: dict[str, Any] | None = None
    problem: dict[str, Any] | None = None   # the handler's problem document: the upload failed
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def purpose(self) -> str:
        return self.metadata.get("purpose") or DEFAULT_PURPOSE

    def describe(self) -> dict[str, Any]:
        """The JSON description `GET /api/v1/transfer/<id>` answers its owner."""
        state = "failed" if self.problem else "complete" if self.completed else "uploading"
        document: dict[str, Any] = {"id": self.id, "offset": self.offset, "length": self.length,
                                    "complete": self.completed and not self.problem, "state": state,
                                    "purpose": self.purpose, "metadata": dict(self.metadata),
                                    "expires": http_date(self.expires)}
        if self.result is not None:
            document["result"] = self.result
        if self.problem is not None:
            document["problem"] = self.problem
        return document

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "owner": self.owner, "length": self.length, "offset": self.offset,
                "metadata": self.metadata, "created": self.created, "expires": self.expires,
                "completed": self.completed, "result": self.result, "problem": self.problem, "extra": self.extra}


def http_date(seconds: float) -> str:
    """An HTTP date (RFC 9110), the form of `Upload-Expires`."""
    return email.utils.formatdate(seconds, usegmt=True)


class UploadStore:
    """The uploads of one server, in `root`. `clock` returns seconds since the epoch (injected
    by tests to expire uploads); `expires_after` is the idle lifetime of an upload in seconds,
    renewed by every PATCH; `max_bytes` is `Tus-Max-Size`."""

    def __init__(self, root: Path, *, max_bytes: int, expires_after: float,
                 clock: Callable[[], float] = time.time):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.expires_after = float(expires_after)
        self.clock = clock
        self._held = threading.local()   # the upload ids whose lock this thread holds
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- paths and records

    def data_path(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.bin"

    def _record_path(self, upload_id: str) -> Path:
        return self.root / f"{upload_id}.json"

    def _read(self, upload_id: str) -> Upload | None:
        if not _ID.fullmatch(upload_id):
            return None
        try:
            document = json.loads(self._record_path(upload_id).read_text())
        except FileNotFoundError:
            return None
        return Upload(**document)

    def _write(self, upload: Upload) -> None:
        """Replace the record atomically and durably (temporary file, fsync, rename, fsync dir)."""
        path = self._record_path(upload.id)
        temporary = path.with_suffix(".json.tmp")
        with open(temporary, "w") as out:
            json.dump(upload.as_json(), out, separators=(",", ":"))
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
        _fsync_dir(self.root)

    def find(self, upload_id: str, principal: Any) -> Upload:
        """The upload `upload_id` of `principal`: 404 when there is none or it is another's
        (nobody learns that someone else's upload exists), 410 when it expired."""
        upload = self._read(upload_id)
        if upload is None or upload.owner != owner_of(principal):
            raise Problem(ProblemType.NOT_FOUND, "no such upload")
        if upload.expires <= self.clock():
            raise Problem(ProblemType.UPLOAD_EXPIRED, "this upload expired; create a new one",
                          extra={"expired": http_date(upload.expires)})
        return upload

    @contextlib.contextmanager
    def locked(self, upload_id: str) -> Iterator[None]:
        """Hold the upload's write lock, or raise UploadBusy (423) at once: one writer per upload.
        Re-entrant within a thread (a completion handler, or code holding the lock, may call
        `terminate`): flock alone would refuse the same thread's second open of the lock file."""
        held = self._held.__dict__.setdefault("ids", set())
        if upload_id in held:
            yield
            return
        fd = os.open(self.root / f"{upload_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise Problem(ProblemType.UPLOAD_BUSY, "another request is writing this upload; "
                              "retry after it ends (HEAD for the offset)", headers={"Retry-After": "1"}) from None
            held.add(upload_id)
            try:
                yield
            finally:
                held.discard(upload_id)
        finally:
            os.close(fd)   # releases the flock

    # -- the operations

    def create(self, principal: Any, length: int, metadata: dict[str, str]) -> Upload:
        """A new, empty upload of `length` bytes owned by `principal`."""
        if length > self.max_bytes:
            raise Problem(ProblemType.PAYLOAD_TOO_LARGE, f"Upload-Length is over Tus-Max-Size ({self.max_bytes} bytes)",
                          extra={"max_bytes": self.max_bytes})
        purpose = metadata.get("purpose") or DEFAULT_PURPOSE
        if purpose not in _HANDLERS:
            raise _bad(f"unknown purpose {purpose!r}; one of {', '.join(purposes())}", purposes=list(purposes()))
        now = self.clock()
        upload = Upload(id=secrets.token_hex(16), owner=owner_of(principal), length=length, offset=0,
                        metadata=metadata, created=now, expires=now + self.expires_after)
        with open(self.data_path(upload.id), "xb") as out:
            os.fsync(out.fileno())
        self._write(upload)
        return upload

    def append(self, upload_id: str, principal: Any, offset: int, stream: BinaryIO, *,
               content_length: int | None, checksum: tuple[str, bytes] | None) -> Upload:
        """Write the bytes of `stream` at `offset` (a PATCH, or the body of a creation), under
        the upload's lock; fsync, then record the new offset. On completion run the purpose's
        handler (once). Returns the upload as recorded."""
        with self.locked(upload_id):
            upload = self.find(upload_id, principal)   # re-read under the lock: the offset is current
            if offset != upload.offset:
                raise Problem(ProblemType.OFFSET_MISMATCH,
                              f"Upload-Offset is {offset} but the upload is at {upload.offset}; HEAD, then resume there",
                              headers={"Upload-Offset": str(upload.offset)}, extra={"offset": upload.offset})
            remaining = upload.length - upload.offset
            if content_length is not None and content_length > remaining:
                raise Problem(ProblemType.PAYLOAD_TOO_LARGE,
                              f"the body ({content_length} bytes) runs past Upload-Length ({remaining} bytes remain)",
                              extra={"max_bytes": remaining})
            written, cut = self._stream_into(upload, stream, remaining, checksum)
            if written:
                upload.offset += written
                upload.expires = self.clock() + self.expires_after
                self._write(upload)
            if cut is not None:
                raise cut
            if upload.offset == upload.length and not upload.completed:
                self._complete(upload, principal)
            return upload

    def _stream_into(self, upload: Upload, stream: BinaryIO, remaining: int,
                     checksum: tuple[str, bytes] | None) -> tuple[int, Problem | None]:
        """Copy the body to the data file in pieces (never whole in memory) and fsync it.
        Returns the bytes kept and the problem to answer after recording them: a checksum
        mismatch keeps none (460); a body cut short keeps what arrived when there is no
        checksum to verify it (tus: the client resumes from the offset)."""
        digest = hashlib.new(checksum[0]) if checksum else None
        written = 0
        cut: Problem | None = None
        with open(self.data_path(upload.id), "r+b") as out:
            out.truncate(upload.offset)   # bytes past the recorded offset were never reported
            out.seek(upload.offset)
            while True:
                try:
                    piece = stream.read(min(READ_SIZE, remaining - written + 1))
                except Exception as exc:   # the client went away mid-body (werkzeug's ClientDisconnected, OSError)
                    cut = _bad(f"the request body ended early ({exc.__class__.__name__})")
                    break
                if not piece:
                    break
                if written + len(piece) > remaining:
                    out.truncate(upload.offset)
                    return 0, Problem(ProblemType.PAYLOAD_TOO_LARGE, "the body runs past Upload-Length",
                                      extra={"max_bytes": remaining})
                out.write(piece)
                if digest is not None:
                    digest.update(piece)
                written += len(piece)
            if checksum is not None and (cut is not None or digest.digest() != checksum[1]):
                out.truncate(upload.offset)   # tus Checksum: the PATCH's bytes are discarded
                if cut is not None:
                    return 0, cut
                return 0, Problem(ProblemType.CHECKSUM_MISMATCH,
                                  f"the body's {checksum[0]} does not match Upload-Checksum; its bytes were discarded",
                                  headers={"Upload-Offset": str(upload.offset)}, extra={"offset": upload.offset})
            out.flush()
            os.fsync(out.fileno())   # durable before the offset that reports it is written
        return written, cut

    def _complete(self, upload: Upload, principal: Any) -> None:
        """Run the purpose's handler once (the caller holds the lock); record its outcome."""
        handler = _HANDLERS.get(upload.purpose)
        try:
            upload.result = handler(upload, self.data_path(upload.id), principal) if handler else None
        except Problem as problem:
            upload.problem = {"type": problem.kind.uri, "title": problem.title, "status": problem.status,
                              "detail": problem.detail, **problem.extra}
        upload.completed = True
        self._write(upload)
        if upload.problem is not None:
            raise self.failure(upload)

    def failure(self, upload: Upload) -> Problem | None:
        """The problem a failed upload answers (its handler's)."""
        if upload.problem is None:
            return None
        return Problem(_problem_kind(upload.problem), upload.problem["detail"], status=upload.problem["status"],
                       extra={k: v for k, v in upload.problem.items() if k not in ("type", "title", "status", "detail")})

    def terminate(self, upload_id: str, principal: Any) -> None:
        """Remove an upload (tus Termination); 423 while a PATCH writes it."""
        with self.locked(upload_id):
            self.find(upload_id, principal)
            self._remove(upload_id)

    def _remove(self, upload_id: str) -> None:
        for path in (self._record_path(upload_id), self.data_path(upload_id), self.root / f"{upload_id}.lock"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def sweep(self) -> list[str]:
        """Remove every expired upload not being written; the ids removed."""
        now = self.clock()
        removed = []
        for record in sorted(self.root.glob("*.json")):
            upload_id = record.stem
            upload = self._read(upload_id)
            if upload is None or upload.expires > now:
                continue
            try:
                with self.locked(upload_id):
                    self._remove(upload_id)
            except Problem:
                continue   # being written: it is not idle; the next sweep decides
            removed.append(upload_id)
        return removed


def _problem_kind(problem: Mapping[str, Any]) -> ProblemType:
    slug = str(problem.get("type", "")).rsplit("/", 1)[-1]
    try:
        return ProblemType(slug)
    except ValueError:
        return ProblemType.ERROR


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
