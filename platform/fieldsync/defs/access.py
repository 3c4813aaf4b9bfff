"""The effective access rule of one role on one entity, its parent chain included.

Every path that decides what a caller may reach (the REST API by id, lists, nested routes, sync
push, pull, refetch and results) asks `access_rule(model, entity, role)`; none reads a child's
permission on its own. The rule for a child (docs/access.md, "Child entities"):

- its actions and break-glass grant are its parent's;
- its `visible` and `editable` lists are the ones its child section declares for the role, else
  the parent's lists applied to the child's fields by name (the parent reference field is
  always visible: it names a record the caller already reaches);
- it has no row filter of its own: a child row is reachable exactly when its parent row is live
  (not a tombstone) and reachable by the parent's rule, recursively.

`child_permission` builds a child's `Permission` from its parent's; the loader stores the result
in the model, so `Entity.permission(role)` already holds a child's effective actions and field
lists. The row part, which needs the parent row, is `AccessRule.parent`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from fieldsync.defs.model import Entity, Model, Permission

__all__ = ["AccessRule", "access_rule", "child_permission"]


@dataclass(frozen=True, slots=True)
class AccessRule:
    """What one role may do with one entity. `permission` is the effective permission (a child's
    resolved from its parent's); `parent` is the rule the parent row of a child row must pass
    (None for a root entity)."""

    entity: Entity
    permission: Permission
    parent: "AccessRule | None" = None

    def can(self, action: str) -> bool:
        return self.permission.can(action)

    def writable(self, *, create: bool) -> tuple[str, ...]:
        """The fields the role may set: its editable list (all fields without one), never the
        owner; on create a child may always name its parent (which must then be reachable)."""
        entity, perm = self.entity, self.permission
        names = perm.editable if perm.editable is not None else entity.field_names
        out = tuple(n for n in names if n != entity.owner)
        if create and entity.parent_field is not None and entity.parent_field not in out:
            out = (entity.parent_field,) + out
        return out

    def chain(self) -> Iterable["AccessRule"]:
        """This rule, then its parent's, up to the root."""
        rule: AccessRule | None = self
        while rule is not None:
            yield rule
            rule = rule.parent


def access_rule(model: Model, entity: Entity | str, role: str) -> AccessRule | None:
    """The effective rule of `role` on `entity`; None when the role may do nothing with it (for
    a child: when the role may do nothing with its parent)."""
    entity = model.entity(entity) if isinstance(entity, str) else entity
    perm = entity.permission(role)
    if perm is None:
        return None
    parent = None
    if entity.parent is not None:
        parent = access_rule(model, model.entity(entity.parent), role)
        if parent is None:
            return None
    return AccessRule(entity, perm, parent)


def child_permission(parent: Permission, field_names: tuple[str, ...], parent_field: str,
                     declared: Mapping[str, Any] | None = None) -> Permission:
    """A child's permission for `parent.role`: the parent's actions and break-glass grant, no row
    filter of its own; `visible` and `editable` each as the child section declares it for the
    role (`declared`), else the parent's list kept for the child fields of the same name."""
    declared = declared or {}

    def resolve(key: str, inherited: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if key in declared:
            return tuple(declared[key])
        if inherited is None:
            return None
        return tuple(n for n in field_names if n in inherited)

    visible = resolve("visible", parent.visible)
    editable = resolve("editable", parent.editable)
    if visible is not None and parent_field not in visible:
        visible = (parent_field,) + visible
    return Permission(parent.role, parent.actions, visible, editable, None, None, break_glass=parent.break_glass)
