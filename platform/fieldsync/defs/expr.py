"""Scope and row-filter expressions: a small grammar parsed into an immutable tree.

Grammar (keywords are lower case)::

    expr     := or
    or       := and ("or" and)*
    and      := not ("and" not)*
    not      := "not" not | atom
    atom     := "(" expr ")" | operand tail
    tail     := ("==" | "!=" | "<" | "<=" | ">" | ">=") operand
              | "in" operand | "not" "in" operand
              | "is" "null" | "is" "not" "null"
    operand  := FIELD | "$user." ATTRIBUTE | STRING | NUMBER | "true" | "false" | "null"
              | "[" [operand ("," operand)*] "]"

Expressions are never evaluated with `eval` and never spliced into SQL: `fieldsync.store`
compiles the tree to parametrised SQLAlchemy expressions, and `evaluate()` here checks a
row in Python (the same semantics, used for writes and on devices).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Iterator, Union
from fieldsync.errors import ExprError

COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")


@dataclass(frozen=True, slots=True)
class FieldRef:
    name: str


@dataclass(frozen=True, slots=True)
class UserAttr:
    name: str


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any


@dataclass(frozen=True, slots=True)
class ListOf:
    items: tuple["Operand", ...]


Operand = Union[FieldRef, UserAttr, Literal, ListOf]


@dataclass(frozen=True, slots=True)
class Compare:
    op: str            # one of COMPARISONS, "in", "not in"
    left: Operand
    right: Operand


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Operand
    negated: bool = False


@dataclass(frozen=True, slots=True)
class And:
    items: tuple["Expr", ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple["Expr", ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: "Expr"


Expr = Union[Compare, IsNull, And, Or, Not]

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<user>\$user\.[A-Za-z_][A-Za-z0-9_]*)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()\[\],])
""", re.VERBOSE)

_KEYWORDS = {"and", "or", "not", "in", "is", "null", "true", "false"}


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    pos: int


def _tokenize(source: str) -> list[_Token]:
    tokens, pos = [], 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if m is None:
            raise ExprError(f"unexpected character {source[pos]!r}", pos)
        kind = m.lastgroup
        if kind != "space":
            text = m.group()
            if kind == "name" and text in _KEYWORDS:
                kind = "keyword"
            tokens.append(_Token(kind, text, pos))
        pos = m.end()
    tokens.append(_Token("end", "", len(source)))
    return tokens


class _Parser:
    def __init__(self, source: str):
        self.tokens = _tokenize(source)
        self.i = 0

    def peek(self, offset: int = 0) -> _Token:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def accept(self, kind: str, text: str | None = None) -> _Token | None:
        tok = self.peek()
        if tok.kind == kind and (text is None or tok.text == text):
            return self.take()
        return None

    def expect(self, kind: str, text: str, what: str) -> _Token:
        tok = self.accept(kind, text)
        if tok is None:
            found = self.peek()
            raise ExprError(f"expected {what}, found {found.text or 'end of expression'!r}", found.pos)
        return tok

    def parse(self) -> Expr:
        expr = self.parse_or()
        tok = self.peek()
        if tok.kind != "end":
            raise ExprError(f"unexpected {tok.text!r}", tok.pos)
        return expr

    def parse_or(self) -> Expr:
        items = [self.parse_and()]
        while self.accept("keyword", "or"):
            items.append(self.parse_and())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def parse_and(self) -> Expr:
        items = [self.parse_not()]
        while self.accept("keyword", "and"):
            items.append(self.parse_not())
        return items[0] if len(items) == 1 else And(tuple(items))

    def parse_not(self) -> Expr:
        if self.accept("keyword", "not"):
            return Not(self.parse_not())
        return self.parse_atom()

    def parse_atom(self) -> Expr:
        if self.accept("punct", "("):
            expr = self.parse_or()
            self.expect("punct", ")", "')'")
            return expr
        left = self.parse_operand()
        tok = self.peek()
        if tok.kind == "op":
            self.take()
            return Compare(tok.text, left, self.parse_operand())
        if self.accept("keyword", "in"):
            return Compare("in", left, self.parse_operand())
        if tok.kind == "keyword" and tok.text == "not" and self.peek(1).text == "in":
            self.take(), self.take()
            return Compare("not in", left, self.parse_operand())
        if self.accept("keyword", "is"):
            negated = self.accept("keyword", "not") is not None
            self.expect("keyword", "null", "'null'")
            return IsNull(left, negated)
        raise ExprError(
            f"expected a comparison after the operand, found {tok.text or 'end of expression'!r}",
            tok.pos)

    def parse_operand(self) -> Operand:
        tok = self.take()
        if tok.kind == "name":
            return FieldRef(tok.text)
        if tok.kind == "user":
            return UserAttr(tok.text[len("$user."):])
        if tok.kind == "string":
            return Literal(_unquote(tok.text))
        if tok.kind == "number":
            return Literal(Decimal(tok.text) if "." in tok.text else int(tok.text))
        if tok.kind == "keyword" and tok.text in ("true", "false", "null"):
            return Literal({"true": True, "false": False, "null": None}[tok.text])
        if tok.kind == "punct" and tok.text == "[":
            items: list[Operand] = []
            if not self.accept("punct", "]"):
                items.append(self.parse_operand())
                while self.accept("punct", ","):
                    items.append(self.parse_operand())
                self.expect("punct", "]", "']'")
            return ListOf(tuple(items))
        raise ExprError(f"expected a field, $user attribute or value, found {tok.text or 'end of expression'!r}",
                        tok.pos)


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def parse(source: str) -> Expr:
    """Parse an expression; raises ExprError with the character position on bad syntax."""
    if not isinstance(source, str) or not source.strip():
        raise ExprError("expression is empty", 0)
    return _Parser(source).parse()


def operands(expr: Expr) -> Iterator[Operand]:
    """Every operand in the tree (list items included), for validation."""
    if isinstance(expr, (And, Or)):
        for item in expr.items:
            yield from operands(item)
    elif isinstance(expr, Not):
        yield from operands(expr.item)
    elif isinstance(expr, IsNull):
        yield from _flatten(expr.operand)
    else:
        yield from _flatten(expr.left)
        yield from _flatten(expr.right)


def _flatten(op: Operand) -> Iterator[Operand]:
    if isinstance(op, ListOf):
        for item in op.items:
            yield from _flatten(item)
    else:
        yield op


def field_names(expr: Expr) -> set[str]:
    return {op.name for op in operands(expr) if isinstance(op, FieldRef)}


def user_attributes(expr: Expr) -> set[str]:
    return {op.name for op in operands(expr) if isinstance(op, UserAttr)}


def evaluate(expr: Expr, row: dict[str, Any], user: dict[str, Any],
             normalize: Callable[[Any], Any] = lambda v: v) -> bool:
    """True when `row` satisfies `expr` for `user` (SQL semantics: comparisons with null fail)."""
    if isinstance(expr, And):
        return all(evaluate(i, row, user, normalize) for i in expr.items)
    if isinstance(expr, Or):
        return any(evaluate(i, row, user, normalize) for i in expr.items)
    if isinstance(expr, Not):
        return not evaluate(expr.item, row, user, normalize)
    if isinstance(expr, IsNull):
        value = _value(expr.operand, row, user, normalize)
        return (value is not None) if expr.negated else (value is None)
    left = _value(expr.left, row, user, normalize)
    right = _value(expr.right, row, user, normalize)
    if expr.op in ("in", "not in"):
        if left is None or right is None:
            return False
        members = right if isinstance(right, (list, tuple, set, frozenset)) else [right]
        found = left in members
        return found if expr.op == "in" else not found
    if left is None or right is None:
        return False
    try:
        return {
            "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
            "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
        }[expr.op](left, right)
    except TypeError:
        return False


def _value(op: Operand, row: dict[str, Any], user: dict[str, Any], normalize) -> Any:
    if isinstance(op, FieldRef):
        return normalize(row.get(op.name))
    if isinstance(op, UserAttr):
        value = user.get(op.name)
        if isinstance(value, (list, tuple, set, frozenset)):
            return [normalize(v) for v in value]
        return normalize(value)
    if isinstance(op, ListOf):
        return [_value(i, row, user, normalize) for i in op.items]
    return normalize(op.value)
