"""compile_expr selects exactly the rows expr.evaluate accepts, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from fieldsync.defs import expr as ex
from fieldsync.store.engine import make_engine
from fieldsync.store.expr_sql import compile_expr

metadata = sa.MetaData()
TABLE = sa.Table(
    "t", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("n", sa.BigInteger),
    sa.Column("d", sa.Numeric(10, 2)),
    sa.Column("s", sa.String(20)),
    sa.Column("b", sa.Boolean),
    sa.Column("day", sa.Date),
)

STRINGS = ["a", "b", "ab", "B", "", "t1", "t2"]
INTS = [-3, 0, 1, 2, 7]
DECIMALS = [Decimal("-1.50"), Decimal("0.00"), Decimal("2.25"), Decimal("7.00")]
DAYS = [dt.date(2025, 1, 1), dt.date(2025, 6, 30), dt.date(2026, 2, 28)]


def _rows() -> list[dict]:
    rng = random.Random(7)
    pick = lambda xs: None if rng.random() < 0.2 else rng.choice(xs)  # noqa: E731
    return [{"id": i, "n": pick(INTS), "d": pick(DECIMALS), "s": pick(STRINGS), "b": pick([True, False]),
             "day": pick(DAYS)} for i in range(60)]


ROWS = _rows()


def _normalize(v):
    # evaluate() compares Python values: give dates their wire form so they meet string literals
    return v.isoformat() if isinstance(v, dt.date) else v


# -- expression strategies (type-consistent literals, as the loader's definitions are) --------

def _scalar_for(column: str):
    return {
        "n": st.sampled_from(INTS + [5]).map(ex.Literal) | st.sampled_from([Decimal("1.5")]).map(ex.Literal),
        "d": st.sampled_from(DECIMALS + [Decimal("1")]).map(ex.Literal) | st.sampled_from([2, 0]).map(ex.Literal),
        "s": st.sampled_from(STRINGS).map(ex.Literal) | st.just(ex.UserAttr("id")),
        "b": st.sampled_from([True, False]).map(ex.Literal),
        "day": st.sampled_from([d.isoformat() for d in DAYS] + ["2025-03-01"]).map(ex.Literal),
    }[column]


@st.composite
def comparisons(draw):
    column = draw(st.sampled_from(["n", "d", "s", "b", "day"]))
    kind = draw(st.sampled_from(["cmp", "in", "null", "literal_null", "user_list"]))
    left = ex.FieldRef(column)
    if kind == "null":
        return ex.IsNull(left, draw(st.booleans()))
    if kind == "literal_null":
        return ex.Compare(draw(st.sampled_from(["==", "!="])), left, ex.Literal(None))
    if kind == "in":
        items = draw(st.lists(_scalar_for(column) | st.just(ex.Literal(None)), max_size=3))
        return ex.Compare(draw(st.sampled_from(["in", "not in"])), left, ex.ListOf(tuple(items)))
    if kind == "user_list" and column == "s":
        return ex.Compare(draw(st.sampled_from(["in", "not in"])), left, ex.UserAttr("names"))
    op = draw(st.sampled_from(ex.COMPARISONS if column != "b" else ("==", "!=")))
    right = draw(_scalar_for(column))
    if draw(st.booleans()):
        return ex.Compare(op, right, left)  # the column on the right side
    return ex.Compare(op, left, right)


expressions = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: ex.And(tuple(xs))),
        st.lists(inner, min_size=2, max_size=3).map(lambda xs: ex.Or(tuple(xs))),
        inner.map(ex.Not),
    ),
    max_leaves=6,
)

users = st.fixed_dictionaries({
    "id": st.sampled_from(STRINGS + [None]),
    "names": st.lists(st.sampled_from(STRINGS), max_size=3),
})


@pytest.fixture
def engine(db_url):
    engine = make_engine(db_url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(TABLE.insert(), ROWS)
    yield engine
    engine.dispose()


def _selected(engine, expr, user) -> set[int]:
    with engine.connect() as conn:
        return {r[0] for r in conn.execute(sa.select(TABLE.c.id).where(compile_expr(expr, TABLE, user)))}


def _expected(expr, user) -> set[int]:
    return {r["id"] for r in ROWS if ex.evaluate(expr, r, user, _normalize)}


def test_same_rows_as_evaluate(engine):
    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(expressions, users)
    def check(expr, user):
        assert _selected(engine, expr, user) == _expected(expr, user)

    check()


@pytest.mark.parametrize("source, user, expected", [
    ("s in $user.names", {"names": []}, set()),
    ("s not in $user.names", {"names": []}, {r["id"] for r in ROWS if r["s"] is not None}),
    ("not (n == 1)", {}, {r["id"] for r in ROWS if r["n"] != 1}),          # nulls included: two-valued
    ("n == null", {}, set()),
    ("s == $user.id", {"id": None}, set()),
    ("n in [1, null]", {}, {r["id"] for r in ROWS if r["n"] == 1}),
    ("n not in [1, null]", {}, {r["id"] for r in ROWS if r["n"] is not None and r["n"] != 1}),
])
def test_edge_semantics(engine, source, user, expected):
    expr = ex.parse(source)
    assert _selected(engine, expr, user) == expected == _expected(expr, user)


def test_values_are_bound_parameters_never_sql_text():
    hostile = "x'; DROP TABLE t; --"
    clause = compile_expr(ex.parse("s == $user.id or s in $user.names"), TABLE,
                          {"id": hostile, "names": [hostile]})
    sql = str(clause.compile(dialect=sa.dialects.postgresql.dialect()))
    assert hostile not in sql and "DROP" not in sql
    params = clause.compile().params
    assert hostile in params.values()


def test_unknown_column_is_an_error():
    with pytest.raises(ValueError, match="no column 'zz'"):
        compile_expr(ex.parse("zz == 1"), TABLE, {})
