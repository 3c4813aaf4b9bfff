"""Compiling scope and row-filter expressions (`fieldsync.defs.expr`) to SQLAlchemy Core.

Every value becomes a bound parameter; nothing is spliced into SQL text. The result selects
exactly the rows `fieldsync.defs.expr.evaluate` accepts, which uses two-valued logic: a
comparison with null is *false* (not SQL's unknown), so `not (x == 1)` holds for a row whose
x is null. Each comparison is therefore guarded with IS NOT NULL, which keeps NOT, AND and OR
two-valued in SQL as well. `x in $user.list` with an empty list is false, `not in` true (for a
non-null x).

Values are converted to the Python type of the column they meet (Decimal for numerics,
date/datetime objects, ...), so comparisons happen in the database's own type, on SQLite and
PostgreSQL alike. `python_value` is that conversion, shared with the record store.
"""

from __future__ import annotations

import datetime as dt
import operator
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Mapping

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement

from fieldsync.defs import expr as ex
from fieldsync.defs.values import DECIMAL_TEXT, parse_datetime
from fieldsync.errors import Unconvertible, ValueProblem
from fieldsync.untrusted import INT32_MAX, INT64_MAX

_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt,
    "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
_MIRROR = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}


def python_value(sa_type: sa.types.TypeEngine, value: Any) -> Any:
    """`value` (wire form or an expression literal) as the Python value a column of `sa_type`
    holds; raises Unconvertible when no value of the column could equal it."""
    if value is None:
        return None
    if isinstance(sa_type, sa.Boolean):
        if isinstance(value, bool):
            return value
        raise Unconvertible(value)
    if isinstance(value, bool):
        raise Unconvertible(value)
    if isinstance(sa_type, sa.Numeric):  # decimals (Integer is not a Numeric subclass)
        if isinstance(value, str) and not DECIMAL_TEXT.fullmatch(value):
            raise Unconvertible(value)   # Decimal() would take "１２", " 12" and "1_000"
        if isinstance(value, (int, Decimal, str)):
            try:
                d = Decimal(str(value))
            except InvalidOperation:
                raise Unconvertible(value) from None
            if d.is_finite():
                return d
        raise Unconvertible(value)
    if isinstance(sa_type, sa.Integer):
        if isinstance(value, int):
            # past the column's range no row can hold it, and the driver would overflow
            bound = INT64_MAX if isinstance(sa_type, sa.BigInteger) else INT32_MAX
            if not -bound <= value <= bound:
                raise Unconvertible(value)
            return value
        if isinstance(value, Decimal):
            return value  # compared across types: 2 == 2.0, 2 < 2.5
        raise Unconvertible(value)
    if isinstance(sa_type, sa.DateTime):
        try:
            return parse_datetime(value)
        except ValueProblem:
            raise Unconvertible(value) from None
    if isinstance(sa_type, sa.Date):
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return value
        if isinstance(value, str) and len(value) == 10:
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise Unconvertible(value)
    if isinstance(sa_type, (sa.String, sa.Text)):
        if isinstance(value, str):
            return value
        raise Unconvertible(value)
    return value  # JSON columns: compared as given


class _Compiler:
    def __init__(self, table: sa.Table, user: Mapping[str, Any],
                 encoders: Mapping[str, Callable[[Any], Any]]):
        self.table = table
        self.user = user
        self.encoders = encoders

    def column(self, name: str) -> sa.Column:
        try:
            return self.table.c[name]
        except KeyError:
            raise ValueError(f"table {self.table.name} has no column {name!r}") from None

    def value(self, op: ex.Operand) -> Any:
        """A non-column operand's Python value (lists for lists)."""
        if isinstance(op, ex.UserAttr):
            return self.user.get(op.name)
        if isinstance(op, ex.Literal):
            return op.value
        if isinstance(op, ex.ListOf):
            return [self.value(i) for i in op.items]
        raise TypeError(op)

    def bind(self, column: sa.Column, value: Any) -> Any:
        """A bound parameter holding `value` as `column` stores it."""
        converted = python_value(column.type, value)
        bind_type = column.type
        if isinstance(converted, Decimal) and not isinstance(bind_type, sa.Numeric):
            bind_type = sa.Numeric()  # an integer column met by 2.5: do not truncate the value
        return sa.bindparam(None, converted, type_=bind_type, unique=True)

    def compile(self, node: ex.Expr) -> ColumnElement:
        if isinstance(node, ex.And):
            return sa.and_(*(self.compile(i) for i in node.items))
        if isinstance(node, ex.Or):
            return sa.or_(*(self.compile(i) for i in node.items))
        if isinstance(node, ex.Not):
            return sa.not_(self.compile(node.item))
        if isinstance(node, ex.IsNull):
            return self.is_null(node)
        if node.op in ("in", "not in"):
            return self.membership(node)
        return self.comparison(node.op, node.left, node.right)

    def is_null(self, node: ex.IsNull) -> ColumnElement:
        if isinstance(node.operand, ex.FieldRef):
            col = self.column(node.operand.name)
            return col.isnot(None) if node.negated else col.is_(None)
        value = self.value(node.operand)
        return sa.true() if (value is not None) == node.negated else sa.false()

    def comparison(self, op: str, left: ex.Operand, right: ex.Operand) -> ColumnElement:
        left_col = isinstance(left, ex.FieldRef)
        right_col = isinstance(right, ex.FieldRef)
        if left_col and right_col:
            a, b = self.column(left.name), self.column(right.name)
            return sa.and_(a.isnot(None), b.isnot(None), _OPS[op](a, b))
        if not left_col and not right_col:
            # nothing from the row: decide now, exactly as evaluate() would
            result = ex.evaluate(ex.Compare(op, left, right), {}, dict(self.user))
            return sa.true() if result else sa.false()
        if right_col:  # keep the column on the left
            left, right, op = right, left, _MIRROR[op]
        col = self.column(left.name)
        value = self.value(right)
        if value is None:
            return sa.false()  # evaluate(): null never compares
        if isinstance(value, list):
            return col.isnot(None) if op == "!=" else sa.false()  # a list never equals a scalar
        encode = self.encoders.get(col.name)
        if encode is not None:
            # an encrypted column: only equality, against every stored form the value may have
            forms = encode(value)
            found = col.in_(sa.bindparam(None, forms, type_=col.type, expanding=True, unique=True))
            return sa.and_(col.isnot(None), sa.not_(found) if op == "!=" else found)
        try:
            param = self.bind(col, value)
        except Unconvertible:
            # no stored value equals it; evaluate() says != for every non-null value
            return col.isnot(None) if op == "!=" else sa.false()
        return sa.and_(col.isnot(None), _OPS[op](col, param))

    def membership(self, node: ex.Compare) -> ColumnElement:
        negated = node.op == "not in"
        if isinstance(node.right, ex.ListOf):
            items = list(node.right.items)
        elif isinstance(node.right, ex.UserAttr):
            value = self.user.get(node.right.name)
            if value is None:
                return sa.false()
            values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
            items = [ex.Literal(v) for v in values]
        elif isinstance(node.right, ex.FieldRef):
            items = [node.right]  # evaluate(): a scalar right side is a one-item list
        else:
            value = self.value(node.right)
            if value is None:
                return sa.false()
            items = [ex.Literal(v) for v in (value if isinstance(value, list) else [value])]
        if not isinstance(node.left, ex.FieldRef):
            left_value = self.value(node.left)
            if left_value is None:
                return sa.false()
            found = sa.or_(sa.false(), *(self.comparison("==", node.left, i) for i in items))
            return sa.not_(found) if negated else found
        col = self.column(node.left.name)
        constants, others = [], []
        for item in items:
            if isinstance(item, ex.FieldRef):
                others.append(self.comparison("==", node.left, item))
                continue
            v = self.value(item)
            if v is None or isinstance(v, list):
                continue  # null is never a member; nested lists equal no scalar
            if col.name in self.encoders:
                constants.append(v)   # encoded below, from the wire value the row was written with
                continue
            try:
                v = python_value(col.type, v)
            except Unconvertible:
                continue
            if isinstance(v, Decimal) and isinstance(col.type, sa.Integer):
                if v != v.to_integral_value():
                    continue  # 2.5 is no integer column's value
                v = int(v)
            constants.append(v)
        encode = self.encoders.get(col.name)
        if encode is not None:
            constants = [form for v in constants for form in encode(v)]
        parts = list(others)
        if constants:
            parts.append(col.in_(sa.bindparam(None, constants, type_=col.type, expanding=True, unique=True)))
        found = sa.or_(sa.false(), *parts)
        return sa.and_(col.isnot(None), sa.not_(found) if negated else found)


def compile_expr(expr: ex.Expr, table: sa.Table, user: Mapping[str, Any], *,
                 encoders: Mapping[str, Callable[[Any], Any]] | None = None) -> ColumnElement:
    """A parametrised WHERE clause selecting the rows of `table` that satisfy `expr` for `user`.

    `user` maps attribute names (id, role, and the model's attributes) to values. `encoders`
    maps column names to a function turning a value into the list of its stored forms
    (deterministically encrypted columns: one per key in use), compared by equality only.
    """
    return _Compiler(table, user, encoders or {}).compile(expr)
