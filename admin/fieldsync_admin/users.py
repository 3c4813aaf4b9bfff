"""The users page of the admin UI (issue 12, section 3; /work/notes/admin-audit.md), for the admin
role: the user directory (fieldsync.auth.users) listed, and its operations as forms — add, change
role and attributes, reset the password, disable and enable, revoke tokens.

Every operation is the directory's own function, which checks the input (role of the live
model, attributes as roles.yaml declares them, password length) and audits the change in its
transaction with channel "admin" and the logged-in admin as actor. Bad input is a flash message
naming the problem. A password is never shown, logged or audited; a second factor is shown as
enrolled or not (enrolment, which must show its secret once, stays with `fieldsync users`).
An admin cannot disable their own account or change their own role (the directory could be left
without an admin); they may reset their own password or revoke their own tokens (which ends this
session too).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import flash, redirect, request, url_for
from flask_admin import BaseView, expose

from fieldsync.auth.users import (PASSWORD_MIN, USER_ID_MAX, add_user, attribute_from_text, disable_user, enable_user,
                                  get_user, list_users, revoke_tokens, set_password, set_user)
from fieldsync.errors import AuditUnavailable, Conflict, NotFound
from fieldsync_admin.security import RoleView, current_user, state

__all__ = ["UsersView", "views"]


def _attributes(form, model) -> dict[str, Any]:
    """The declared attributes given in `form` (fields `attr_<name>`; empty: not set), parsed as
    `fieldsync users` parses them; ValueError naming a bad one."""
    values = {}
    for attr in model.attributes:
        raw = form.get(f"attr_{attr.name}", "").strip()
        if not raw:
            continue
        try:
            values[attr.name] = attribute_from_text(attr, raw)
        except ValueError:
            raise ValueError(f"attribute {attr.name!r}: {raw[:40]!r} is not a {attr.items or attr.type}") from None
    return values


def _attribute_text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)


def _when(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M") if epoch else ""


class UsersView(RoleView, BaseView):
    """The user directory and its operations."""

    roles = ("admin",)

    def __init__(self, snapshot: Any):
        super().__init__(name="Users", endpoint="users", url="users")
        self.snapshot = snapshot

    @expose("/")
    def index(self):
        return self.render("fieldsync_admin/users_index.html", users=list_users(state().engine),
                           roles=self.snapshot.model.role_names, attributes=self.snapshot.model.attributes,
                           attribute_text=_attribute_text, when=_when, password_min=PASSWORD_MIN,
                           me=current_user().user_id)

    @expose("/edit")
    def edit(self):
        user_id = request.args.get("user", "")
        try:
            if "\x00" in user_id or len(user_id) > USER_ID_MAX:
                raise NotFound(user_id)
            user = get_user(state().engine, user_id)
        except NotFound:
            flash(f"no user {user_id[:128]!r}", "danger")
            return redirect(url_for(".index"))
        return self.render("fieldsync_admin/users_edit.html", user=user, roles=self.snapshot.model.role_names,
                           attributes=self.snapshot.model.attributes, attribute_text=_attribute_text, when=_when,
                           password_min=PASSWORD_MIN, me=current_user().user_id)

    def _run(self, done: str, operation, *, back_to_user: str | None = None):
        """Run a directory operation; its message, or the problem, as a flash."""
        try:
            user_id = request.form.get("user", "")
            if "\x00" in user_id or len(user_id) > USER_ID_MAX:   # no database takes a NUL
                raise NotFound(f"no user {user_id[:USER_ID_MAX]!r}")
            result = operation()
        except (ValueError, Conflict, NotFound, AuditUnavailable) as exc:
            flash(str(exc), "danger")
        else:
            flash(done if result is not False else "nothing changed", "success" if result is not False else "info")
        if back_to_user:
            return redirect(url_for(".edit", user=back_to_user))
        return redirect(url_for(".index"))

    def _common(self) -> dict[str, Any]:
        return {"actor": current_user().user_id, "channel": "admin", "now": state().auth_clock()}

    @expose("/add", methods=["POST"])
    def add(self):
        form = request.form
        user_id = form.get("user", "").strip()
        role = form.get("role", "")

        def operation():
            attributes = _attributes(form, self.snapshot.model)
            return add_user(state().engine, state().audit, self.snapshot.model, user_id, role=role,
                            password=form.get("password", ""), attributes=attributes,
                            keyring=state().crypto.keyring, **self._common())
        return self._run(f"user {user_id} added as {role}", operation)

    @expose("/change", methods=["POST"])
    def change(self):
        form = request.form
        user_id = form.get("user", "")
        role = form.get("role") or None

        def operation():
            if user_id == current_user().user_id and role is not None and role != current_user().role:
                raise ValueError("you cannot change your own role (ask another admin)")
            attributes = _attributes(form, self.snapshot.model)
            set_user(state().engine, state().audit, self.snapshot.model, user_id, role=role, attributes=attributes,
                     keyring=state().crypto.keyring, **self._common())
        return self._run(f"user {user_id} saved (a change of role or attributes revoked their tokens)", operation,
                         back_to_user=user_id)

    @expose("/password", methods=["POST"])
    def password(self):
        user_id = request.form.get("user", "")
        return self._run(f"the password of {user_id} was reset and their tokens revoked",
                         lambda: set_password(state().engine, state().audit, self.snapshot.model, user_id,
                                              request.form.get("password", ""), **self._common()),
                         back_to_user=user_id)

    @expose("/enabled", methods=["POST"])
    def enabled(self):
        user_id = request.form.get("user", "")
        enable = request.form.get("enabled") == "1"

        def operation():
            if not enable and user_id == current_user().user_id:
                raise ValueError("you cannot disable your own account")
            return (enable_user if enable else disable_user)(state().engine, state().audit, user_id,
                                                             **self._common())
        return self._run(f"user {user_id} {'enabled' if enable else 'disabled (their tokens are revoked)'}",
                         operation)

    @expose("/revoke", methods=["POST"])
    def revoke(self):
        user_id = request.form.get("user", "")
        return self._run(f"every token of {user_id} is revoked: they log in again",
                         lambda: revoke_tokens(state().engine, state().audit, user_id, **self._common()))


def views(snapshot) -> list:
    return [UsersView(snapshot)]
