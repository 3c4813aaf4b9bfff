"""Large pushes as one resumable upload: the outbox bundle (docs/protocol.md §4.7).

A device back from days offline may hold thousands of writes. Past a threshold (`over`
sendable entries, or `over_bytes` bytes of their fields) the sync engine sends them as one
bundle instead of push after push:

1. build: the oldest sendable entries (at most the server's `push_bundle.max_mutations`) are
   marked `sent` (as a push does, so a crash resends the same seqs), written as push mutations
   in JSON-array frames of about `FRAME_BYTES`, and sealed with a fresh key into a file next
   to the store (`fieldsync.transfer.chunks`, kind `outbox`). The key, the manifest, the seqs
   and the file's name go into `_sync_state` in one transaction;
2. upload: the file goes over tus (`fieldsync.client.tus`, purpose `outbox`); the upload's URL
   is stored as soon as it exists, so a cut, or an app restart, resumes the same upload from
   the server's offset;
3. commit: `POST /api/v1/sync/push-bundle` sends the key and manifest with the upload's URL;
   the answer is a push answer and settles the outbox the same way (entries -> `received`,
   results later by pull). Then the state and the file are dropped.

The outbox may change meanwhile: the bundle carries the seqs it was built from, and the
entries written since go with the next push. A bundle the server cannot take (refused,
gone, an upload endpoint the server lacks) is dropped and this cycle pushes plainly: the
seqs are the same, so the dedupe ledger keeps whatever the server already had exactly-once.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import uuid
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from fieldsync.client import outbox
from fieldsync.client.bundles import BundleProgress
from fieldsync.client.reports import SyncReport
from fieldsync.client.store import LocalStore
from fieldsync.client.tus import TusClient
from fieldsync.defs.values import format_datetime
from fieldsync.errors import ProtocolError
from fieldsync.transfer.chunks import key_text, new_key, write_payload

__all__ = ["BUNDLE_OVER", "BUNDLE_OVER_BYTES", "OutboxBundles"]

BUNDLE_OVER = 2000                 # sendable entries from which the outbox goes as a bundle
BUNDLE_OVER_BYTES = 4 * 1024 * 1024  # ... or bytes of their fields' JSON
FRAME_BYTES = 1024 * 1024          # JSON bytes per frame (one sealed chunk)
UPLOAD_CHUNK = 1024 * 1024         # bytes per tus PATCH: what a cut may cost
STATE = "outbox_bundle"            # the `_sync_state` key of the bundle under way
PURPOSE = "outbox"
KIND = "outbox"
MAX_BUNDLES = 16                   # per sync cycle: a misbehaving server cannot spin the device

AnswerHandler = Callable[[Mapping[str, Any], list, SyncReport], None]


class OutboxBundles:
    """Builds, uploads and commits outbox bundles for one store (used by the sync engine)."""

    def __init__(self, store: LocalStore, wire, *, clock: Callable[[], dt.datetime], over: int | None = BUNDLE_OVER,
                 over_bytes: int | None = BUNDLE_OVER_BYTES, upload_chunk: int = UPLOAD_CHUNK, retries: int = 2,
                 tus: TusClient | None = None):
        self.store = store
        self.wire = wire
        self.clock = clock
        self.over = over
        self.over_bytes = over_bytes
        self.tus = tus or TusClient(wire, chunk_size=upload_chunk, retries=retries)
        self.plain_only = False   # set when a bundle failed in this cycle: push plainly until the next

    # -- when

    def _server_limit(self) -> int | None:
        """The server's bundle size in mutations, or None when it takes no bundles."""
        offer = (self.store.state("capabilities") or {}).get("push_bundle")
        limit = offer.get("max_mutations") if isinstance(offer, dict) else None
        return limit if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0 else None

    def due(self) -> bool:
        """Whether a bundle is under way, or the sendable outbox is past a threshold."""
        if self.store.state(STATE) is not None:
            return True
        if self.plain_only or (self.over is None and self.over_bytes is None) or self._server_limit() is None:
            return False
        with self.store.lock:
            count, size = self.store.conn.execute(
                "SELECT count(*), coalesce(sum(length(fields)), 0) FROM \"_outbox\" "
                "WHERE status IN ('pending', 'sent')").fetchone()
        return ((self.over is not None and count >= self.over)
                or (self.over_bytes is not None and size >= self.over_bytes))

    # -- the cycle

    def push(self, report: SyncReport, settle: AnswerHandler,
             progress: Callable[[BundleProgress], None] | None = None) -> None:
        """Send bundles while one is under way or due; `settle(answer, seqs, report)` stores
        each commit's push answer (the engine's `_store_push_answer`), `progress` hears how far
        each upload got (bytes the server confirmed; rows of the chunks wholly among them).
        Transport errors leave the bundle in the state for the next cycle, which resumes it."""
        self.plain_only = False
        for _ in range(MAX_BUNDLES):
            if not self.due():
                return
            pending = self.store.state(STATE)
            if pending is not None and not Path(pending["file"]).exists():
                self._drop(pending, delete_upload=True)   # its file was removed: build it again
                continue
            pending = pending or self._build()
            if pending is None:
                return
            try:
                url = self.tus.upload(pending["file"], {"purpose": PURPOSE}, resume_url=pending.get("upload"),
                                      on_url=self._remember_upload, progress=_reporter(pending, progress))
                pending = {**pending, "upload": url}
                answer = self._commit(pending, url)
            except ProtocolError:
                # a server without bundles, an upload refused or gone, a commit refused: the
                # entries are `sent` with their seqs, and the plain push that follows sends them
                self._drop(pending, delete_upload=True)
                self.plain_only = True
                return
            self._drop(pending, delete_upload=False)   # the server removed it once committed
            settle(answer, pending["seqs"], report)

    def _remember_upload(self, url: str) -> None:
        with self.store.transaction() as conn:
            pending = self.store.state_in(conn, STATE)
            if pending is not None:
                self.store.set_state(conn, **{STATE: {**pending, "upload": url}})

    def _commit(self, pending: Mapping[str, Any], url: str) -> dict[str, Any]:
        body: dict[str, Any] = {"device_id": self.store.state("device_id"), "schema_version": self.store.schema_version,
                                "sent_at": format_datetime(self.clock()), "upload": url, "key": pending["key"],
                                "manifest": pending["manifest"]}
        offset = self.wire.clock_offset.estimate_ms(self.clock())
        if offset is not None:
            body["clock_offset_ms"] = offset
        return self.wire.call("POST", "/push-bundle", body)

    # -- building and dropping

    def _file_for(self, bundle_id: str) -> str:
        if self.store.path == ":memory:":
            return os.path.join(tempfile.gettempdir(), f"fieldsync-outbox-{bundle_id}.bundle")
        return f"{self.store.path}.outbox-{bundle_id}.bundle"

    def _build(self) -> dict[str, Any] | None:
        """Seal the oldest sendable entries into a bundle file; its state, stored."""
        entries = outbox.entries_to_send(self.store, self._server_limit() or 0)
        if not entries:
            return None
        seqs = [e["seq"] for e in entries]
        with self.store.transaction() as conn:
            # marked before sending: after a crash they are resent with the same seqs (invariant 2).
            # The entries are every sendable one up to the last seq (writes since have higher seqs)
            conn.execute("UPDATE \"_outbox\" SET status = 'sent', attempts = attempts + 1 "
                         "WHERE seq <= ? AND status IN ('pending', 'sent')", (seqs[-1],))
        bundle_id = str(uuid.uuid4())
        key = new_key()
        path = self._file_for(bundle_id)
        partial = path + ".partial"
        with open(partial, "wb") as out:
            manifest = write_payload(out, _frames(entries), key=key, bundle_id=bundle_id, kind=KIND)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)   # whole or absent: a crash while writing leaves no bundle
        manifest.created_at = format_datetime(self.clock())
        manifest.schema_version = self.store.schema_version
        pending = {"bundle_id": bundle_id, "file": path, "key": key_text(key), "manifest": manifest.to_dict(),
                   "seqs": seqs, "upload": None}
        with self.store.transaction() as conn:
            self.store.set_state(conn, **{STATE: pending})
        return pending

    def _drop(self, pending: Mapping[str, Any], *, delete_upload: bool) -> None:
        """Forget the bundle: its state, its file and (when asked) the server's upload."""
        with self.store.transaction() as conn:
            stored = self.store.state_in(conn, STATE) or {}
            self.store.set_state(conn, **{STATE: None})
        try:
            os.unlink(pending["file"])
        except FileNotFoundError:
            pass
        upload = pending.get("upload") or stored.get("upload")   # set by on_url during the upload
        if delete_upload and upload:
            try:
                self.tus.delete(upload)
            except Exception:   # best effort: the server expires idle uploads on its own
                pass

    def discard(self) -> None:
        """Drop a bundle under way (its entries stay `sent` and go with the next push)."""
        pending = self.store.state(STATE)
        if pending is not None:
            self._drop(pending, delete_upload=True)


def _reporter(pending: Mapping[str, Any], progress: Callable[[BundleProgress], None] | None):
    """The tus client's `progress(sent, total)` as BundleProgress for the app, or None."""
    if progress is None:
        return None
    chunks = pending["manifest"]["chunks"]
    rows_total = sum(c["rows"] for c in chunks)

    def report(sent: int, total: int) -> None:
        rows, end = 0, 0
        for chunk in chunks:
            end += chunk["size"]
            if end > sent:
                break
            rows += chunk["rows"]
        progress(BundleProgress(pending["bundle_id"], sent, total, rows, rows_total))
    return report


def _mutation_text(entry) -> str:
    """`json.dumps(outbox.as_mutation(entry))`, without decoding and encoding again the fields,
    which the outbox keeps as JSON text already."""
    base = entry["base_version"]
    return (f'{{"seq":{int(entry["seq"])},"entity":{_string(entry["entity"])},"op":{_string(entry["op"])},'
            f'"id":{_string(entry["record_id"])},"base_version":{"null" if base is None else int(base)},'
            f'"client_time":{_string(entry["client_time"])},"fields":{entry["fields"]}}}')


def _string(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)   # what json.dumps writes


def _frames(entries) -> Iterator[tuple[bytes, int, str | None]]:
    """The entries as push mutations, in JSON arrays of about FRAME_BYTES each."""
    parts: list[str] = []
    size = 0
    for entry in entries:
        text = _mutation_text(entry)
        if parts and size + len(text) > FRAME_BYTES:
            yield ("[" + ",".join(parts) + "]").encode(), len(parts), None
            parts, size = [], 0
        parts.append(text)
        size += len(text) + 1
    if parts:
        yield ("[" + ",".join(parts) + "]").encode(), len(parts), None
