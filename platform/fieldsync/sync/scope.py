"""What one device may receive: its entities, their predicates and visible fields, the scope hash.

A device's scope is the model's sync rules and the role's permissions evaluated for the user of
the request's token (invariant 6: a device never receives a row or column its user may not see).
The same predicate is used three ways: compiled to SQL for snapshots, evaluated in Python on
change-log rows for the stream, and digested into the scope hash that tells a device its rules
changed (docs/sync-design.md decision 6).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import sqlalchemy as sa

from fieldsync.auth.tokens import Principal
from fieldsync.defs import expr as ex
from fieldsync.defs.access import access_rule
from fieldsync.defs.model import Entity, Model
from fieldsync.store.expr_sql import compile_expr, python_value
from fieldsync.store.codec import FieldCodec, PlainJsonCodec

__all__ = ["DeviceScope", "EntityScope", "compile_predicate", "device_scope", "scope_hash_of", "PULLED_DIRECTIONS", "PUSHED_DIRECTIONS"]

PULLED_DIRECTIONS = ("pull", "both")
PUSHED_DIRECTIONS = ("push", "both")


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
_LISTS = (list, tuple, set, frozenset)


def _operand(op: ex.Operand, user: Mapping[str, Any]) -> tuple[bool, Any]:
    """(True, value) for an operand that does not depend on the row, else (False, getter)."""
    if isinstance(op, ex.FieldRef):
        name = op.name
        return False, lambda row: row.get(name)
    if isinstance(op, ex.UserAttr):
        value = user.get(op.name)
        return True, list(value) if isinstance(value, _LISTS) else value
    if isinstance(op, ex.ListOf):
        items = [_operand(i, user) for i in op.items]
        if all(const for const, _ in items):
            return True, [v for _, v in items]
        getters = [(lambda row, v=v: v) if const else v for const, v in items]
        return False, lambda row: [g(row) for g in getters]
    return True, op.value


def compile_predicate(expr: ex.Expr, user: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], bool]:
    """`expr` for `user` as a function of a row with exactly `ex.evaluate`'s semantics (null
    comparisons are false, a TypeError is false), with the user's values looked up once."""
    if isinstance(expr, (ex.And, ex.Or)):
        parts = [compile_predicate(i, user) for i in expr.items]
        if isinstance(expr, ex.And):
            return lambda row: all(p(row) for p in parts)
        return lambda row: any(p(row) for p in parts)
    if isinstance(expr, ex.Not):
        inner = compile_predicate(expr.item, user)
        return lambda row: not inner(row)
    if isinstance(expr, ex.IsNull):
        const, value = _operand(expr.operand, user)
        negated = expr.negated
        if const:
            return lambda row: (value is not None) if negated else (value is None)
        return (lambda row: value(row) is not None) if negated else (lambda row: value(row) is None)
    l_const, left = _operand(expr.left, user)
    r_const, right = _operand(expr.right, user)
    get_left = (lambda row: left) if l_const else left
    get_right = (lambda row: right) if r_const else right
    if expr.op in ("in", "not in"):
        negate = expr.op == "not in"

        def member(row: Mapping[str, Any]) -> bool:
            a, b = get_left(row), get_right(row)
            if a is None or b is None:
                return False
            found = a in (b if isinstance(b, _LISTS) else [b])
            return not found if negate else found
        return member
    compare = _COMPARE[expr.op]

    def comparison(row: Mapping[str, Any]) -> bool:
        a, b = get_left(row), get_right(row)
        if a is None or b is None:
            return False
        try:
            return bool(compare(a, b))
        except TypeError:
            return False
    return comparison


def _digest(value: Any) -> str:
    raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def scope_hash_of(digests: Mapping[str, str]) -> str:
    """The scope hash of a map entity -> descriptor digest."""
    return "s1:" + _digest(dict(digests))


@dataclass(frozen=True)
class EntityScope:
    """One pulled entity as one device sees it."""

    entity: Entity
    predicates: tuple[ex.Expr, ...]      # sync scope and role row filter; all must hold
    visible: tuple[str, ...]             # field names the role may see
    window_days: int | None
    window_field: str | None
    digest: str

    def floor(self, now: dt.datetime) -> str | None:
        """The window's floor in wire form (a date or a UTC datetime), or None."""
        if self.window_days is None or self.window_field is None:
            return None
        floor = now - dt.timedelta(days=self.window_days)
        if self.entity.field(self.window_field).type == "date":
            return floor.date().isoformat()
        return floor.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class DeviceScope:
    """Entities a device pulls (parents before children, then by priority), with predicates."""

    def __init__(self, model: Model, principal: Principal, entities: list[EntityScope], now: dt.datetime,
                 codec: FieldCodec):
        self.model = model
        self.principal = principal
        self.user = principal.expression_user()
        self.entities = {s.entity.name: s for s in entities}
        self.order = [s.entity.name for s in entities]
        self.now = now
        self.codec = codec
        self.digests = {s.entity.name: s.digest for s in entities}
        self.hash = scope_hash_of(self.digests)

    def windows(self) -> dict[str, str]:
        """Per windowed entity, the floor of its window (the pull response's `windows`)."""
        return {name: floor for name, s in self.entities.items() if (floor := s.floor(self.now)) is not None}

    def matches(self, name: str, row: Mapping[str, Any] | None) -> bool:
        """True when `row` (wire form, decoded) is live and inside the entity's own rules.
        A child's parent must be checked separately (`parent_id`)."""
        if row is None or row.get("deleted"):
            return False
        return self.matcher(name)(row)

    def matcher(self, name: str) -> Callable[[Mapping[str, Any] | None], bool]:
        """`matches` for one entity as a function of the row, its predicates compiled once."""
        cache = self.__dict__.setdefault("_matchers", {})
        found = cache.get(name)
        if found is not None:
            return found
        scope = self.entities[name]
        predicates = [compile_predicate(p, self.user) for p in scope.predicates]
        floor = scope.floor(self.now)
        window_field = scope.window_field

        def match(row: Mapping[str, Any] | None) -> bool:
            if row is None or row.get("deleted"):
                return False
            for predicate in predicates:
                if not predicate(row):
                    return False
            if floor is not None:
                value = row.get(window_field)
                if value is None or str(value) < floor:
                    return False
            return True
        cache[name] = match
        return match

    def matched_fields(self, name: str) -> frozenset[str]:
        """The row members `matcher(name)` reads: equal values there give equal answers (the
        user and the window floor are fixed for the scope). A child's parent link is not in it."""
        cache = self.__dict__.setdefault("_matched_fields", {})
        found = cache.get(name)
        if found is None:
            scope = self.entities[name]
            names = {"deleted"}
            for predicate in scope.predicates:
                names |= ex.field_names(predicate)
            if scope.window_field is not None:
                names.add(scope.window_field)
            found = cache[name] = frozenset(names)
        return found

    def visible_row(self, name: str, row: Mapping[str, Any]) -> dict[str, Any]:
        """`row` reduced to the fields the role may see plus `created_at`/`updated_at`."""
        scope = self.entities[name]
        out = {f: row.get(f) for f in scope.visible}
        out["created_at"] = row.get("created_at")
        out["updated_at"] = row.get("updated_at")
        return out

    def sql_where(self, name: str, table: sa.Table) -> list[sa.ColumnElement]:
        """WHERE clauses selecting the live rows of the entity inside its own rules."""
        scope = self.entities[name]
        entity = scope.entity
        encoders = {f.name: (lambda v, f=f: self.codec.lookup_values(entity, f, v))
                    for f in entity.fields if f.encryption == "deterministic"}
        where = [table.c.deleted == sa.false()]
        where += [compile_expr(p, table, self.user, encoders=encoders) for p in scope.predicates]
        floor = scope.floor(self.now)
        if floor is not None:
            column = table.c[scope.window_field]
            where.append(column >= python_value(column.type, floor))
        return where


def _entity_scope(model: Model, entity: Entity, principal: Principal, parent_digest: str | None) -> EntityScope | None:
    # the effective rule (defs/access.py); a child's parent condition is the caller's: a child
    # is scoped only under a scoped parent, and pulled only joined to a parent row in scope
    rule = access_rule(model, entity, principal.role)
    if rule is None or not rule.can("read"):
        return None
    perm = rule.permission
    user = principal.expression_user()
    predicates = []
    sources = []
    if entity.parent is None:
        if entity.sync.scope is not None:
            predicates.append(entity.sync.scope)
            sources.append(entity.sync.scope_source)
    if perm.row_filter is not None:
        predicates.append(perm.row_filter)
        sources.append(perm.row_filter_source)
    used = set()
    for p in predicates:
        used |= ex.user_attributes(p)
    visible = tuple(f.name for f in entity.fields if perm.visible is None or f.name in perm.visible)
    window_days = entity.sync.window_days if entity.parent is None else None
    window_field = entity.sync.window_field if entity.parent is None else None
    if window_days is not None and window_field is None:
        window_field = next((f.name for f in entity.fields if f.type in ("datetime", "date")), None)
    descriptor = {
        "direction": entity.sync.direction, "predicates": sources,
        "window": [window_days, window_field], "visible": visible,
        "fields": [[f.name, f.type] for f in entity.fields],
        "user": {k: user.get(k) for k in sorted(used)}, "parent": parent_digest,
    }
    return EntityScope(entity, tuple(predicates), visible, window_days, window_field, _digest(descriptor))


def device_scope(model: Model, principal: Principal, now: dt.datetime,
                 codec: FieldCodec | None = None) -> DeviceScope:
    """The scope of a device whose request carries `principal`'s token, at time `now`."""
    scopes: dict[str, EntityScope] = {}
    for entity in model.entities:  # parents come before their children in the model
        if entity.parent is None:
            if entity.sync.direction not in PULLED_DIRECTIONS:
                continue
            scope = _entity_scope(model, entity, principal, None)
        else:
            parent = scopes.get(entity.parent)
            if parent is None:
                continue
            scope = _entity_scope(model, entity, principal, parent.digest)
        if scope is not None:
            scopes[entity.name] = scope

    def order_key(name: str) -> tuple:
        e = model.entity(name)
        root = model.entity(e.parent) if e.parent else e
        return (root.sync.priority, root.name, 0 if e.parent is None else 1, e.name)

    ordered = [scopes[n] for n in sorted(scopes, key=order_key)]
    return DeviceScope(model, principal, ordered, now, codec or PlainJsonCodec())
