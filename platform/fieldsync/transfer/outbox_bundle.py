"""Outbox bundles: a long-offline device's push as one resumable upload (docs/protocol.md §4.7).

The device seals its outbox — the mutations exactly as a push body carries them — into a
payload of the chunk format (`fieldsync.transfer.chunks`, kind `outbox`) under a fresh key,
uploads the sealed bytes over tus with `Upload-Metadata: purpose outbox`, and then commits it
with `POST /api/v1/sync/push-bundle`, which carries the key and the manifest over TLS. Only that
commit can read the bundle: the tus store keeps ciphertext alone, and the key lives in the
commit request's memory, never in a file, a log or a problem document (invariant 7).

`read_bundle` opens every chunk before anything is used — digest against the manifest,
AES-GCM bound to its index, the last-chunk flag and the bundle id — so a changed, moved,
replayed or cut chunk refuses the bundle whole. `receive_bundle` then hands the mutations to
`receive_push` in push-sized batches: the same ledger, the same "received" (invariant 1) and
the same exactly-once effect (invariant 2) as plain pushes, so a bundle uploaded twice, or
one whose mutations were partly pushed already, applies each mutation once. The upload is
removed once every batch is durable.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from fieldsync.errors import JsonRefused, Problem, ProblemType
from fieldsync.transfer.chunks import ChunkRefused, Manifest, key_bytes
from fieldsync.transfer.tus import Upload, UploadStore, on_complete
from fieldsync.untrusted import load_json, unstorable_paths

__all__ = ["KIND", "PURPOSE", "BundleReceipt", "read_bundle", "receive_bundle", "register_outbox_purpose",
           "upload_id_of"]

PURPOSE = "outbox"          # the tus upload's purpose (Upload-Metadata)
KIND = "outbox"             # the manifest's kind
COMMIT_PATH = "/api/v1/sync/push-bundle"
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")   # the escape of a UTF-16 surrogate
READ_SIZE = 1 << 20


def _refused(detail: str) -> Problem:
    return Problem(ProblemType.BUNDLE_REFUSED, detail)


def upload_id_of(value: Any) -> str:
    """The upload id of `value`: an id, or the upload's URL (absolute or a path) as tus's
    `Location` gave it."""
    if isinstance(value, str) and len(value) <= 2048:
        candidate = value.rstrip("/").rsplit("/", 1)[-1]
        if _UPLOAD_ID.fullmatch(candidate):
            return candidate
    raise Problem(ProblemType.MALFORMED_REQUEST, "upload: must be the id or the URL of an upload",
                  extra={"errors": [{"field": "upload", "reason": "must be the id or the URL of an upload"}]})


def outbox_upload_completed(upload: Upload, path: Path, principal: Any) -> dict[str, Any]:
    """The tus completion hook of purpose `outbox`: the bytes are ciphertext whose key has
    not reached the server yet, so all there is to say is where to commit them."""
    return {"commit": COMMIT_PATH, "upload": upload.id}


def register_outbox_purpose() -> None:
    """Make `outbox` a purpose tus uploads may name (called by `create_app`)."""
    on_complete(PURPOSE)(outbox_upload_completed)


def read_bundle(path: Path, manifest_document: Any, key_text: Any, *, max_mutations: int) -> list[dict[str, Any]]:
    """The mutations of the sealed outbox bundle at `path`, every chunk checked and opened
    before any is returned: a Problem (`bundle-refused`, or `payload-too-large` past
    `max_mutations`) otherwise, naming what failed but never the key."""
    try:
        manifest = Manifest.from_dict(manifest_document)
        key = key_bytes(key_text)
    except ChunkRefused as exc:
        raise _refused(f"the manifest or key is malformed: {exc}") from None
    if manifest.kind != KIND:
        raise _refused(f"a push bundle's manifest has kind {KIND!r}, not {manifest.kind!r}")
    claimed = sum(c.rows for c in manifest.chunks)
    if claimed > max_mutations:
        raise Problem(ProblemType.PAYLOAD_TOO_LARGE, f"the bundle holds {claimed} mutations; at most {max_mutations}",
                      extra={"max_mutations": max_mutations})
    if path.stat().st_size != manifest.size:
        raise _refused(f"the upload has {path.stat().st_size} bytes; the manifest names {manifest.size}")
    opener = manifest.opener(key)
    whole = hashlib.sha256()
    mutations: list[dict[str, Any]] = []
    with open(path, "rb") as data:
        for index, info in enumerate(manifest.chunks):
            sealed = data.read(info.size)
            whole.update(sealed)
            try:
                frame = manifest.open_chunk(opener, index, sealed)
            except ChunkRefused as exc:
                raise _refused(str(exc)) from None
            mutations.extend(_frame_mutations(frame, index, info.rows))
            if len(mutations) > max_mutations:
                raise Problem(ProblemType.PAYLOAD_TOO_LARGE, f"the bundle holds over {max_mutations} mutations",
                              extra={"max_mutations": max_mutations})
    if whole.hexdigest() != manifest.sha256:
        raise _refused("the upload's SHA-256 is not the manifest's")
    return mutations


def _frame_mutations(frame: bytes, index: int, rows: int) -> list[dict[str, Any]]:
    """The mutations one opened frame holds: a JSON array of push mutations."""
    try:
        value = load_json(frame)
    except JsonRefused as exc:
        raise _refused(f"chunk {index} {exc}") from None
    if not isinstance(value, list) or len(value) != rows:
        raise _refused(f"chunk {index} is not an array of the {rows} mutations the manifest counts")
    # as in a push body: NUL and lone surrogates outside field values would reach the database
    # as an entity name or an id; field values are checked when the batch is applied. Most
    # frames hold neither, and are not walked.
    if b"\\u0000" not in frame and b"\x00" not in frame and not _SURROGATE_ESCAPE.search(frame):
        return value
    for where, reason in unstorable_paths(value, skip=("[*].fields",)):
        raise Problem(ProblemType.MALFORMED_REQUEST, f"chunk {index} {where}: {reason}",
                      extra={"errors": [{"field": f"chunk {index} {where}", "reason": reason}]})
    return value


class BundleReceipt:
    """The receipts of a bundle's batches folded into one push answer (§4.2)."""

    def __init__(self) -> None:
        self.device_id: str | None = None
        self.received: list[int] = []
        self.results: list[dict[str, Any]] = []
        self.write_checkpoint = 0
        self.unsettled = 0

    def add(self, receipt) -> None:
        self.device_id = receipt.device_id
        self.received.extend(receipt.received)
        self.results.extend(receipt.results)
        self.write_checkpoint = max(self.write_checkpoint, receipt.write_checkpoint)
        self.unsettled = receipt.unsettled

    def to_wire(self, bundle_id: str, mutations: int) -> dict[str, Any]:
        return {"device_id": self.device_id, "bundle_id": bundle_id, "mutations": mutations,
                "received": self.received, "results": self.results, "write_checkpoint": self.write_checkpoint,
                "unsettled": self.unsettled}


def receive_bundle(uploads: UploadStore, principal: Any, body: Mapping[str, Any], *, max_mutations: int,
                   batch: int, check: Callable[[list[dict[str, Any]]], None],
                   receive: Callable[[list[dict[str, Any]]], Any]) -> dict[str, Any]:
    """Commit the outbox bundle `body` names: read and check it whole (`check` refuses
    mutations a push would refuse), then `receive(batch)` (receive_push) each `batch`
    mutations in order, and remove the upload once all are durable. The push answer.

    The upload is `principal`'s only (another's is a 404, as tus answers), complete, and of
    purpose `outbox`. Held under the upload's lock, so a second commit meanwhile is a 423 and
    never reads a file being removed."""
    upload_id = upload_id_of(body.get("upload"))
    with uploads.locked(upload_id):
        upload = uploads.find(upload_id, principal)
        if upload.purpose != PURPOSE:
            raise _refused(f"upload {upload_id} is not an outbox bundle (purpose {upload.purpose!r})")
        if not upload.completed or upload.offset != upload.length:
            raise Problem(ProblemType.BUNDLE_INCOMPLETE,
                          f"upload {upload_id} holds {upload.offset} of {upload.length} bytes; finish it first",
                          extra={"offset": upload.offset, "length": upload.length})
        if upload.problem is not None:
            raise _refused(f"upload {upload_id} failed")
        mutations = read_bundle(uploads.data_path(upload_id), body.get("manifest"), body.get("key"),
                                max_mutations=max_mutations)
        check(mutations)
        receipt = BundleReceipt()
        for start in range(0, max(len(mutations), 1), batch):   # an empty bundle still checks the device
            receipt.add(receive(mutations[start:start + batch]))   # NotReceived: the device commits again
        # every mutation is durable: the ciphertext has served its purpose. Removed under the
        # same lock (re-entrant), so no other commit reads it between; a later commit of this
        # upload is a 404, and the device sends the same seqs again, which the ledger dedupes
        uploads.terminate(upload_id, principal)
    return receipt.to_wire(str(body["manifest"]["bundle_id"]), len(mutations))
