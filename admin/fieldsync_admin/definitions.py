"""The Definitions view of the admin UI (issue 12, section 3; docs/admin.md, "Definitions").

Analysts and admins read the live model (entities, fields, children, sync rules, encryption,
permissions), edit its YAML files (validated as they type, with the messages of `fieldsync
validate`) or use the forms ("add a field", "new entity") that write the same YAML, review the
plan (migration steps, the YAML diff, the OpenAPI and device schema diffs), apply it, and browse
and roll back the applied versions. Applying runs fieldsync.live, as `fieldsync apply` does;
every running process then swaps to the new version (api/app.py) and the admin app is rebuilt
for it (mount.py). An analyst applies additive changes only; steps that lose data need an
admin who ticks "allow destructive".
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from flask import flash, g, jsonify, redirect, request, url_for
from flask_admin import BaseView, expose
from werkzeug.routing import BuildError

from fieldsync.defs import DefinitionErrors
from fieldsync.defs.model import ENCRYPTION_MODES, FIELD_TYPES
from fieldsync.errors import GenerationError, MigrationRefused
from fieldsync.store.versions import list_versions, read_version
from fieldsync.untrusted import JsonRefused, load_json

from fieldsync_admin.definitions_change import (Base, Draft, PlanView, apply_draft, applied_base, check_texts,
                                                error_lines, plan_draft)
from fieldsync_admin.definitions_rule_views import RuleForms
from fieldsync_admin.definitions_yaml import FieldSpec, FormError, add_field, entity_file, new_entity_text
from fieldsync_admin.security import RoleView, audit, current_user, state

__all__ = ["DefinitionsView", "views"]

ROLES = ("admin", "analyst")
DESTRUCTIVE_ROLES = ("admin",)
NEW_ENTITY_ROWS = 6
# a version number is the fs_schema row id (an INTEGER column): a larger one names no version
# (and the databases refuse it as a parameter: an OverflowError, not a 404)
MAX_VERSION = 2 ** 31 - 1
# the files a definitions directory holds (loader.py); anything else is not a path we write
FILE_PATH = re.compile(r"^(app|roles)\.ya?ml$|^(masters|transactions)/[a-z][a-z0-9_]*\.ya?ml$")


def views(snapshot) -> list:
    return [DefinitionsView()]


def _steps_digest(view: PlanView) -> str:
    """What the user reviewed, without row counts (they change between plan and apply)."""
    keys = [list(s.key) for s in view.change.plan.steps] if view.change else []
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]


def _entity_path(entity) -> str:
    folder = "masters" if entity.kind == "master" else "transactions"
    return f"{folder}/{entity.parent or entity.name}.yaml"


class DefinitionsView(RoleView, RuleForms, BaseView):
    roles = ROLES

    def __init__(self):
        super().__init__(name="Definitions", endpoint="definitions", url="/definitions")

    # -- reading ----------------------------------------------------------------------------------
    @expose("/")
    def index(self):
        model = g.snapshot.model
        try:
            files = sorted(applied_base().sources)
        except DefinitionErrors as exc:
            files = []
            flash(f"the definitions cannot be read: {'; '.join(error_lines(exc))}", "danger")
        masters = [e for e in model.entities if e.kind == "master"]
        transactions = [e for e in model.entities if e.kind == "transaction"]
        return self.render("fieldsync_admin/definitions_index.html", model=model, masters=masters,
                           transactions=transactions, files=files, version=state().version)

    @expose("/entity/<entity_name>")
    def entity(self, entity_name: str):
        name = entity_name
        model = g.snapshot.model
        if not model.has_entity(name):
            self._abort(404, f"there is no entity {name!r} in the live model")
        entity = model.entity(name)
        children = [model.entity(c) for c in entity.children if model.has_entity(c)]
        return self.render("fieldsync_admin/definitions_entity.html", model=model, entity=entity, children=children,
                           file=_entity_path(entity), constraints=_constraints)

    # -- the YAML editor --------------------------------------------------------------------------
    @expose("/yaml/<path:rel>", methods=("GET", "POST"))
    def yaml_file(self, rel: str):
        if not FILE_PATH.match(rel):
            self._abort(404, f"{rel!r} is not a definition file (app.yaml, roles.yaml, masters/*.yaml, "
                             "transactions/*.yaml)")
        base = self._base()
        if request.method != "POST":   # GET and HEAD
            return self._editor(base, rel, base.sources.get(rel, ""), [])
        text = _text(request.form.get("text", ""))
        draft = Draft.edit(base, {rel: text})
        if request.form.get("action") == "plan":
            return self._plan_page(plan_draft(draft, base), title=f"Plan: edit of {rel}")
        errors, model = check_texts(draft.sources(base.sources))
        return self._editor(base, rel, text, errors, checked=True), 200 if model is not None else 400

    @expose("/validate", methods=("POST",))
    def validate(self):
        """JSON in ({"path", "text"}), JSON out ({"valid", "errors", "summary"}): the editor's
        validation as you type (static/definitions.js)."""
        try:   # bounded depth: a deep body is a 400, not a RecursionError
            payload = load_json(request.get_data(cache=False)) if request.is_json else None
        except JsonRefused:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("path"), str) \
                or not isinstance(payload.get("text"), str) or not FILE_PATH.match(payload["path"]):
            return jsonify(error="send {\"path\": a definition file, \"text\": its YAML}"), 400
        base = self._base()
        sources = Draft.edit(base, {payload["path"]: _text(payload["text"])}).sources(base.sources)
        errors, model = check_texts(sources)
        summary = (f"valid: {len(model.entities)} entities, {len(model.roles)} roles, schema version "
                   f"{model.schema_version}" if model is not None else f"{len(errors)} error(s)")
        return jsonify(valid=model is not None, errors=errors, summary=summary)

    def _editor(self, base: Base, rel: str, text: str, errors: list[str], checked: bool = False):
        return self.render("fieldsync_admin/definitions_yaml.html", rel=rel, text=text, errors=errors,
                           checked=checked, new=rel not in base.sources, base=base)

    # -- the forms --------------------------------------------------------------------------------
    @expose("/entity/<entity_name>/add-field", methods=("GET", "POST"))
    def add_field(self, entity_name: str):
        name = entity_name
        model = g.snapshot.model
        if not model.has_entity(name) or model.entity(name).parent is not None:
            self._abort(404, f"there is no top-level entity {name!r} in the live model")
        entity = model.entity(name)
        if request.method != "POST":   # GET and HEAD
            return self._field_form(entity, {})
        base = self._base()
        rel = entity_file(base.sources, name)
        try:
            if rel is None:
                raise FormError(f"no file defines {name} (masters/{name}.yaml or transactions/{name}.yaml)")
            spec = _field_spec(request.form, "")
            text = add_field(base.sources[rel], spec)
        except FormError as exc:
            flash(str(exc), "danger")
            return self._field_form(entity, request.form), 400
        view = plan_draft(Draft.edit(base, {rel: text}), base)
        return self._plan_page(view, title=f"Plan: add the field {spec.name} to {name}")

    def _field_form(self, entity, form):
        return self.render("fieldsync_admin/definitions_field.html", entity=entity, form=form,
                           types=FIELD_TYPES, modes=ENCRYPTION_MODES, entities=g.snapshot.model.entity_names)

    @expose("/new-entity", methods=("GET", "POST"))
    def new_entity(self):
        model = g.snapshot.model
        if request.method != "POST":   # GET and HEAD
            return self._entity_form({})
        base = self._base()
        form = request.form
        try:
            kind = form.get("kind", "")
            name = form.get("name", "").strip()
            fields = [_field_spec(form, f"_{i}") for i in range(NEW_ENTITY_ROWS) if form.get(f"name_{i}", "").strip()]
            owner_role = form.get("owner_role") or None
            if owner_role is not None and owner_role not in model.role_names:
                raise FormError(f"there is no role {owner_role!r}")
            text = new_entity_text(name, kind, fields, label=form.get("label", "").strip(),
                                   description=form.get("description", "").strip(), roles=model.role_names,
                                   owner_role=owner_role)
            rel = f"{'masters' if kind == 'master' else 'transactions'}/{name}.yaml"
            if model.has_entity(name) or entity_file(base.sources, name):
                raise FormError(f"an entity named {name!r} exists already")
        except FormError as exc:
            flash(str(exc), "danger")
            return self._entity_form(form), 400
        view = plan_draft(Draft.edit(base, {rel: text}), base)
        return self._plan_page(view, title=f"Plan: new {kind} {name}")

    def _entity_form(self, form):
        model = g.snapshot.model
        default_owner = "field_rep" if "field_rep" in model.role_names else None
        return self.render("fieldsync_admin/definitions_new.html", form=form, types=FIELD_TYPES,
                           rows=range(NEW_ENTITY_ROWS), roles=model.role_names, default_owner=default_owner,
                           entities=model.entity_names)

    # -- plan and apply ---------------------------------------------------------------------------
    def _plan_page(self, view: PlanView, *, title: str, status: int | None = None):
        user = current_user()
        may_destroy = user is not None and user.role in DESTRUCTIVE_ROLES
        if status is None:
            status = 400 if view.errors else 200
        return self.render("fieldsync_admin/definitions_plan.html", view=view, title=title,
                           may_destroy=may_destroy, digest=_steps_digest(view), preview_url=_preview_url(),
                           proposed=json.dumps(view.draft.files, sort_keys=True)), status

    @expose("/apply", methods=("POST",))
    def apply(self):
        try:
            draft = Draft.decode(request.form.get("draft", ""))
        except ValueError:
            self._abort(400, "the plan's draft is missing or damaged: plan the change again")
        title = f"Plan: rollback to version {draft.rollback_of}" if draft.rollback_of else "Plan"
        base = self._base()
        if draft.base != base.version:
            rebased, clashes = draft.rebase(base)
            if clashes:
                flash(f"model version {base.version} was applied after you planned this change (on version "
                      f"{draft.base}) and changed {', '.join(clashes)} where you did: below, your text of "
                      f"{'that file' if len(clashes) == 1 else 'those files'} replaces theirs. Check the diff, then "
                      "apply, or start over from the current texts", "warning")
            else:
                flash(f"model version {base.version} was applied after you planned this change (on version "
                      f"{draft.base}): your change is merged into it below; review the plan and apply again", "warning")
            return self._plan_page(plan_draft(rebased, base), title=title, status=409)
        view = plan_draft(draft, base)
        if not view.applicable:
            flash("this change cannot be applied: see the messages below", "danger")
            return self._plan_page(view, title=title, status=400 if view.errors else 409)
        if request.form.get("digest") != _steps_digest(view):
            flash("the migration plan changed since you reviewed it (the database changed): review it and apply "
                  "again", "warning")
            return self._plan_page(view, title=title, status=409)
        allow = request.form.get("allow_destructive") == "yes"
        user = current_user()
        if view.destructive:
            if user.role not in DESTRUCTIVE_ROLES:
                audit("admin", outcome="denied", detail={"event": "definitions_apply_refused", "reason": "destructive",
                                                         "destructive_steps": len(view.destructive)})
                flash(f"this plan has {len(view.destructive)} destructive step(s) that lose data: only an admin "
                      "may apply it (an analyst applies additive changes)", "danger")
                return self._plan_page(view, title=title, status=403)
            if not allow:
                flash(f"this plan has {len(view.destructive)} destructive step(s) that lose data: tick \"allow "
                      "destructive\" to apply it", "danger")
                return self._plan_page(view, title=title, status=400)
        try:
            applied = apply_draft(view, allow_destructive=allow and user.role in DESTRUCTIVE_ROLES,
                                  applied_by=user.user_id)
        except MigrationRefused as exc:
            flash(f"refused: {exc}", "danger")
            return self._plan_page(view, title=title, status=409)
        except (GenerationError, OSError) as exc:
            flash(f"the definitions could not be written or generated/ could not be regenerated: {exc}; the "
                  "database was not migrated (run `fieldsync migrate` once it is fixed)", "danger")
            return self._plan_page(view, title=title, status=409)
        detail: dict[str, Any] = {
            "event": "definitions_applied", "version": applied.version,
            "schema_version": view.change.model.schema_version, "fingerprint": view.change.model.fingerprint(),
            "files": sorted(view.draft.files), "steps": [s.describe() for s in applied.plan.steps],
            "destructive_steps": len(applied.plan.destructive)}
        if draft.rollback_of is not None:
            detail["rollback_of"] = draft.rollback_of
        audit("admin", detail=detail)
        flash(f"model version {applied.version} is live: {len(applied.plan.steps)} step(s) applied; running "
              "servers swap to it within a second", "success")
        return redirect(url_for(".version", number=applied.version))

    # -- history ----------------------------------------------------------------------------------
    @expose("/history")
    def history(self):
        with state().engine.connect() as conn:
            rows = list(reversed(list_versions(conn)))
        return self.render("fieldsync_admin/definitions_history.html", rows=rows, live=state().version)

    @expose("/history/<int:number>")
    def version(self, number: int):
        with state().engine.connect() as conn:
            row = read_version(conn, number) if number <= MAX_VERSION else None
            if row is None:
                self._abort(404, f"there is no model version {number}")
            previous = next((p for p in (read_version(conn, n) for n in range(number - 1, 0, -1))
                             if p is not None and p["definitions"]), None)
        from fieldsync.live import definitions_diff
        diff = definitions_diff(previous["definitions"], row["definitions"]) \
            if previous is not None and row["definitions"] else []
        return self.render("fieldsync_admin/definitions_version.html", row=row, previous=previous, diff=diff,
                           live=state().version)

    @expose("/history/<int:number>/rollback", methods=("POST",))
    def rollback(self, number: int):
        with state().engine.connect() as conn:
            row = read_version(conn, number) if number <= MAX_VERSION else None
        if row is None or not row["definitions"]:
            self._abort(404, f"model version {number} " + ("does not exist" if row is None else
                                                           "was recorded without its definitions"))
        base = self._base()
        view = plan_draft(Draft.between(base, row["definitions"], rollback_of=number), base)
        return self._plan_page(view, title=f"Plan: rollback to version {number}")

    # -- helpers ----------------------------------------------------------------------------------
    def _base(self) -> Base:
        try:
            return applied_base()
        except DefinitionErrors as exc:
            self._abort(409, "the applied definitions cannot be read: " + "; ".join(error_lines(exc)))

    @staticmethod
    def _abort(code: int, message: str):
        from flask import abort
        abort(code, description=message)


def _preview_url() -> str | None:
    """The sync rules preview (preview.py), which takes proposed definitions; None without it."""
    try:
        return url_for("preview.index")
    except BuildError:
        return None


def _text(value: str) -> str:
    """Editor text as a file holds it: LF line ends (browsers send CRLF), a final newline; a 400
    for text no UTF-8 file can hold (a lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        from flask import abort
        abort(400, description="the text holds a character UTF-8 cannot store (a lone surrogate)")
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") or not text else text + "\n"


def _int(form, key: str) -> int | None:
    raw = (form.get(key) or "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise FormError(f"{key.split('_')[0] if key[-1].isdigit() else key}: {raw!r} is not a whole number") from None


def _number(form, key: str):
    raw = (form.get(key) or "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        try:
            value = Decimal(raw)
        except InvalidOperation:
            raise FormError(f"{key}: {raw!r} is not a number") from None
        if not value.is_finite():
            raise FormError(f"{key}: {raw!r} is not a number")
        return value


def _field_spec(form, suffix: str) -> FieldSpec:
    """A FieldSpec from form keys `name{suffix}`, `type{suffix}`, ... (the add-field form has no
    suffix, the new-entity form's rows `_0`, `_1`, ...)."""
    def get(key: str) -> str:
        value = form.get(key + suffix, "")
        if "\x00" in value:
            raise FormError(f"{key}: NUL characters are not allowed")
        return value.strip()
    values = [v.strip() for v in get("values").split(",") if v.strip()]
    spec = FieldSpec(
        name=get("name"), type=get("type"), required=get("required") in ("yes", "on", "true"),
        label=get("label"), description=get("description"), max_length=_int(form, "max_length" + suffix),
        min_length=_int(form, "min_length" + suffix), minimum=_number(form, "minimum" + suffix),
        maximum=_number(form, "maximum" + suffix), pattern=get("pattern"), precision=_int(form, "precision" + suffix),
        scale=_int(form, "scale" + suffix), values=values, to=get("to"), encryption=get("encryption") or "plain",
        phi=get("phi") in ("yes", "on", "true"))
    spec.check()
    if spec.type == "ref" and not spec.to:
        raise FormError(f"{spec.name}: a ref field needs the entity it refers to")
    if spec.type == "enum" and not spec.values:
        raise FormError(f"{spec.name}: an enum field needs its values (comma separated)")
    return spec


def _constraints(field) -> list[str]:
    """A field's constraints as short phrases for the entity page."""
    out = []
    if field.unique:
        out.append("unique")
    if field.min_length is not None:
        out.append(f"min length {field.min_length}")
    if field.max_length is not None:
        out.append(f"max length {field.max_length}")
    if field.minimum is not None:
        out.append(f"minimum {field.minimum}")
    if field.maximum is not None:
        out.append(f"maximum {field.maximum}")
    if field.pattern:
        out.append(f"pattern {field.pattern}")
    if field.precision is not None:
        out.append(f"precision {field.precision}, scale {field.scale}")
    if field.values:
        out.append("one of " + ", ".join(field.values))
    if field.has_default or field.default is not None:
        out.append(f"default {field.default}")
    if field.renamed_from:
        out.append("renamed from " + ", ".join(field.renamed_from))
    return out


