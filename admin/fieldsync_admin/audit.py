"""The audit page of the admin UI (issue 12, section 3; /work/notes/admin-audit.md): for the
compliance and admin roles, search the trail, verify it, and download a period as a verifiable
FHIR R5 AuditEvent bundle or as CSV.

* Search by period (from/to dates, `to` inclusive), user, entity, patient (an id, turned into
  its subject reference as `fieldsync audit export --patient` does, or a subject reference
  `sr_...` copied from a result), newest first, PAGE_SIZE a page. The trail holds references
  only (never a PHI value), so a search is not itself audited.
* Verify runs `AuditLog.verify` (what `fieldsync audit verify` runs) and shows each problem
  with the entry it concerns and the summary; each run is recorded as an `admin` entry with
  detail event `audit_verified` (ok, problem count, summary), which the dashboard shows.
* Exports (POST, CSRF) of the filters shown: a FHIR `Bundle` (fieldsync.audit.bundle: each
  entry's stored row, the hash chain and a signed checkpoint, so the file verifies on its own)
  or CSV (fieldsync.audit.export, as the CLI writes it); each export is recorded first as an
  `export` entry on the admin channel by the logged-in user. A downloaded bundle is verified by
  uploading it here (`Verify a downloaded export`) or offline with `verify_bundle` and the
  public key (downloadable here, or `fieldsync audit public-key`).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import socket
from typing import Any

from flask import Response, flash, redirect, request, url_for
from flask_admin import BaseView, expose

from fieldsync.audit.bundle import export_bundle, verify_bundle
from fieldsync.audit.events import subject_ref_function
from fieldsync.audit.export import export_audit
from fieldsync.audit.search import search_entries, verification_event
from fieldsync.errors import AuditUnavailable
from fieldsync.untrusted import load_json
from fieldsync_admin.security import RoleView, current_user, state

__all__ = ["AuditView", "PAGE_SIZE", "read_filters", "record_verification", "views"]

PAGE_SIZE = 50
MAX_PAGE = 10_000_000    # an offset any database takes
MAX_UPLOAD = 64 * 1024 * 1024
BUNDLE_DEPTH = 256   # an event's detail nests a JSON field (32 levels) a few deep; far below the recursion limit
FILTERS = ("from", "to", "user", "entity", "patient")


class BadFilter(ValueError):
    """A search or export filter the page cannot use (shown as a flash message)."""


def _date(text: str, name: str) -> dt.date | None:
    text = text.strip()
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise BadFilter(f"'{name}' {text[:40]!r} is not a date (YYYY-MM-DD)") from None


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


def read_filters(values, snapshot) -> dict[str, Any]:
    """The trail filters of a form: start, end ([start, end), `to` being inclusive of its day),
    actor, entity and subject reference. BadFilter naming what is wrong."""
    start_day, end_day = _date(values.get("from", ""), "from"), _date(values.get("to", ""), "to")
    if start_day and end_day and end_day < start_day:
        raise BadFilter("'to' is before 'from'")
    if end_day == dt.date.max:
        raise BadFilter("'to' is past the last date this page takes")
    filters: dict[str, Any] = {
        "start": _midnight(start_day) if start_day else None,
        "end": _midnight(end_day + dt.timedelta(days=1)) if end_day else None,
        "actor": values.get("user", "").strip() or None,
        "entity": values.get("entity", "").strip() or None,
        "subject": None,
    }
    for name in ("actor", "entity"):
        if filters[name] and (len(filters[name]) > 128 or "\x00" in filters[name]):
            raise BadFilter(f"the {name} filter is not a name")
    patient = values.get("patient", "").strip()
    if patient:
        if "\x00" in patient or len(patient) > 256:
            raise BadFilter("the patient filter is not an id")
        if patient.startswith("sr_"):
            filters["subject"] = patient
        else:
            ref = subject_ref_function(snapshot.store.codec)
            if ref is None:
                raise BadFilter("a patient filter needs field encryption (subject references); this server has none")
            filters["subject"] = ref(patient)
    return filters


def record_verification(report) -> None:
    """Record a verification run as an `admin` entry by the logged-in user (detail event
    `audit_verified`, fieldsync.audit.search.verification_event)."""
    user = current_user()
    state().audit.record(verification_event(report, actor=user.user_id, role=user.role, channel="admin"))


class AuditView(RoleView, BaseView):
    """Search, verify and export the audit trail."""

    roles = ("compliance", "admin")

    def __init__(self, snapshot: Any):
        super().__init__(name="Audit", endpoint="audit", url="audit")
        self.snapshot = snapshot

    def _page(self, *, verify=None, file_report=None, status: int = 200):
        values = {k: request.values.get(k, "") for k in FILTERS}
        try:
            page = min(max(1, int(request.values.get("page", "1") or 1)), MAX_PAGE)
        except ValueError:
            page = 1
        entries, total = [], 0
        try:
            filters = read_filters(values, self.snapshot)
            entries, total = search_entries(state().audit, **filters, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
        except BadFilter as exc:
            flash(str(exc), "danger")
            status = 400
        pages = max(1, (total + PAGE_SIZE - 1) // PAGE_SIZE)
        return self.render("fieldsync_admin/audit_index.html", values=values, entries=entries, total=total,
                           page=page, pages=pages, verify=verify, file_report=file_report,
                           entities=sorted(e.name for e in self.snapshot.model.entities),
                           detail_text=_detail_text), status

    @expose("/")
    def index(self):
        return self._page()

    @expose("/verify", methods=["POST"])
    def verify(self):
        report = state().audit.verify()
        try:
            record_verification(report)
        except AuditUnavailable as exc:
            flash(f"the verification ran but could not be recorded in the trail: {exc}", "warning")
        return self._page(verify=report)

    @expose("/verify-file", methods=["POST"])
    def verify_file(self):
        upload = request.files.get("file")
        if upload is None or not upload.filename:
            flash("choose an exported bundle (.json) to verify", "danger")
            return self._page(status=400)
        data = upload.read(MAX_UPLOAD + 1)
        try:
            if len(data) > MAX_UPLOAD:
                raise ValueError("the file is too large")
            bundle = load_json(data.decode("utf-8"), max_depth=BUNDLE_DEPTH)   # never a RecursionError
        except (ValueError, UnicodeDecodeError):
            flash("the file is not a JSON bundle exported by this page", "danger")
            return self._page(status=400)
        key = state().audit.local_public_key()
        report = verify_bundle(bundle, [key] if key is not None else [])
        return self._page(file_report=report)

    @expose("/public-key")
    def public_key(self):
        return Response(state().audit.public_key_pem(), mimetype="application/x-pem-file",
                        headers={"Content-Disposition": 'attachment; filename="fieldsync-audit-public-key.pem"'})

    @expose("/export/<fmt>", methods=["POST"])
    def export(self, fmt: str):
        if fmt not in ("fhir", "csv"):
            return self._page(status=404)
        values = {k: request.form.get(k, "") for k in FILTERS}
        try:
            filters = read_filters(values, self.snapshot)
        except BadFilter as exc:
            flash(str(exc), "danger")
            return redirect(url_for(".index", **values))
        start = filters["start"] or dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
        end = filters["end"] or (state().audit.clock() + dt.timedelta(seconds=1))
        if end <= start:
            flash("the period is empty", "danger")
            return redirect(url_for(".index", **values))
        user = current_user()
        first = f"{start:%Y-%m-%d}" if filters["start"] else "start"
        stamp = f"{first}-to-{end - dt.timedelta(microseconds=1):%Y-%m-%d}"   # the filename names the days
        try:
            if fmt == "fhir":
                bundle, _done = export_bundle(state().audit, start=start, end=end, actor=filters["actor"],
                                              entity=filters["entity"], subject=filters["subject"],
                                              exported_by=user.user_id, exported_role=user.role, channel="admin",
                                              server=socket.gethostname())
                body = json.dumps(bundle, indent=1, sort_keys=True)
                return _download(body, "application/fhir+json", f"fieldsync-audit-{stamp}.json")
            out = io.StringIO()
            export_audit(state().audit, out, fmt="csv", start=start, end=end, actor=filters["actor"],
                         entity=filters["entity"], subject=filters["subject"], exported_by=user.user_id,
                         destination="download", server=socket.gethostname(), channel="admin",
                         exported_role=user.role)
            return _download(out.getvalue(), "text/csv", f"fieldsync-audit-{stamp}.csv")
        except AuditUnavailable as exc:
            flash(f"nothing was exported: {exc}", "danger")
            return redirect(url_for(".index", **values))


def _download(body: str, mimetype: str, filename: str) -> Response:
    return Response(body, mimetype=mimetype, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


def _detail_text(detail) -> str:
    return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v, sort_keys=True)}"
                     for k, v in sorted(dict(detail).items()))


def views(snapshot) -> list:
    return [AuditView(snapshot)]
