"""Keys (issue 12, section 3; docs/admin.md): the data keys of field-level encryption.

Admins see every key scope with its version, state and provider (never key material, as
`fieldsync keys list`), and may
* **rotate** the keys of one entity or of all: new keys at once, then the re-encryption pass
  runs in a background thread of this process and its progress (values re-encrypted and
  remaining) shows on the page and at `progress` (JSON, polled by keys.js);
* **shred** one subject (a patient: the user types the subject value twice) or a whole entity
  (the user types its name again), with a reason: those values become unreadable for good.
Compliance officers see the same page read-only (the keys' states are audit evidence; they
change nothing). Every action is audited as the CLI audits it (action "key"); a subject appears
in the trail and on the page only as its reference (`sr_...`), never as its value.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import threading
import weakref
from typing import Any

from flask import abort, flash, jsonify, redirect, request, url_for
from flask_admin import BaseView, expose

from fieldsync.audit.trail import AuditEvent
from fieldsync.crypto.rotation import (ReencryptReport, reencrypt, rotate, shred_entity, shred_subject,
                                       values_under_retired_keys)
from fieldsync.ids import utc_now

from fieldsync_admin.security import RoleView, audit, current_user, state

__all__ = ["KeysView", "RotationJob", "rotation_jobs", "views"]

log = logging.getLogger("fieldsync.admin")

ACTION_ROLES = ("admin",)
SUBJECT_KEYS_SHOWN = 200
REASON_MAX = 500
SUBJECT_MAX = 200


# -- the background re-encryption -----------------------------------------------------------------

class RotationJob:
    """One rotation started from the admin UI: the new keys are made in the request, then a
    daemon thread runs one re-encryption pass (fieldsync.crypto.rotation.reencrypt) whose
    counts `progress()` reads while it runs. The pass is audited when it ends, as the CLI's."""

    _ids = itertools.count(1)

    def __init__(self, fieldsync_state: Any, entity: str | None, rotated: int, actor: str, role: str):
        self.id = next(self._ids)
        self.entity = entity
        self.rotated = rotated
        self.actor, self.role = actor, role
        self.started_at = utc_now()
        self.finished_at: dt.datetime | None = None
        self.total: int | None = None          # values under retired keys when the pass began
        self.remaining_after: int | None = None
        self.report = ReencryptReport()
        self.state = "counting"                # counting | running | done | failed
        self.error: str | None = None
        self._state = fieldsync_state
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fieldsync-admin-rotation-{self.id}", daemon=True)

    def start(self) -> "RotationJob":
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """True once the pass ended (done or failed)."""
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def _run(self) -> None:
        st = self._state
        try:
            store = st.current().store
            self.total = values_under_retired_keys(store, st.crypto, entity=self.entity)
            self.state = "running"
            reencrypt(store, st.crypto, entity=self.entity, report=self.report)
            self.remaining_after = values_under_retired_keys(store, st.crypto, entity=self.entity)
            report = self.report
            st.audit.record(AuditEvent(action="key", actor=self.actor, role=self.role, channel="admin",
                                       entity=self.entity, detail={
                                           "event": "reencrypt", "rows": report.rows, "changes": report.changes,
                                           "destroyed": report.destroyed[:50], "still_retired": len(report.still_retired),
                                           "job": self.id}))
            self.state = "done"
        except Exception as exc:   # shown on the page; the server's key maintenance retries the pass
            log.exception("admin rotation %s: the re-encryption pass failed", self.id)
            # the type only: a database error's text may quote the statement's values
            self.state, self.error = "failed", f"{type(exc).__name__} (see the server log)"
        finally:
            self.finished_at = utc_now()
            self._done.set()

    def progress(self) -> dict[str, Any]:
        """What the page and the JSON endpoint show."""
        report = self.report
        done = report.values
        total = self.total
        if self.state == "done" and self.remaining_after is not None:
            remaining = self.remaining_after
        else:
            remaining = max(total - done, 0) if total is not None else None
        return {"id": self.id, "entity": self.entity, "state": self.state, "keys_rotated": self.rotated,
                "values_reencrypted": done, "values_total": total, "values_remaining": remaining,
                "percent": (100 if not total else min(100, round(100 * done / total)))
                if self.state != "counting" else 0,
                "rows": report.rows, "changes": report.changes, "skipped": report.skipped,
                "destroyed": len(report.destroyed), "still_retired": len(report.still_retired),
                "started_by": self.actor, "started_at": _iso(self.started_at),
                "finished_at": _iso(self.finished_at), "error": self.error}


class RotationJobs:
    """The rotation jobs of one fieldsync app (this process), newest first; at most one runs."""

    KEEP = 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: list[RotationJob] = []

    def running(self) -> RotationJob | None:
        with self._lock:
            return next((job for job in self._jobs if job.running), None)

    def add(self, job: RotationJob) -> None:
        with self._lock:
            self._jobs.insert(0, job)
            del self._jobs[self.KEEP:]

    def all(self) -> list[RotationJob]:
        with self._lock:
            return list(self._jobs)

    def latest(self) -> RotationJob | None:
        with self._lock:
            return self._jobs[0] if self._jobs else None


_registry: "weakref.WeakKeyDictionary[Any, RotationJobs]" = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def rotation_jobs(fieldsync_state: Any) -> RotationJobs:
    """The jobs of this fieldsync app: they outlive the admin app, which is rebuilt whenever
    another model version is applied."""
    with _registry_lock:
        jobs = _registry.get(fieldsync_state)
        if jobs is None:
            jobs = _registry[fieldsync_state] = RotationJobs()
        return jobs


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- what the page shows --------------------------------------------------------------------------

def key_overview(keys: Any, model: Any, *, subject_keys_shown: int = SUBJECT_KEYS_SHOWN
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, int]:
    """One pass over `keys` (KeyRing.describe(), streamed: there is a subject key per patient):
    per encrypted entity its entity and blind-index keys and its subject keys counted by state;
    the keys to list (every entity, index and reference key, the first `subject_keys_shown`
    subject keys); the number of keys and of subject keys."""
    entities = {e.name: {"entity": e.name, "subject": e.subject,
                         "fields": [f"{f.name} ({f.encryption})" for f in e.fields if f.encrypted],
                         "active": [], "retired": 0, "destroyed": 0, "subjects": {}}
                for e in model.entities if e.has_encrypted}
    listed: list[dict[str, Any]] = []
    total = subjects = 0
    for key in keys:
        total += 1
        scope = key["scope"]
        kind, _, rest = scope.partition(":")
        name = rest.split(":", 1)[0]
        row = {**key, "kind": kind, "created_at": _iso(key["created_at"]), "retired_at": _iso(key["retired_at"]),
               "destroyed_at": _iso(key["destroyed_at"])}
        if kind == "subject":
            subjects += 1
            if name in entities:
                counts = entities[name]["subjects"]
                counts[key["state"]] = counts.get(key["state"], 0) + 1
            if subjects > subject_keys_shown:
                continue
        elif kind in ("entity", "index") and name in entities:
            if key["state"] == "active":
                entities[name]["active"].append(row)
            else:
                entities[name][key["state"]] = entities[name].get(key["state"], 0) + 1
        listed.append(row)
    return list(entities.values()), listed, total, subjects


class KeysView(RoleView, BaseView):
    """Data keys: list (admin, compliance), rotate and shred (admin)."""

    roles = ("admin", "compliance")

    def __init__(self, snapshot: Any):
        super().__init__(name="Keys", endpoint="keys", url="keys", category="Operations")
        self.snapshot = snapshot

    # -- reading --------------------------------------------------------------------------------
    @expose("/")
    def index(self):
        st = state()
        model = self.snapshot.model
        overview, listed, total, subject_keys = key_overview(st.crypto.keyring.describe(), model)
        jobs = rotation_jobs(st)
        return self.render(
            "fieldsync_admin/keys_index.html", keys=listed, total_keys=total,
            subject_keys=subject_keys, subject_keys_shown=SUBJECT_KEYS_SHOWN,
            overview=overview, jobs=[job.progress() for job in jobs.all()],
            running=jobs.running() is not None, may_act=current_user().role in ACTION_ROLES,
            encrypted=[e.name for e in model.entities if e.has_encrypted],
            subject_entities=[e.name for e in model.entities if e.has_encrypted and e.subject],
            grace=st.crypto.keyring.retire_grace_seconds, reason_max=REASON_MAX)

    @expose("/progress")
    def progress(self):
        """The rotation jobs of this process as JSON (the page's poll)."""
        jobs = rotation_jobs(state())
        return jsonify({"running": jobs.running() is not None, "jobs": [job.progress() for job in jobs.all()]})

    # -- acting ---------------------------------------------------------------------------------
    def _may_act(self) -> None:
        if current_user().role not in ACTION_ROLES:
            abort(403, description="only an admin may rotate or shred keys")

    def _back(self):
        return redirect(url_for(".index")), 303

    def _entity_choice(self, raw: str, allowed: list[str]) -> str | None:
        if raw not in allowed:
            raise ValueError(f"{raw!r} is not an entity with encrypted fields" if raw else "choose an entity")
        return raw

    @expose("/rotate", methods=["POST"])
    def rotate(self):
        self._may_act()
        st = state()
        model = self.snapshot.model
        raw = request.form.get("entity", "")
        encrypted = [e.name for e in model.entities if e.has_encrypted]
        if raw not in ("", *encrypted) or "\x00" in raw:
            flash(f"{raw[:80]!r} is not an entity with encrypted fields", "danger")
            return self._back()
        entity = raw or None
        jobs = rotation_jobs(st)
        if jobs.running() is not None:
            flash("a rotation is still re-encrypting; start the next one when it is done", "warning")
            return self._back()
        done = rotate(st.crypto, model, entity)
        user = current_user()
        audit("key", entity=entity, detail={"event": "rotate", "keys": len(done), "new": [n for _s, _o, n in done][:50]})
        job = RotationJob(st, entity, len(done), user.user_id, user.role)
        jobs.add(job)
        job.start()
        flash(f"{len(done)} key(s) rotated{' for ' + entity if entity else ''}; re-encrypting in the background "
              f"(rotation {job.id})", "success")
        return self._back()

    def _reason(self) -> str:
        reason = request.form.get("reason", "").strip()
        if not reason:
            raise ValueError("give a reason: it is kept in the audit trail")
        if len(reason) > REASON_MAX or "\x00" in reason:
            raise ValueError(f"the reason must be at most {REASON_MAX} characters of text")
        return reason

    @expose("/shred-subject", methods=["POST"])
    def shred_subject(self):
        self._may_act()
        st = state()
        model = self.snapshot.model
        subject_entities = [e.name for e in model.entities if e.has_encrypted and e.subject]
        raw_entity = request.form.get("entity", "")
        subject = request.form.get("subject", "").strip()
        confirm = request.form.get("confirm", "").strip()
        try:
            if raw_entity not in ("", *subject_entities):
                raise ValueError(f"{raw_entity[:80]!r} names no encryption subject")
            if not subject:
                raise ValueError("type the subject (e.g. the patient id) to shred")
            if len(subject) > SUBJECT_MAX or "\x00" in subject:
                raise ValueError(f"a subject is at most {SUBJECT_MAX} characters of text")
            if confirm != subject:
                raise ValueError("the confirmation does not match the subject: nothing was shredded")
            reason = self._reason()
        except ValueError as exc:
            flash(str(exc), "danger")
            return self._back()
        entity = raw_entity or None
        ref = st.crypto.subject_ref(subject)
        destroyed = shred_subject(st.current().store, st.crypto, subject, entity)
        audit("key", entity=entity, subjects=(ref,), reason=reason,
              detail={"event": "shred-subject", "destroyed": destroyed})
        if destroyed:
            flash(f"{len(destroyed)} key(s) of subject {ref} destroyed"
                  f"{' in ' + entity if entity else ''}: its encrypted values are unreadable for good", "success")
        else:
            flash(f"subject {ref} had no keys{' in ' + entity if entity else ''}: nothing was destroyed "
                  "(check the value you typed)", "warning")
        return self._back()

    @expose("/shred-entity", methods=["POST"])
    def shred_entity(self):
        self._may_act()
        st = state()
        model = self.snapshot.model
        encrypted = [e.name for e in model.entities if e.has_encrypted]
        entity = request.form.get("entity", "")
        confirm = request.form.get("confirm", "").strip()
        try:
            if entity not in encrypted:
                raise ValueError(f"{entity[:80]!r} is not an entity with encrypted fields" if entity
                                 else "choose an entity")
            if confirm != entity:
                raise ValueError("the confirmation does not match the entity's name: nothing was shredded")
            reason = self._reason()
        except ValueError as exc:
            flash(str(exc), "danger")
            return self._back()
        destroyed = shred_entity(st.current().store, st.crypto, entity)
        audit("key", entity=entity, reason=reason, detail={"event": "shred-entity", "destroyed": destroyed})
        flash(f"{len(destroyed)} key(s) of {entity} destroyed: its encrypted values are unreadable for good", "success")
        return self._back()


def views(snapshot: Any) -> list:
    return [KeysView(snapshot)]
