"""The Data views of the admin UI (issue 12, section 3; docs/admin.md, "Data").

One view per entity of the live model, under the "Data" menu: a list with the entity's filters
and sort, a detail page, create, edit, and delete as a tombstone. Flask-Admin's model-view
interface (`BaseModelView`) is implemented over `RecordStore`, not over ORM classes, so every
read and write takes the path REST takes (fieldsync/api/entities.py):

* the logged-in user's role decides, through `fieldsync.defs.access.access_rule`, whether the
  view is there at all (read), which buttons it has (create, update, delete), which rows it
  lists (row filter; a child's live, reachable parent), which fields it shows (the rest are
  masked), which it may set (editable fields; the owner is the user), and which records a
  reference may name;
* writes go through the store (validation, references, uniqueness, the change log devices pull
  from, the audit write hook in the write's transaction) and its problems are shown on the form's
  fields;
* PHI the role sees is audited before the page is rendered (action read, channel admin, purpose
  operations); a role with the break-glass grant may open one record's hidden fields on its
  detail page with a reason, audited with purpose break-glass and the reason.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Mapping

from flask import abort, flash, g, has_request_context, redirect, request, url_for
from flask_admin import expose
from flask_admin.helpers import get_form_data, get_redirect_target
from flask_admin.model import BaseModelView
from flask_admin.model.template import DeleteRowAction
from markupsafe import Markup, escape
from wtforms import fields as wtf
from wtforms.validators import InputRequired

from fieldsync.audit.events import Disclosure, read_events
from fieldsync.defs.access import AccessRule, access_rule
from fieldsync.defs.model import Entity, Model
from fieldsync.defs.query import query_fields, sortable
from fieldsync.defs.values import FieldProblem, normalize_value, uuid_text, validate_record
from fieldsync.errors import AuditUnavailable, BadQuery, Conflict, NotFound, PermissionDenied, ValidationFailed
from fieldsync.store.records import RecordStore, RowFilter
from fieldsync.untrusted import text_problem

from fieldsync_admin import security
from fieldsync_admin.data_filters import filters_for
from fieldsync_admin.data_forms import CsrfForm, entity_form, form_values, label_of, prefill, show_problems
from fieldsync_admin.security import ADMIN_ROLES, RoleView, current_user

__all__ = ["EntityView", "MASK", "views"]

log = logging.getLogger("fieldsync.admin")

CATEGORY = "Data"
MASK = Markup('<span class="fs-masked" title="not shown to your role">•••</span>')
PURPOSE = "operations"            # HIPAA: health care operations (administration of the data)
BREAK_GLASS_PURPOSE = "break-glass"
MAX_REASON = 500                  # as fieldsync.api.break_glass
SYSTEM_LIST = ("id",)
SYSTEM_DETAILS = ("version", "created_at", "updated_at")
LIST_SKIPS = ("text", "json")     # long values: on the detail page only


def _usable_return_url(target: str | None) -> bool:
    """Whether Flask-Admin can redirect to `target` (the request's `url`) without failing."""
    if not target:
        return True
    if any(ord(c) < 32 or ord(c) == 127 for c in target):
        return False
    try:
        get_redirect_target()   # flask_admin's is_safe_url: urlparse raises on a bad IPv6 host
    except ValueError:
        return False
    return True


def views(snapshot) -> list:
    """One EntityView per entity of the snapshot's model (children included)."""
    return [EntityView(snapshot.model, snapshot.store, entity) for entity in snapshot.model.entities]


class EntityView(RoleView, BaseModelView):
    """Flask-Admin's model view over the records of one entity, as the logged-in role reaches them."""

    roles = ADMIN_ROLES
    can_view_details = True
    named_filter_urls = True
    column_display_pk = True
    page_size = 20
    form_base_class = CsrfForm
    list_template = "fieldsync_admin/data_list.html"
    details_template = "fieldsync_admin/data_details.html"

    def __init__(self, live_model: Model, store: RecordStore, entity: Entity):
        self.entity = entity
        self.live_model = live_model
        self.store = store
        self.fields = {f.name: f for f in entity.fields}
        self.column_labels = {f.name: label_of(f) for f in entity.fields}
        self.column_labels.update(id="Id", version="Version", created_at="Created", updated_at="Updated")
        self.column_descriptions = {f.name: f.description for f in entity.fields if f.description}
        self.column_filters = [n for n in query_fields(entity)]
        self.column_details_list = ["id"] + list(entity.field_names) + list(SYSTEM_DETAILS)
        name = entity.label or entity.name.replace("_", " ").capitalize()
        super().__init__(entity, name=name, category=CATEGORY, endpoint=f"data_{entity.name}",
                         url=f"/data/{entity.name}")

    # -- who may do what (per request: the role is the logged-in user's) ----------------------
    def rule(self) -> AccessRule | None:
        """The logged-in role's effective rule on this entity (a child's through its parent)."""
        user = current_user() if has_request_context() else None
        return access_rule(self.live_model, self.entity, user.role) if user is not None else None

    def _can(self, action: str) -> bool:
        rule = self.rule()
        return rule is not None and rule.can(action)

    can_create = property(lambda self: self._can("create"))
    can_edit = property(lambda self: self._can("update") and bool(self.rule().writable(create=False)))
    can_delete = property(lambda self: self._can("delete"))

    def is_accessible(self) -> bool:
        return super().is_accessible() and self._can("read")

    def _handle_view(self, name: str, **kwargs: Any):
        """Before every view: Flask-Admin redirects to the `url` parameter (the page to return
        to) after an action; one it cannot put in a Location header (a control character) or
        that urllib cannot parse (`//[x`) is a 400 here, not a ValueError (a 500) there."""
        response = super()._handle_view(name, **kwargs)
        if response is None and not _usable_return_url(request.values.get("url")):
            abort(400, description="the url parameter (the page to return to) is not a URL of this site")
        return response

    def _rule_for(self, action: str) -> AccessRule:
        rule = self.rule()
        if rule is None or not rule.can(action):
            abort(403, description=f"your role may not {action} {self.entity.name} records")
        return rule

    def row_filter(self, rule: AccessRule) -> RowFilter | None:
        return RowFilter.for_rule(rule, security.principal().expression_user())

    def reach(self, target: Entity) -> tuple[bool, RowFilter | None]:
        """Which records of `target` a reference may name: those the role reads (REST's _reach)."""
        rule = access_rule(self.live_model, target, current_user().role)
        if rule is None or not rule.can("read"):
            return False, None
        return True, RowFilter.for_rule(rule, security.principal().expression_user())

    def visible(self, rule: AccessRule | None = None) -> set[str]:
        """The fields shown in this request: the role's visible list, every field during a
        granted break-glass view."""
        rule = rule or self.rule()
        if rule is None:
            return set()
        if g.get("fs_break_glass") or rule.permission.visible is None:
            return set(self.entity.field_names)
        return set(rule.permission.visible)

    # -- scaffolding ---------------------------------------------------------------------------
    def get_pk_value(self, model: Mapping[str, Any]) -> Any:
        return model.get("id")

    def scaffold_list_columns(self) -> list[str]:
        return list(SYSTEM_LIST) + [f.name for f in self.entity.fields if f.type not in LIST_SKIPS]

    def scaffold_sortable_columns(self) -> dict[str, str]:
        return {name: name for name, f in query_fields(self.entity).items() if sortable(f)}

    @property
    def _sortable_columns(self) -> dict[str, str]:
        """Sortable columns the role sees (a hidden column's order would tell its values)."""
        every = self.scaffold_sortable_columns()
        if not has_request_context() or current_user() is None:
            return every
        shown = self.visible() | {"id", "version", "created_at", "updated_at"}
        return {k: v for k, v in every.items() if k in shown}

    @_sortable_columns.setter
    def _sortable_columns(self, value: Any) -> None:
        pass   # computed per request

    def scaffold_filters(self, name: Any) -> list:
        f = query_fields(self.entity).get(name)
        if f is None:
            return []
        return filters_for(f, self.column_labels.get(name, name))

    def _get_filter_groups(self):
        groups = super()._get_filter_groups()
        if not groups or not has_request_context() or current_user() is None:
            return groups
        shown = {self.column_labels.get(n, n) for n in self.visible()} | {"Id", "Version", "Created", "Updated"}
        return type(groups)((k, v) for k, v in groups.items() if k in shown)

    def scaffold_form(self):
        return entity_form(self.entity, self.entity.field_names, create=True)

    def get_delete_form(self):
        class DeleteForm(self.form_base_class):
            id = wtf.HiddenField(validators=[InputRequired()])
            url = wtf.HiddenField()
            version = wtf.HiddenField()
            confirm = wtf.HiddenField(validators=[InputRequired(message="tick the box to confirm the delete")])
        return DeleteForm

    def get_list_row_actions(self):
        # delete is on the detail page, behind a confirmation (a list icon deletes in one click)
        return [a for a in super().get_list_row_actions() if not isinstance(a, DeleteRowAction)]

    # -- values shown --------------------------------------------------------------------------
    def _get_field_value(self, model: Mapping[str, Any], name: str) -> Any:
        field = self.fields.get(name)
        if field is None:
            return model.get(name)
        if name not in self.visible():
            return MASK
        value = model.get(name)
        if value is None:
            return None
        if field.type == "ref" and isinstance(value, str):
            target = self.live_model.entity(field.ref)
            rule = access_rule(self.live_model, target, current_user().role)
            if rule is not None and rule.can("read"):
                href = url_for(f"data_{target.name}.details_view", id=value)
                return Markup(f'<a href="{escape(href)}">{escape(value)}</a>')
            return value
        if field.type == "geopoint" and isinstance(value, Mapping):
            return f"{value.get('lat')}, {value.get('lon')}"
        if field.type == "json":
            return json.dumps(value, ensure_ascii=False)
        return value

    def _audit_reads(self, records: Iterable[Mapping[str, Any]], *, reason: str | None = None,
                     only: Iterable[str] | None = None) -> None:
        """Record the PHI of `records` shown in this request (of the fields `only`, when given)
        before the page is rendered (invariant 8: when the audit trail refuses, the page fails and
        nothing is shown)."""
        phi = [f.name for f in self.entity.phi_fields if f.name in self.visible() and (only is None or f.name in only)]
        if not phi:
            return
        disclosures = [Disclosure(self.entity, r["id"], tuple(n for n in phi if n in r),
                                  r.get(self.entity.subject) if self.entity.subject else None) for r in records]
        user = current_user()
        extra = {} if reason is None else {"event": "break_glass_read", "count": len(disclosures),
                                           "source_ip": request.remote_addr or "unknown"}
        events = read_events(disclosures, codec=self.store.codec, actor=user.user_id, role=user.role,
                             channel="admin", purpose=BREAK_GLASS_PURPOSE if reason is not None else PURPOSE,
                             reason=reason, detail=extra)
        if not events:
            return
        try:
            security.state().audit.record_all(events)
        except AuditUnavailable:
            log.exception("the audit trail refused a PHI read on the admin UI; nothing was shown")
            abort(503, description="the audit trail could not record this access, so it was not shown; "
                                   "try again later")

    # -- reads ---------------------------------------------------------------------------------
    def get_list(self, page, sort_field, sort_desc, search, filters, execute=True, page_size=None):
        """One page of the live records the role reaches (page numbers walk the store's keyset
        cursor), with the total."""
        rule = self._rule_for("read")
        shown = self.visible(rule)
        wanted = []
        for idx, _name, value in filters or ():
            flt = self._filters[idx]
            if flt.column in self.fields and flt.column not in shown:
                flash(f"{self.column_labels.get(flt.column)}: your role may not filter on this field", "danger")
                return 0, []
            try:
                wanted.append(flt.clean(value))
            except BadQuery as exc:
                flash(str(exc), "danger")
                return 0, []
        sort = sort_field if sort_field in self._sortable_columns else None
        key = (("-" if sort_desc else "") + sort) if sort else "-id"   # newest first (ids are time-ordered)
        size = page_size or self.page_size
        page = max(0, page or 0)
        cursor, total, items = None, 0, []
        try:
            for i in range(page + 1):
                result = self.store.list(self.entity, filters=wanted, sort=key, limit=size, cursor=cursor,
                                         total=i == 0, row_filter=self.row_filter(rule),
                                         columns=shown | {"id"})
                if i == 0:
                    total = result.total or 0
                    if page * size >= max(total, 1):   # past the last page: no walk to find out
                        items = []
                        break
                items = result.items
                if result.next_cursor is None and i < page:
                    items = []
                    break
                cursor = result.next_cursor
        except BadQuery as exc:
            flash(str(exc), "danger")
            return 0, []
        self._audit_reads(items)
        return total, items

    def get_one(self, id: Any) -> dict[str, Any] | None:
        """The live record `id` if the role reaches it (None: missing, a tombstone, or outside
        the row filter or a live reachable parent — the same answer for all)."""
        rule = self._rule_for("read")
        if not isinstance(id, str):
            return None
        try:
            record_id = uuid_text(id.strip())
        except ValueError:
            return None
        try:
            return self.store.get(self.entity, record_id, row_filter=self.row_filter(rule))
        except NotFound:
            return None

    @expose("/details/")
    def details_view(self):
        record_id = request.args.get("id")
        return self._details(record_id)

    @expose("/break-glass/", methods=("POST",))
    def break_glass_view(self):
        """Show one record's every field, PHI included, to a role with the break-glass grant,
        for the reason given; audited (granted or refused) with the reason."""
        rule = self._rule_for("read")
        record_id = request.form.get("id", "")
        reason = (request.form.get("reason") or "").strip()
        refusal = None
        if not rule.permission.break_glass:
            refusal = ("denied", "no_grant", 403, f"your role has no break-glass access to {self.entity.name} records")
        elif not reason or len(reason) > MAX_REASON or text_problem(reason):
            refusal = ("failure", "bad_request", 400,
                       f"give the reason for this emergency access (1 to {MAX_REASON} characters of text)")
        if refusal is not None:
            outcome, why, status, message = refusal
            kept = reason[:MAX_REASON] if reason and not text_problem(reason) else None
            try:
                security.audit("read", outcome=outcome, entity=self.entity.name, purpose=BREAK_GLASS_PURPOSE,
                               reason=kept, detail={"event": "break_glass_refused", "why": why,
                                                    "source_ip": request.remote_addr or "unknown"})
            except AuditUnavailable:   # refused anyway; keep the refusal and log the gap (as REST)
                log.exception("the audit trail refused a break-glass refusal")
            if status == 403:
                abort(403, description=message)
            flash(message, "danger")
            return redirect(self.get_url(".details_view", id=record_id))
        g.fs_break_glass = True
        return self._details(record_id, reason=reason)

    def _details(self, record_id: Any, *, reason: str | None = None):
        return_url = get_redirect_target() or self.get_url(".index_view")
        record = self.get_one(record_id)
        if record is None:
            flash(f"no {self.entity.name} record {str(record_id)[:64]!r} that your role may see", "danger")
            return redirect(return_url)
        self._audit_reads([record], reason=reason)
        rule = self.rule()
        masked = [label_of(f) for f in self.entity.fields if f.name not in self.visible()]
        children = []
        for name in self.entity.children:   # links to the record's children, for roles that read them
            child = self.live_model.entity(name)
            child_rule = access_rule(self.live_model, child, current_user().role)
            if child_rule is not None and child_rule.can("read"):
                children.append((child.label or child.collection or child.name, url_for(
                    f"data_{child.name}.index_view", **{f"flt0_{child.parent_field}_equals": record["id"]})))
        return self.render(self.details_template, model=record, details_columns=self._details_columns,
                           children=children,
                           get_value=self.get_detail_value, return_url=return_url, masked=masked,
                           break_glass=rule.permission.break_glass and bool(masked) and reason is None,
                           break_glass_reason=reason, delete_form=self.delete_form() if self.can_delete else None)

    # -- forms ---------------------------------------------------------------------------------
    def _writable(self, *, create: bool) -> tuple[str, ...]:
        rule = self._rule_for("create" if create else "update")
        return rule.writable(create=create)

    def create_form(self, obj: Any = None):
        return entity_form(self.entity, self._writable(create=True), create=True)(get_form_data())

    def edit_form(self, obj: Any = None):
        names = self._writable(create=False)
        form = entity_form(self.entity, names, create=False)(get_form_data())
        if request.method in ("GET", "HEAD") and obj is not None:
            shown = self.visible()
            for name, text in prefill(self.entity, obj, [n for n in names if n in shown]).items():
                form[name].data = text
            form["version"].data = str(obj["version"])
            self._audit_reads([obj], only=names)
        return form

    def _write(self, fn, form, *args, **kwargs) -> dict[str, Any] | None:
        """Run a store write as the logged-in user (the audit hook records PHI writes on the admin
        channel); its problems go on the form. None when nothing was written."""
        g.principal = security.principal()
        g.audit_channel = "admin"
        g.audit_purpose = PURPOSE
        try:
            return fn(*args, **kwargs)
        except ValidationFailed as exc:
            self._refuse(form, exc.problems)
        except (PermissionDenied, Conflict, NotFound) as exc:
            flash(f"not saved: {exc}", "danger")
        except AuditUnavailable:   # the hook's entry and the write rolled back together (invariant 8)
            log.exception("the audit trail refused an admin write of %s", self.entity.name)
            flash("not saved: the audit trail could not record this change; try again later", "danger")
        return None

    @staticmethod
    def _refuse(form, problems: list[FieldProblem]) -> bool:
        """Show `problems` on the form's fields (the rest in the message); False: not saved."""
        rest = show_problems(form, problems) if form is not None else [f"{p.field}: {p.reason}" for p in problems]
        flash(f"not saved: {len(problems)} field(s) are invalid" + (f" ({'; '.join(rest)})" if rest else ""), "danger")
        return False

    def _audit_write(self, action: str, record: Mapping[str, Any], names: Iterable[str]) -> None:
        """Every admin data write is audited with who made it and the fields it set (names only);
        PHI writes are also recorded by the store's audit hook in the write's transaction."""
        try:
            security.audit(action, entity=self.entity.name, record_ids=(record["id"],), purpose=PURPOSE,
                           detail={"event": "admin_data_write", "changed": sorted(names)})
        except Exception:   # the write is committed; a missing operations entry is logged
            log.exception("the audit log refused an admin %s of %s %s", action, self.entity.name, record["id"])

    def create_model(self, form) -> dict[str, Any] | bool:
        rule = self._rule_for("create")
        names = rule.writable(create=True)
        body, problems = form_values(self.entity, form, names, skip_empty=names)
        server = {self.entity.owner: current_user().user_id} if self.entity.owner else {}
        if problems:
            others = validate_record(self.entity, body, partial=False, writable=names,
                                     server_set=tuple(server) + tuple(p.field for p in problems))[1]
            return self._refuse(form, problems + others)
        record = self._write(self.store.create, form, self.entity, body, writable=names, server_values=server,
                             row_filter=self.row_filter(rule), reach=self.reach)
        if record is None:
            return False
        self._audit_write("create", record, body)
        return record

    def update_model(self, form, model: dict[str, Any]) -> bool:
        rule = self._rule_for("update")
        names = rule.writable(create=False)
        values, problems = form_values(self.entity, form, names)   # editable fields are visible ones (the loader)
        if problems:
            return self._refuse(form, problems + validate_record(self.entity, values, partial=True, writable=names)[1])
        changes = {k: v for k, v in values.items() if not self._same(k, v, model.get(k))}
        try:
            expected = int(form["version"].data or model["version"])
        except (TypeError, ValueError):
            expected = model["version"]
        if not changes:
            flash("nothing changed", "info")
            return True
        record = self._write(self.store.update, form, self.entity, model["id"], changes, expected_version=expected,
                             writable=names, row_filter=self.row_filter(rule), reach=self.reach)
        if record is None:
            return False
        model.update(record)
        self._audit_write("update", record, changes)
        return True

    def _same(self, name: str, new: Any, old: Any) -> bool:
        try:
            return normalize_value(self.fields[name], new) == old
        except Exception:   # not a value of the field: the store says why
            return False

    def delete_model(self, model: dict[str, Any]) -> bool:
        """Delete as a tombstone through the store: devices pull the delete."""
        rule = self._rule_for("delete")
        form = self.delete_form()
        try:
            expected = int(form.version.data) if form.version.data else None
        except (TypeError, ValueError):
            expected = None
        record = self._write(self.store.delete, None, self.entity, model["id"], expected_version=expected,
                             row_filter=self.row_filter(rule))
        if record is None:
            return False
        self._audit_write("delete", record, ())
        return True
