"""The sync rules preview of the admin UI (issue 12, section 3; docs/admin.md "Sync rules preview").

Pick a user of the directory, or a role with attributes, and see what their device would receive:
rows per entity and a few of them, computed by pull's own rules (fieldsync.sync.preview over
`device_scope` and `snapshot_query`). With proposed definitions (the form field `definitions`,
JSON {file: YAML text or null to drop the file}, posted e.g. by the definitions editor), the
counts under the current and the proposed rules side by side, before anything is applied.

Read-only: every query runs in one transaction that is rolled back. The sample shows a field only
when the previewing user's role may read it under the live rules (never the proposed ones: a
proposed permission grants nothing); PHI they may read is audited as any PHI read. Every preview
is audited (action read, event sync_preview, the user previewed).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import sqlalchemy as sa
from flask import flash, g, request
from flask_admin import BaseView, expose

from fieldsync.api.audit_trail import sync_read_events
from fieldsync.auth.tokens import Principal
from fieldsync.auth.users import attribute_from_text, check_attributes, get_user, list_users
from fieldsync.defs import DefinitionErrors, build_model, read_sources
from fieldsync.defs.access import access_rule
from fieldsync.defs.model import Entity, Model
from fieldsync.errors import NotFound
from fieldsync.ids import utc_now
from fieldsync.store.versions import read_version
from fieldsync.sync.preview import EntityPreview, preview_scope, proposed_store
from fieldsync.sync.scope import device_scope
from fieldsync.untrusted import load_json
from fieldsync_admin.security import RoleView, audit, principal, state

__all__ = ["PreviewView", "SAMPLE_ROWS", "views"]

log = logging.getLogger("fieldsync.admin")

SAMPLE_ROWS = 3
PREVIEW_USER = "(preview)"    # $user.id when previewing a role without naming a user
TEXT_MAX = 4000               # a user id or an attribute's text


class PreviewInputError(ValueError):
    """A form value that cannot be previewed (shown as a flash message, status 400)."""


@dataclass
class Comparison:
    """One entity's row counts under the current and the proposed rules (None: not pulled)."""

    entity: str
    current: int | None
    proposed: int | None

    @property
    def change(self) -> str:
        if self.current == self.proposed:
            return ""
        return f"{(self.proposed or 0) - (self.current or 0):+d}"


def _now() -> dt.datetime:
    """The time pull evaluates windows at (the app's record clock)."""
    clock = state().clock
    return clock() if clock is not None else utc_now()


def _text(name: str) -> str:
    value = request.values.get(name, "")
    if "\x00" in value or len(value) > TEXT_MAX:
        raise PreviewInputError(f"{name}: at most {TEXT_MAX} characters, no NUL")
    return value.strip()


def _previewed(model: Model) -> tuple[Principal, bool]:
    """The principal whose device is previewed, from the form; and whether it is a directory
    user. PreviewInputError for anything that is not one."""
    if request.values.get("mode", "user") == "user":
        user_id = _text("user")
        if not user_id:
            raise PreviewInputError("pick a user")
        try:
            user = get_user(state().engine, user_id)
        except NotFound:
            raise PreviewInputError(f"no user {user_id!r} in the directory") from None
        return Principal(user.user_id, user.role, dict(user.attributes)), True
    role = _text("role")
    if role not in model.role_names:
        raise PreviewInputError(f"unknown role {role!r} (roles: {', '.join(model.role_names)})")
    attributes: dict[str, Any] = {}
    for attr in model.attributes:
        raw = _text(f"attr.{attr.name}")
        if raw == "" and attr.type != "list":
            continue
        try:
            attributes[attr.name] = attribute_from_text(attr, raw)
        except ValueError:
            raise PreviewInputError(f"attribute {attr.name}: not a {attr.items or attr.type}") from None
    try:
        attributes = check_attributes(model, attributes)
    except ValueError as exc:
        raise PreviewInputError(str(exc)) from None
    return Principal(_text("user_id") or PREVIEW_USER, role, attributes), False


def _proposed_sources(conn) -> dict[str, str] | None:
    """The definitions posted as `definitions` laid over the current ones; None when none were
    posted. PreviewInputError for anything but a JSON object of file name -> text or null."""
    raw = request.values.get("definitions", "")
    if not raw.strip():
        return None
    try:
        posted = load_json(raw)   # bounded depth: JsonRefused (a ValueError), never a RecursionError
    except ValueError:
        raise PreviewInputError("definitions: not JSON (an object of file name -> YAML text)") from None
    if not isinstance(posted, dict) or not posted or not all(
            isinstance(k, str) and k and "\x00" not in k and (v is None or isinstance(v, str) and "\x00" not in v)
            for k, v in posted.items()):
        raise PreviewInputError("definitions: an object of file name -> YAML text (or null to drop the file)")
    sources = dict(_current_sources(conn))
    for name, text in posted.items():
        if text is None:
            sources.pop(name, None)
        else:
            sources[name] = text
    return sources


def _current_sources(conn) -> Mapping[str, str]:
    """The texts of the live model: as recorded with the applied version, else DEFS_DIR when it
    holds the live model; empty when neither (then the posted set must be complete)."""
    st = state()
    model = st.model
    if st.version is not None:
        row = read_version(conn, st.version)
        if row is not None and row.get("definitions"):
            return row["definitions"]
    try:
        sources = read_sources(st.config["DEFS_DIR"])
        if build_model(sources).fingerprint() == model.fingerprint():
            return sources
    except DefinitionErrors:
        pass
    return {}


def _masker(live: Model, viewer: Principal):
    """Per entity, the fields the previewing user may not read under the live rules (PHI
    included): every field of an entity they may not read, may read only under a row filter, or
    that the live model does not have; else the fields outside their visible list and the
    fields the live entity does not have."""
    def masked(entity: Entity) -> set[str]:
        names = {f.name for f in entity.fields}
        if not live.has_entity(entity.name):
            return names
        live_entity = live.entity(entity.name)
        rule = access_rule(live, live_entity, viewer.role)
        if rule is None or not rule.can("read") or rule.permission.row_filter is not None:
            return names
        visible = rule.permission.visible
        known = set(live_entity.field_names)
        return {n for n in names if n not in known or (visible is not None and n not in visible)}
    return masked


class PreviewView(RoleView, BaseView):
    roles = ("admin", "analyst")

    def __init__(self, snapshot: Any):
        super().__init__(name="Sync rules preview", endpoint="preview", url="preview")
        self.snapshot = snapshot

    @expose("/", methods=("GET", "POST"))
    def index(self):
        snapshot = g.snapshot
        model = snapshot.model
        st = state()
        users = list_users(st.engine)
        form = {k: v for k, v in request.values.items() if k != "csrf_token" and k != "definitions"}
        context: dict[str, Any] = {"users": users, "model": model, "form": form,
                                   "definitions": request.values.get("definitions", ""), "result": None}
        if not request.values.get("mode"):
            return self.render("fieldsync_admin/preview_index.html", **context)
        try:
            result = self._preview(snapshot)
        except PreviewInputError as exc:
            flash(str(exc), "danger")
            return self.render("fieldsync_admin/preview_index.html", **context), 400
        context["result"] = result
        return self.render("fieldsync_admin/preview_index.html", **context)

    def _preview(self, snapshot) -> dict[str, Any]:
        st = state()
        model, store = snapshot.model, snapshot.store
        target, in_directory = _previewed(model)
        viewer = principal()
        now = _now()
        masked = _masker(model, viewer)
        proposed_errors: list[str] = []
        with st.engine.connect() as conn:
            with conn.begin() as transaction:   # read-only: whatever happens is rolled back
                sources = _proposed_sources(conn)
                scope = device_scope(model, target, now, store.codec)
                current = preview_scope(conn, store, scope, sample=SAMPLE_ROWS, masked=masked)
                proposed: list[EntityPreview] | None = None
                proposed_model = None
                if sources is not None:
                    try:
                        proposed_model = build_model(sources, label="proposed")
                    except DefinitionErrors as exc:
                        proposed_errors = [str(e) for e in exc.errors][:50]
                    if proposed_model is not None:
                        try:
                            with conn.begin_nested():   # a failed query must not end the transaction
                                pstore = proposed_store(conn, proposed_model, store.codec)
                                pscope = device_scope(proposed_model, target, now, store.codec)
                                proposed = preview_scope(conn, pstore, pscope, sample=SAMPLE_ROWS, masked=masked)
                        except (sa.exc.DBAPIError, ValueError, TypeError, ArithmeticError) as exc:
                            # a field whose type changed: its live values do not read as the new
                            # type (in the database, or when converted for the sample)
                            log.info("sync preview: the proposed rules do not run on the live tables: %s", exc)
                            proposed, proposed_errors = None, [
                                "the proposed rules cannot be evaluated on the current data "
                                f"({type(getattr(exc, 'orig', None) or exc).__name__}): a field's type changed? "
                                "The migration plan says what applying them would do"]
                shown = proposed if proposed is not None else current
                disclosed = sync_read_events(conn, store, viewer, None, channel="admin", changes=[
                    {"entity": p.entity, "id": row["id"], "row": row}
                    for p in shown for row in p.sample if model.has_entity(p.entity)])
                transaction.rollback()
        # invariant 8: PHI the viewer may read is audited before it is shown; the preview itself too
        if disclosed:
            st.audit.record_all(disclosed)
        audit("read", detail={"event": "sync_preview", "previewed_user": target.user_id,
                              "previewed_role": target.role, "directory_user": in_directory,
                              "proposed": sources is not None})
        comparison = None
        if proposed is not None:
            cur = {p.entity: p.count for p in current}
            new = {p.entity: p.count for p in proposed}
            names = [p.entity for p in proposed] + [n for n in cur if n not in new]
            comparison = [Comparison(n, cur.get(n), new.get(n)) for n in names]
        return {"target": target, "in_directory": in_directory, "current": current, "proposed": proposed,
                "proposed_errors": proposed_errors, "comparison": comparison, "sample_of": shown,
                "scope_hash": scope.hash, "windows": scope.windows(), "now": now, "sample_rows": SAMPLE_ROWS}


def views(snapshot) -> list:
    return [PreviewView(snapshot)]
