"""Scope and filter expressions: the parser, its errors, and Python evaluation."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from fieldsync.defs import expr as ex
from fieldsync.errors import ExprError


def render(node) -> str:
    """Print a tree back as source (fully parenthesised), to round-trip through the parser."""
    if isinstance(node, ex.And):
        return "(" + " and ".join(render(i) for i in node.items) + ")"
    if isinstance(node, ex.Or):
        return "(" + " or ".join(render(i) for i in node.items) + ")"
    if isinstance(node, ex.Not):
        return "not " + render(node.item)
    if isinstance(node, ex.IsNull):
        return f"{render(node.operand)} is {'not ' if node.negated else ''}null"
    if isinstance(node, ex.Compare):
        return f"{render(node.left)} {node.op} {render(node.right)}"
    if isinstance(node, ex.FieldRef):
        return node.name
    if isinstance(node, ex.UserAttr):
        return f"$user.{node.name}"
    if isinstance(node, ex.ListOf):
        return "[" + ", ".join(render(i) for i in node.items) + "]"
    value = node.value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


names = st.sampled_from(["region", "territory_id", "active", "qty", "rep_id"])
literals = st.one_of(st.integers(-1000, 1000), st.text(max_size=8), st.booleans(), st.none()).map(ex.Literal)
operands = st.one_of(names.map(ex.FieldRef), st.sampled_from(["id", "region"]).map(ex.UserAttr), literals)
compares = st.builds(ex.Compare, st.sampled_from(ex.COMPARISONS), operands, operands)
memberships = st.builds(ex.Compare, st.sampled_from(["in", "not in"]), operands,
                        st.lists(literals, max_size=3).map(lambda xs: ex.ListOf(tuple(xs))))
leaves = st.one_of(compares, memberships, st.builds(ex.IsNull, operands, st.booleans()))
trees = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, min_size=2, max_size=3).map(lambda xs: ex.And(tuple(xs))),
    st.lists(inner, min_size=2, max_size=3).map(lambda xs: ex.Or(tuple(xs))),
    inner.map(ex.Not)), max_leaves=8)


@given(trees)
def test_round_trip(tree):
    assert ex.parse(render(tree)) == tree


def test_precedence_and_binds_tighter_than_or():
    tree = ex.parse("a == 1 or b == 2 and c == 3")
    assert isinstance(tree, ex.Or) and isinstance(tree.items[1], ex.And)


@pytest.mark.parametrize("source,position", [
    ("", 0), ("region ==", 9), ("region = 'x'", 7), ("(a == 1", 7), ("a == 1 b", 7), ("a is nul", 5),
    ("a in [1, 2", 10), ("a == 'unterminated", 5),
])
def test_syntax_errors_have_positions(source, position):
    with pytest.raises(ExprError) as info:
        ex.parse(source)
    assert info.value.position == position


def test_no_code_execution_path():
    # Python syntax is not ours: a call or attribute access is a syntax error, never evaluated.
    for source in ("__import__('os').system('true')", "region.upper() == 'X'", "a == 1; b == 2"):
        with pytest.raises(ExprError):
            ex.parse(source)


def test_evaluate_semantics():
    tree = ex.parse("territory_id in $user.territory_ids and active == true and note is null")
    user = {"territory_ids": ["t1", "t2"]}
    assert ex.evaluate(tree, {"territory_id": "t1", "active": True, "note": None}, user)
    assert not ex.evaluate(tree, {"territory_id": "t3", "active": True, "note": None}, user)
    assert not ex.evaluate(tree, {"territory_id": "t1", "active": True, "note": "x"}, user)
    # SQL semantics: comparing with null is never true, in either direction
    assert not ex.evaluate(ex.parse("qty > 3"), {"qty": None}, {})
    assert not ex.evaluate(ex.parse("qty != 3"), {"qty": None}, {})
    assert not ex.evaluate(ex.parse("territory_id in $user.territory_ids"), {"territory_id": "t1"}, {})
    assert ex.evaluate(ex.parse("region not in ['n', 's']"), {"region": "e"}, {})


def test_names_used():
    tree = ex.parse("(a == $user.id or b in $user.territory_ids) and not c is null")
    assert ex.field_names(tree) == {"a", "b", "c"}
    assert ex.user_attributes(tree) == {"id", "territory_ids"}
