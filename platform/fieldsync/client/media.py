"""The device's media queue: files waiting to reach the media store, apart from the outbox.

    ref = client.attach_media("expense", "receipt", "/photos/r1.jpg", "image/jpeg")
    client.insert("expense", {..., "receipt": ref})   # the record syncs at once
    client.sync()                                     # records first, then the files

`attach_media` mints the reference offline (`fsmedia:<uuidv7>`) and records the file in the SDK
table `_media` (not from the definitions): a path the app keeps until the upload is done, or the
bytes themselves (then inside the device store, encrypted with it). `MediaQueue.run` uploads
what is due after the record sync: it asks the server where the bytes go
(`POST /api/v1/media/<ref>/upload`), sends them — over tus through the SDK's own transport in
the embedded store, resuming from the server's offset after a cut (the upload URL is kept in
`_media.resume_url`); as a presigned POST straight to S3 at scale — and says it is done
(`.../complete`). A failure is retried with `fieldsync.backoff`; a refusal (a file over the
field's `max_bytes`, a type it does not take) is final and shown in `status()`. Nothing here can
fail a record sync (docs/protocol.md §16.5).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from fieldsync.backoff import Backoff
from fieldsync.client.tus import TusClient
from fieldsync.errors import ClientError, ProtocolError, TransportError
from fieldsync.ids import new_id

__all__ = ["MEDIA_DDL", "MediaQueue", "MediaReport", "post_form"]

MEDIA_PREFIX = "/api/v1/media"
MEDIA_DDL = """CREATE TABLE IF NOT EXISTS "_media" (
    "ref" TEXT PRIMARY KEY NOT NULL,
    "entity" TEXT NOT NULL,
    "field" TEXT NOT NULL,
    "path" TEXT,
    "data" BLOB,
    "content_type" TEXT NOT NULL,
    "size" INTEGER NOT NULL,
    "state" TEXT NOT NULL DEFAULT 'pending' CHECK ("state" IN ('pending', 'uploaded', 'failed')),
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "next_attempt_at" TEXT,
    "resume_url" TEXT,
    "error" TEXT,
    "created_at" TEXT NOT NULL
) WITHOUT ROWID"""

# Object stores answer a POST for themselves (S3): (url, form fields, file bytes, content type)
# -> HTTP status. Injectable for tests; the default uses the standard library.
FormPoster = Callable[[str, Mapping[str, str], bytes, str], int]


@dataclass(frozen=True)
class MediaReport:
    """One pass over the media queue."""

    uploaded: int = 0      # files the media store now holds
    failed: int = 0        # refused for good this pass (see `Client.media()` for the reason)
    retrying: int = 0      # failed this pass for a reason that passes (network, server busy)


def post_form(url: str, fields: Mapping[str, str], data: bytes, content_type: str) -> int:
    """A multipart/form-data POST of `fields` then `file` (a presigned S3 POST); the status."""
    import urllib.error
    import urllib.request
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="upload"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n".encode() + data + f"\r\n--{boundary}--\r\n".encode())
    request = urllib.request.Request(url, data=b"".join(parts), method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError) as exc:
        raise TransportError(f"the object store did not answer: {exc}") from None


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class MediaQueue:
    """The `_media` table of one store and the uploads it drives through `wire`."""

    def __init__(self, store, wire, *, clock: Callable[[], dt.datetime], backoff: Backoff | None = None,
                 form_poster: FormPoster = post_form, chunk_size: int = 4 * 1024 * 1024,
                 sleep: Callable[[float], None] = time.sleep):
        self.store = store
        self.wire = wire
        self.clock = clock
        self.backoff = backoff or Backoff(base=5.0, cap=3600.0)
        self.form_poster = form_poster
        self.chunk_size = chunk_size
        self.sleep = sleep
        self._table = False   # `_media` is made on first use: a store without media never has it

    def _exists(self, create: bool = False) -> bool:
        if not self._table:
            with self.store.lock:
                self._table = self.store.conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_media'").fetchone() is not None
            if not self._table and create:
                with self.store.write() as conn:
                    conn.execute(MEDIA_DDL)
                    # inside client.transaction() the table exists only once the block commits
                    self._table = not self.store.batch_depth
                return True
        return self._table

    # -- the app's side ---------------------------------------------------------------------------
    def attach(self, entity: str, field: str, source: bytes | str | os.PathLike, content_type: str) -> str:
        """Queue `source` (bytes, or the path of a file the app keeps until it is uploaded) for
        media field `entity.field`; the reference to put in the record."""
        if not isinstance(content_type, str) or "/" not in content_type:
            raise ClientError("content_type must be a MIME type such as image/jpeg")
        if isinstance(source, (bytes, bytearray, memoryview)):
            path, data, size = None, bytes(source), len(source)
        else:
            path, data = os.fspath(source), None
            size = os.path.getsize(path)
        ref = f"fsmedia:{new_id(self.clock())}"
        self._exists(create=True)
        with self.store.write() as conn:   # joins client.transaction()
            conn.execute('INSERT INTO "_media" (ref, entity, field, path, data, content_type, size, created_at) '
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (ref, entity, field, path, data, content_type.lower(), size, _iso(self.clock())))
        return ref

    def items(self) -> list[dict[str, Any]]:
        """Every queued or finished file (without its bytes), oldest first."""
        if not self._exists():
            return []
        with self.store.lock:
            rows = self.store.conn.execute(
                'SELECT ref, entity, field, path, content_type, size, state, attempts, next_attempt_at, error '
                'FROM "_media" ORDER BY created_at, ref').fetchall()
        return [dict(r) for r in rows]

    def counts(self) -> dict[str, int]:
        if not self._exists():
            return {"pending": 0, "uploaded": 0, "failed": 0}
        with self.store.lock:
            rows = self.store.conn.execute('SELECT state, count(*) FROM "_media" GROUP BY state').fetchall()
        found = {r[0]: r[1] for r in rows}
        return {state: found.get(state, 0) for state in ("pending", "uploaded", "failed")}

    # -- the sync side ----------------------------------------------------------------------------
    def run(self) -> MediaReport:
        """Upload every file that is due, oldest first. Never raises for a file: a network
        failure stops the pass (the next sync tries again), a refusal fails that file alone."""
        if not self._exists():
            return MediaReport()
        now = _iso(self.clock())
        with self.store.lock:
            due = [r[0] for r in self.store.conn.execute(
                'SELECT ref FROM "_media" WHERE state = \'pending\' AND (next_attempt_at IS NULL OR next_attempt_at <= ?) '
                "ORDER BY created_at, ref", (now,)).fetchall()]
        uploaded = failed = retrying = 0
        for ref in due:
            try:
                self._upload(ref)
                uploaded += 1
            except TransportError as exc:
                self._later(ref, str(exc), getattr(exc, "retry_after", None))
                retrying += 1
                break   # the network or the server is down: the rest waits for the next pass
            except ProtocolError as exc:
                if exc.status in (409, 423):   # not in the store yet, or busy: again later
                    self._later(ref, str(exc), None)
                    retrying += 1
                    continue
                self._set(ref, state="failed", error=str(exc))
                failed += 1
            except OSError as exc:   # the app's file is gone or unreadable: nothing to retry with
                self._set(ref, state="failed", error=f"the file cannot be read: {exc.strerror or exc}")
                failed += 1
        return MediaReport(uploaded=uploaded, failed=failed, retrying=retrying)

    def _row(self, ref: str) -> dict[str, Any]:
        with self.store.lock:
            return dict(self.store.conn.execute('SELECT * FROM "_media" WHERE ref = ?', (ref,)).fetchone())

    def _set(self, ref: str, **values: Any) -> None:
        columns = ", ".join(f'"{k}" = ?' for k in values)
        with self.store.transaction() as conn:
            conn.execute(f'UPDATE "_media" SET {columns} WHERE ref = ?', (*values.values(), ref))

    def _later(self, ref: str, error: str, retry_after: float | None) -> None:
        row = self._row(ref)
        delay = self.backoff.delay(row["attempts"], retry_after=retry_after)
        self._set(ref, attempts=row["attempts"] + 1, error=error,
                  next_attempt_at=_iso(self.clock() + dt.timedelta(seconds=delay)))

    def _call(self, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        payload = json.dumps(body or {}).encode()
        status, headers, data = self.wire.exchange("POST", MEDIA_PREFIX + path, {
            "Content-Type": "application/json", "Accept": "application/json"}, payload)
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {}
        if 200 <= status < 300:
            return answer
        if status in (408, 429) or status >= 500:
            raise TransportError(f"POST {path}: HTTP {status}")
        raise ProtocolError(status, answer if isinstance(answer, dict) else None)

    def _upload(self, ref: str) -> None:
        row = self._row(ref)
        source = row["data"] if row["data"] is not None else row["path"]
        try:
            target = self._call(f"/{ref}/upload", {"entity": row["entity"], "field": row["field"],
                                                   "content_type": row["content_type"], "size": row["size"]})["upload"]
        except ProtocolError as exc:
            if exc.status != 409 or (exc.problem or {}).get("detail", "").find("already uploaded") < 0:
                raise
            target = None   # uploaded by an earlier pass whose answer was lost
        if target is not None and target["method"] == "tus":
            # a short retry inside the pass (a dropped chunk); a longer outage waits for the
            # queue's own backoff instead of holding the sync
            tus = TusClient(self.wire, chunk_size=self.chunk_size, retries=2,
                            backoff=Backoff(base=0.2, cap=1.0, rng=self.backoff.rng), sleep=self.sleep)
            tus.upload(
                source, target["metadata"], resume_url=row["resume_url"],
                on_url=lambda url: self._set(ref, resume_url=url))
        elif target is not None and target["method"] == "s3-post":
            data = row["data"] if row["data"] is not None else _read(row["path"])
            status = self.form_poster(target["url"], target["fields"], data, row["content_type"])
            if status >= 500 or status in (408, 429):
                raise TransportError(f"the object store answered HTTP {status}")
            if not 200 <= status < 300:
                raise ProtocolError(status, {"detail": f"the object store refused the file (HTTP {status})"})
        elif target is not None:
            raise ProtocolError(400, {"detail": f"unknown upload method {target.get('method')!r}"})
        done = self._call(f"/{ref}/complete")
        if done.get("state") == "failed":
            raise ProtocolError(422, {"detail": done.get("reason") or "the media store refused the file"})
        if done.get("state") != "available":
            raise ProtocolError(409, {"detail": "the upload is not complete yet"})
        # the bytes are in the media store: the device copy goes (the app's own file stays)
        self._set(ref, state="uploaded", data=None, resume_url=None, error=None)


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
