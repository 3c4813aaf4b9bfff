"""Media objects: upload requests, completion checks and download links (docs/protocol.md §16).

`MediaService` is what the media endpoints call. It owns the `fs_media` rows outside push
batches and one store: `LocalMediaStore` (embedded, the bytes arrive through the tus server and
`accept_upload` checks and copies them in, read through the tus store's decrypting stream) or `S3MediaStore` (presigned POST and GET; `complete`
HEADs the object). Limits come from the field's definition: `max_bytes`, `content_types`, and
PHI (sealed in the local store, SSE-KMS in S3).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa

from fieldsync.defs.model import Entity, Field, Model
from fieldsync.defs.values import FieldProblem, content_type_allowed, is_media_ref, media_max_bytes
from fieldsync.errors import Problem, ProblemType
from fieldsync.media.local import LocalMediaStore, media_scope
from fieldsync.media.references import Claim, MediaBindings, bound_elsewhere
from fieldsync.media.sniff import SNIFF_BYTES, agrees
from fieldsync.store.engine import write_transaction
from fieldsync.store.sync_tables import MEDIA
from fieldsync.dependencies import MEDIA as MEDIA_DEPENDENCY

__all__ = ["MediaService", "ReportingStore", "media_store_from_config"]

CONTENT_TYPE_MAX = 255


def media_store_from_config(config, keyring):
    """The configured store: `MEDIA_STORE` "local" (under DATA_DIR/media) or s3://bucket/prefix."""
    where = str(config.get("MEDIA_STORE") or "local")
    if where.startswith("s3://"):
        from fieldsync.media.s3 import S3MediaStore
        return S3MediaStore.from_config(config)
    return LocalMediaStore(Path(config["DATA_DIR"]) / "media", keyring, url_ttl=int(config["MEDIA_URL_TTL"]))


class ReportingStore:
    """A media store whose calls report to the dependency registry (readiness, the dashboard):
    each call's success or failure as the object store's state. Signing a URL calls nothing."""

    _CALLS = ("put", "head", "remove", "first_bytes", "read")

    def __init__(self, store, dependencies):
        self._store = store
        self._dependencies = dependencies

    def __getattr__(self, name: str):
        found = getattr(self._store, name)
        if name not in self._CALLS or not callable(found):
            return found

        def call(*args, **kwargs):
            try:
                result = found(*args, **kwargs)
            except Exception as exc:
                if not isinstance(exc, (KeyError, FileNotFoundError, LookupError)):
                    self._dependencies.failed(MEDIA_DEPENDENCY, exc)
                raise
            self._dependencies.succeeded(MEDIA_DEPENDENCY)
            return result
        return call


def _unknown(ref: str) -> Problem:
    # the same answer for a reference that does not exist and one bound to somebody else
    return Problem(ProblemType.NOT_FOUND, "no media object with this reference for you")


class MediaService:
    """The media objects of one database, in `store`."""

    def __init__(self, engine: sa.Engine, store, *, clock: Callable[[], dt.datetime]):
        self.engine = engine
        self.store = store
        self.clock = clock

    # -- lookups -------------------------------------------------------------------------------
    def row(self, ref: str) -> dict[str, Any] | None:
        if not is_media_ref(ref):
            return None
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(MEDIA).where(MEDIA.c.ref == ref)).mappings().first()
        return dict(found) if found is not None else None

    def own_row(self, ref: str, principal) -> dict[str, Any]:
        """The row of `ref` when `principal` is who it is bound to; 404 otherwise."""
        row = self.row(ref)
        if row is None or bound_elsewhere(row, Claim(principal.user_id, principal.device_id)) is not None:
            raise _unknown(ref)
        return row

    @staticmethod
    def field_of(model: Model, entity_name: str | None, field_name: str | None) -> tuple[Entity, Field]:
        try:
            entity = model.entity(entity_name or "")
            field = entity.field(field_name or "")
        except KeyError:
            raise Problem(ProblemType.VALIDATION, "no such media field",
                          errors=[FieldProblem("field", "must name a media field of the entity")]) from None
        if field.type != "media":
            raise Problem(ProblemType.VALIDATION, "no such media field",
                          errors=[FieldProblem("field", "must name a media field of the entity")])
        return entity, field

    # -- upload --------------------------------------------------------------------------------
    def request_upload(self, model: Model, ref: str, principal, body: dict[str, Any], tus_url: str) -> dict[str, Any]:
        """Bind `ref` to the caller (first binding wins) and answer where its bytes go."""
        if not is_media_ref(ref):
            raise _unknown(ref)
        content_type = body.get("content_type")
        if not isinstance(content_type, str) or not content_type or len(content_type) > CONTENT_TYPE_MAX \
                or not content_type.isascii() or "/" not in content_type or any(c in content_type for c in "\r\n\x00"):
            raise Problem(ProblemType.VALIDATION, "content_type is missing or invalid",
                          errors=[FieldProblem("content_type", "must be a MIME type such as image/jpeg")])
        content_type = content_type.split(";", 1)[0].strip().lower()
        row = self.row(ref)
        inserting = row is None
        if row is None:
            entity, field = self.field_of(model, body.get("entity"), body.get("field"))
        else:
            entity, field = self.field_of(model, row["entity"], row["field"])
        if row is not None and bound_elsewhere(row, Claim(principal.user_id, principal.device_id, entity.name,
                                                          field.name)) is not None:
            raise _unknown(ref)
        if row is not None and row["state"] == "available":
            raise Problem(ProblemType.CONFLICT, "this media object is already uploaded")
        if not content_type_allowed(field, content_type):
            raise Problem(ProblemType.UNSUPPORTED_MEDIA_TYPE,
                          f"{entity.name}.{field.name} takes {', '.join(field.content_types)}, not {content_type}")
        size = body.get("size")
        limit = media_max_bytes(field)
        if isinstance(size, int) and not isinstance(size, bool) and size > limit:
            raise Problem(ProblemType.PAYLOAD_TOO_LARGE, f"{entity.name}.{field.name} takes at most {limit} bytes")
        now = self.clock()
        values = {"content_type": content_type, "state": "pending", "reason": None, "phi": field.phi}
        if row is None:
            row = {"ref": ref, "user_id": principal.user_id, "device_id": principal.device_id, "entity": entity.name,
                   "field": field.name, "record_id": None, "created_at": now, **values}
        else:
            row.update(values)
        if self.store.kind == "s3":
            target, key = self.store.upload_target(row, content_type, limit, field.phi)
            row["location"] = key
        else:
            target = {"method": "tus", "url": tus_url, "max_bytes": limit,
                      "metadata": {"purpose": "media", "ref": ref, "content_type": content_type}}
        self._save(row, inserting=inserting)
        return {"ref": ref, "state": "pending", "upload": target}

    def _save(self, row: dict[str, Any], *, inserting: bool) -> None:
        columns = {c.name for c in MEDIA.columns}
        values = {k: v for k, v in row.items() if k in columns}
        with write_transaction(self.engine) as conn:
            if inserting:
                try:
                    conn.execute(MEDIA.insert().values(**values))
                    return
                except sa.exc.IntegrityError:
                    raise Problem(ProblemType.CONFLICT, "this reference was bound meanwhile; ask again") from None
            conn.execute(MEDIA.update().where(MEDIA.c.ref == row["ref"]).values(
                **{k: v for k, v in values.items() if k != "ref"}))

    def _fail(self, row: dict[str, Any], problem: Problem) -> Problem:
        with write_transaction(self.engine) as conn:
            conn.execute(MEDIA.update().where(MEDIA.c.ref == row["ref"]).values(state="failed", reason=problem.detail))
        return problem

    def accept_upload(self, model: Model, ref: str, source, principal) -> dict[str, Any]:
        """The tus completion hook of purpose `media` (local store): size, declared and sniffed
        type against the field's limits, then into the store (sealed when PHI). `source` is the
        upload's `fieldsync.transfer.tus.StagedSource`: its plaintext is read as a stream that
        decrypts the sealed staging frames; no plaintext file is written on the way."""
        if self.store.kind != "local":
            raise Problem(ProblemType.CONFLICT, "media uploads go to the object store here, not through the platform")
        row = self.own_row(ref, principal)
        if row["state"] == "available":
            raise Problem(ProblemType.CONFLICT, "this media object is already uploaded")
        entity, field = self.field_of(model, row["entity"], row["field"])
        size = source.size
        limit = media_max_bytes(field)
        if size > limit:
            raise self._fail(row, Problem(ProblemType.PAYLOAD_TOO_LARGE,
                                          f"{entity.name}.{field.name} takes at most {limit} bytes"))
        with source.open() as f:
            head = f.read(SNIFF_BYTES)
        declared = row["content_type"] or ""
        if not content_type_allowed(field, declared) or not agrees(declared, head):
            raise self._fail(row, Problem(ProblemType.UNSUPPORTED_MEDIA_TYPE,
                                          f"the file is not the {declared} it was declared as, or "
                                          f"{entity.name}.{field.name} does not take it"))
        with source.open() as plaintext:
            location = self.store.put(ref, plaintext, scope=media_scope(entity.name, field.name) if field.phi else None)
        with write_transaction(self.engine) as conn:
            conn.execute(MEDIA.update().where(MEDIA.c.ref == ref).values(
                state="available", size=size, location=location, phi=field.phi, reason=None,
                completed_at=self.clock()))
        return {"ref": ref, "state": "available", "size": size}

    def complete(self, model: Model, ref: str, principal) -> dict[str, Any]:
        """The device says its upload finished: for S3, HEAD the object and check it."""
        row = self.own_row(ref, principal)
        if row["state"] in ("available", "failed") or self.store.kind != "s3":
            return self.describe(row)
        if row["location"] is None:
            raise Problem(ProblemType.CONFLICT, "request an upload for this reference first")
        found = self.store.head(row["location"])
        if found is None:
            raise Problem(ProblemType.CONFLICT, "the object is not in the store yet: upload it, then complete")
        entity, field = self.field_of(model, row["entity"], row["field"])
        problem = None
        if found["size"] > media_max_bytes(field):
            problem = Problem(ProblemType.PAYLOAD_TOO_LARGE, f"{entity.name}.{field.name} takes at most "
                                                             f"{media_max_bytes(field)} bytes")
        elif found["content_type"].split(";", 1)[0].strip().lower() != row["content_type"]:
            problem = Problem(ProblemType.UNSUPPORTED_MEDIA_TYPE, "the object's type is not the declared one")
        elif field.phi and found["encryption"] != "aws:kms":
            problem = Problem(ProblemType.CONFLICT, "a PHI object must be stored with SSE-KMS")
        if problem is not None:
            self.store.remove(row["location"])
            raise self._fail(row, problem)
        with write_transaction(self.engine) as conn:
            conn.execute(MEDIA.update().where(MEDIA.c.ref == ref).values(
                state="available", size=found["size"], completed_at=self.clock(), reason=None))
        row.update(state="available", size=found["size"])
        return self.describe(row)

    @staticmethod
    def describe(row: dict[str, Any]) -> dict[str, Any]:
        out = {"ref": row["ref"], "state": row["state"], "content_type": row["content_type"], "size": row["size"]}
        if row["state"] == "failed":
            out["reason"] = row["reason"]
        return out

    # -- REST writes ---------------------------------------------------------------------------
    def rest_problems(self, entity: Entity, record_id: str | None, values: Any, principal) -> list[FieldProblem]:
        """Before a REST write: a problem for each platform reference in `values` bound to another
        user or record (URLs and object keys pass: REST keeps them, docs/decisions.md)."""
        if not isinstance(values, dict) or not any(f.type == "media" and is_media_ref(values.get(f.name))
                                                   for f in entity.fields):
            return []
        with self.engine.connect() as conn:
            return MediaBindings(conn, self.clock()).check(entity, record_id or "", values,
                                                           Claim(principal.user_id, principal.device_id),
                                                           devices_only_refs=False)

    def bind_rest_write(self, entity: Entity, record: dict[str, Any], principal) -> None:
        """After a REST write: bind the platform references the record now holds (first binding
        wins; one bound meanwhile elsewhere stays unbound to this record, so it serves nobody)."""
        if not any(f.type == "media" and is_media_ref(record.get(f.name)) for f in entity.fields):
            return
        try:
            with write_transaction(self.engine) as conn:
                bindings = MediaBindings(conn, self.clock())
                if not bindings.check(entity, record["id"], record, Claim(principal.user_id, principal.device_id),
                                      devices_only_refs=False):
                    bindings.flush()
        except sa.exc.IntegrityError:
            pass

    # -- download ------------------------------------------------------------------------------
    def download_url(self, row: dict[str, Any], blob_url: str, now: int) -> str:
        """A signed link valid MEDIA_URL_TTL seconds (the caller has checked who asks)."""
        if self.store.kind == "s3":
            return self.store.download_url(row["location"], row["content_type"])
        expires, sig = self.store.signed_query(row["ref"], now)
        return f"{blob_url}?exp={expires}&sig={sig}"
