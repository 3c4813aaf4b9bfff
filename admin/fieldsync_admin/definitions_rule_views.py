"""The rule forms of the Definitions view (docs/admin.md, "Editing with forms"): an entity's sync
rule, its permissions per role and its fields' encryption policies.

Each form is a page of DefinitionsView (this mixin), prefilled from the entity's YAML file as
applied; a POST validates the values, writes them over just the entries they change
(definitions_rules.py), validates the whole model as `fieldsync validate` does (an expression
that does not parse comes back as the loader's file:line:column message) and ends on the same
plan page as every other edit. Nothing changes before Apply, with the analyst/admin rules of
the plan page.
"""

from __future__ import annotations

from typing import Any, Callable

from flask import flash, g, request
from flask_admin import expose

from fieldsync.defs.model import ENCRYPTION_MODES

from fieldsync_admin.definitions_change import Draft, check_texts, plan_draft
from fieldsync_admin.definitions_rules import (ACTIONS, CONFLICTS, DIRECTIONS, apply_edits, encryption_edits,
                                               entity_data, permission_edits, sync_edits)
from fieldsync_admin.definitions_yaml import FormError, entity_file

__all__ = ["RuleForms"]

WINDOW_TYPES = ("date", "datetime")


def _sync_values(source: Any) -> dict[str, str]:
    if hasattr(source, "getlist"):        # the posted form
        return {k: source.get(k, "") for k in ("direction", "scope", "window", "window_field", "conflict",
                                               "priority")}
    spec = source.get("sync") if isinstance(source.get("sync"), dict) else {}
    return {k: "" if spec.get(k) is None else str(spec.get(k))
            for k in ("direction", "scope", "window", "window_field", "conflict", "priority")}


def _permission_values(source: Any, roles: tuple[str, ...]) -> dict[str, dict]:
    out = {}
    if hasattr(source, "getlist"):
        for role in roles:
            out[role] = {"actions": set(source.getlist(f"actions_{role}")),
                         "visible": None if source.get(f"visible_{role}_all") else source.getlist(f"visible_{role}"),
                         "editable": None if source.get(f"editable_{role}_all") else
                         source.getlist(f"editable_{role}"),
                         "row_filter": source.get(f"row_filter_{role}", ""),
                         "break_glass": bool(source.get(f"break_glass_{role}"))}
        return out
    current = source.get("permissions") if isinstance(source.get("permissions"), dict) else {}
    for role in roles:
        spec = current.get(role) if isinstance(current.get(role), dict) else {}
        out[role] = {"actions": set(spec.get("actions") or ()), "visible": spec.get("visible"),
                     "editable": spec.get("editable"), "row_filter": spec.get("row_filter") or "",
                     "break_glass": bool(spec.get("break_glass"))}
    return out


def _encryption_values(source: Any, fields: tuple[str, ...]) -> dict[str, dict]:
    if hasattr(source, "getlist"):
        return {f: {"mode": source.get(f"mode_{f}", "plain"), "phi": bool(source.get(f"phi_{f}"))} for f in fields}
    encryption = source.get("encryption") if isinstance(source.get("encryption"), dict) else {}
    policies = encryption.get("fields") if isinstance(encryption.get("fields"), dict) else {}
    out = {}
    for f in fields:
        policy = policies.get(f) if isinstance(policies.get(f), dict) else {}
        out[f] = {"mode": policy.get("mode", "plain"), "phi": bool(policy.get("phi"))}
    return out


class RuleForms:
    """The sync, permissions and encryption forms; mixed into DefinitionsView (which supplies
    render, _base, _abort and _plan_page)."""

    @expose("/entity/<entity_name>/sync", methods=("GET", "POST"))
    def edit_sync(self, entity_name: str):
        def edits(data, form, entity):
            return sync_edits(data, form, kind=entity.kind)
        return self._rule_form(entity_name, "sync", edits, "the sync rule")

    @expose("/entity/<entity_name>/permissions", methods=("GET", "POST"))
    def edit_permissions(self, entity_name: str):
        def edits(data, form, entity):
            return permission_edits(data, form, roles=g.snapshot.model.role_names, fields=entity.field_names)
        return self._rule_form(entity_name, "permissions", edits, "the permissions")

    @expose("/entity/<entity_name>/encryption", methods=("GET", "POST"))
    def edit_encryption(self, entity_name: str):
        def edits(data, form, entity):
            return encryption_edits(data, form, fields=entity.field_names)
        return self._rule_form(entity_name, "encryption", edits, "the encryption policies")

    # -- one flow for the three forms -------------------------------------------------------------
    def _rule_form(self, entity_name: str, form_name: str, make_edits: Callable, what: str):
        model = g.snapshot.model
        if not model.has_entity(entity_name) or model.entity(entity_name).parent is not None:
            self._abort(404, f"there is no top-level entity {entity_name!r} in the live model (a child's sync "
                             "rule, actions and encryption are its parent's)")
        entity = model.entity(entity_name)
        base = self._base()
        rel = entity_file(base.sources, entity_name)
        if rel is None:
            self._abort(404, f"no file defines {entity_name} (masters/{entity_name}.yaml or "
                             f"transactions/{entity_name}.yaml)")
        try:
            data = entity_data(base.sources[rel])
        except FormError as exc:
            self._abort(409, str(exc))
        if request.method != "POST":   # GET and HEAD
            return self._render_rule_form(form_name, entity, rel, data, [])
        try:
            edits = make_edits(data, request.form, entity)
            if not edits:
                flash("nothing to change: the form says what the definitions say already", "info")
                return self._render_rule_form(form_name, entity, rel, request.form, [])
            text = apply_edits(base.sources[rel], edits)
        except FormError as exc:
            flash(str(exc), "danger")
            return self._render_rule_form(form_name, entity, rel, request.form, []), 400
        draft = Draft.edit(base, {rel: text})
        errors, built = check_texts(draft.sources(base.sources))
        if built is None:
            flash(f"the change does not validate ({len(errors)} error(s)): nothing was planned", "danger")
            return self._render_rule_form(form_name, entity, rel, request.form, errors), 400
        return self._plan_page(plan_draft(draft, base), title=f"Plan: change {what} of {entity_name}")

    def _render_rule_form(self, form_name: str, entity, rel: str, source, errors: list[str]):
        model = g.snapshot.model
        context: dict[str, Any] = {"entity": entity, "file": rel, "errors": errors}
        if form_name == "sync":
            context.update(values=_sync_values(source), directions=DIRECTIONS, conflicts=CONFLICTS,
                           window_fields=[f.name for f in entity.fields if f.type in WINDOW_TYPES])
        elif form_name == "permissions":
            roles = model.role_names
            context.update(values=_permission_values(source, roles), roles=roles, actions=ACTIONS,
                           descriptions={r.name: r.description for r in model.roles})
        else:
            context.update(values=_encryption_values(source, entity.field_names), modes=ENCRYPTION_MODES)
        return self.render(f"fieldsync_admin/definitions_{form_name}.html", **context)
