"""The prepared write path (`fieldsync.client.write_plan`) checks a local write exactly like
`fieldsync.defs.values.validate_record`, the server's check: the same clean values and the same
problems, in the same order, with the same words, for any input."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, Mapping

from hypothesis import given, settings
from hypothesis import strategies as st

from fieldsync.client.schema import DeviceSchema
from fieldsync.client.write_plan import encode_fields, plan_for
from fieldsync.defs.values import FieldProblem, validate_record

SCHEMA = DeviceSchema(json.loads((Path(__file__).resolve().parents[2] / "generated" / "device"
                                  / "schema.json").read_text()))
WRITABLE = [t for t in SCHEMA.entities.values() if t.direction not in ("pull", "none")]


def reference(table, fields: Any, partial: bool) -> Any:
    """The check local writes made before the write plan (outbox.check_fields of the last release)."""
    problems: list[FieldProblem] = []
    owner = table.owner
    if owner and isinstance(fields, Mapping) and owner in fields:
        problems.append(FieldProblem(owner, "is set by the server from the signed-in user"))
        fields = {k: v for k, v in fields.items() if k != owner}
    clean, more = validate_record(table.entity, fields, partial=partial, server_set=(owner,) if owner else ())
    problems += more
    return problems or clean


def datetime_texts() -> st.SearchStrategy[str]:
    # a day inside the calendar at both ends: astimezone(UTC) of 0001-01-01 at +05:30 overflows
    moments = st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                           timezones=st.sampled_from([dt.timezone.utc, dt.timezone(dt.timedelta(hours=5, minutes=30))]))
    return st.one_of(
        moments.map(lambda d: d.isoformat()),
        moments.map(lambda d: d.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"),
        moments.map(lambda d: d.astimezone(dt.timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"),
        st.tuples(st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32), st.integers(0, 24),
                  st.sampled_from(["", ".000000", ".123456", ".5"]), st.sampled_from("Zz"))
        .map(lambda p: f"{p[0]:04d}-{p[1]:02d}-{p[2]:02d}T{p[3]:02d}:59:60"[:-2] + f"0{p[3] % 10}{p[4]}{p[5]}"),
        moments)


DATETIMES = datetime_texts()
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**64, max_value=2**64), st.integers(-5, 500),
    st.floats(allow_nan=True), st.text(max_size=40), st.text(max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=8),
    st.uuids().map(str), st.uuids().map(lambda u: str(u).upper()), st.uuids().map(lambda u: u.hex),
    DATETIMES, st.sampled_from(["order", "detailing", "collection", "survey", "bogus", "ORDER"]),
    st.dates().map(str), st.decimals(allow_nan=False, places=3).map(str),
    st.fixed_dictionaries({"lat": st.floats(-100, 100), "lon": st.floats(-200, 200)}),
    st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3), max_size=3),
    st.sampled_from(["fsmedia:0192a000-0000-7000-8000-000000000301", "\x00", "a\ud800"]))


def typed(field) -> st.SearchStrategy[Any]:
    """Mostly values of the field's own type (so whole writes come out valid), some anything."""
    strategy = TYPED.get(field)
    if strategy is None:
        strategy = TYPED[field] = _typed(field)
    return strategy


TYPED: dict[Any, st.SearchStrategy[Any]] = {}


def _typed(field) -> st.SearchStrategy[Any]:
    t = field.type
    own = {
        "uuid": st.uuids().map(str), "ref": st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()),
        "string": st.text(max_size=300), "text": st.text(max_size=40), "datetime": DATETIMES,
        "enum": st.sampled_from([*field.values, "bogus"]), "integer": st.integers(-10, 10**6) | st.integers(),
        "boolean": st.booleans(), "date": st.dates().map(str), "decimal": st.decimals(allow_nan=False).map(str),
        "geopoint": st.fixed_dictionaries({"lat": st.floats(-100, 100), "lon": st.floats(-200, 200)}),
        "json": st.dictionaries(st.text(max_size=3), st.integers() | st.text(max_size=3), max_size=3),
        "media": st.uuids().map(lambda u: f"fsmedia:{u}"),
    }.get(t, VALUES)
    return own


@st.composite
def writes(draw) -> tuple:
    table = draw(st.sampled_from(WRITABLE))
    fields = {}
    for f in table.entity.fields:
        if f.name == table.owner:
            present = not draw(st.integers(0, 20))
        else:
            present = f.required or draw(st.integers(0, 3))
        if present:   # mostly a value of the field's type, so that whole writes come out valid
            fields[f.name] = draw(typed(f) if draw(st.integers(0, 30)) else VALUES)
    if not draw(st.integers(0, 20)):
        fields["not_a_field"] = 1
    return table, fields, draw(st.booleans())


@settings(max_examples=600, deadline=None)
@given(writes())
def test_the_write_plan_checks_like_validate_record(write):
    table, fields, partial = write
    expected = reference(table, fields, partial)
    plan = plan_for(table)
    got = plan.problems(fields, partial=partial)
    assert got == expected
    # the compiled checks alone: the clean values (and the INSERT's row) of a write without a
    # problem, in entity order; None for any write with one, which the general walk then names
    compiled = plan.update_values(fields) if partial else plan.insert_values(fields)
    if isinstance(expected, dict):
        assert [type(v) for v in got.values()] == [type(v) for v in expected.values()]
        assert json.loads(encode_fields(got)) == json.loads(json.dumps(expected, sort_keys=True))
        assert compiled is not None
        clean = compiled if partial else compiled[0]
        assert list(clean.items()) == list(expected.items())
        assert [type(v) for v in clean.values()] == [type(v) for v in expected.values()]
        if not partial:
            assert compiled[1] == [None, *(table.column(n).to_storage(v) for n, v in expected.items())]
    else:
        assert compiled is None
        assert plan.all_problems(fields, partial=partial) == expected


def test_a_mapping_that_is_no_dict_is_refused_alike():
    table = SCHEMA.entity("visit")
    for fields in ([], "text", None, {"rep_id": "x"}.items()):
        assert plan_for(table).problems(fields, partial=False) == reference(table, fields, False)


def test_the_compiled_checks_take_a_dict_subclass_through_the_general_walk():
    class Fields(dict):
        pass
    table = SCHEMA.entity("visit")
    fields = Fields(retailer_id="2fd6ae15-929b-509f-9c04-01a819382ca2", territory_id="270707fc-40e4-5205-8dad-51e11ccbfacf",
                    visited_at="2026-11-26T15:00:00Z", purpose="order")
    assert plan_for(table).insert_values(fields) is None
    assert plan_for(table).problems(fields, partial=False) == reference(table, fields, False)


def test_outbox_fields_keep_integers_orjson_cannot_write():
    assert json.loads(encode_fields({"b": 2**70, "a": [1.5, None, True]})) == {"a": [1.5, None, True], "b": 2**70}
    assert encode_fields({"b": 1, "a": "é"}) in ('{"a":"é","b":1}', '{"a": "\\u00e9", "b": 1}')
