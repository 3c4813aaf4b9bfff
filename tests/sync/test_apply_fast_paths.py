"""The apply path's fast paths give exactly what the general code gives: the mutation digest's
bytes (stored digests are compared with resent mutations, invariant 2) and every value and
problem of `validate_record` (a schema-invalid value is rejected with its field and reason)."""

from __future__ import annotations

import hashlib
import json
import random

import pytest

from fieldsync.defs.values import FieldProblem, normalize_value, validate_record
from fieldsync.errors import ValueProblem
from fieldsync.sync.apply import mutation_digest


def _reference_digest(m):
    core = {k: m.get(k) for k in ("entity", "op", "id", "base_version", "fields")}
    return hashlib.sha256(json.dumps(core, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _value(rng: random.Random, depth: int = 0):
    pick = rng.random()
    if depth < 3 and pick < 0.15:
        return {rng.choice(["b", "a", "é", "\u0001", "Z"]) + str(i): _value(rng, depth + 1) for i in range(3)}
    if depth < 3 and pick < 0.3:
        return [_value(rng, depth + 1) for _ in range(3)]
    return rng.choice([None, True, False, 0, -5, 2 ** 70, 2 ** 63, -2 ** 63, 1e-7, 3.5, 1e16, -0.0, 0.1, 5e-324, 18.512345,
                       123456789012345.6, "é\u0001\"x\\", "\ud800", "plain", "\x7f", "\u2028", "\t\n/\x1f", 1e300])


def test_digest_is_the_json_dumps_digest():
    rng = random.Random(11)
    for i in range(3000):
        m = {"seq": i, "entity": rng.choice(["visit", None, 5]), "op": "insert", "id": f"id-{i}",
             "base_version": rng.choice([None, 3]), "fields": {"a": _value(rng), "b": _value(rng)}}
        if i % 5 == 0:
            del m["fields"]
        assert mutation_digest(m) == _reference_digest(m)


@pytest.mark.parametrize("code", range(128))
def test_digest_of_each_ascii_character(code):
    m = {"entity": "visit", "op": "insert", "id": "x", "base_version": None,
         "fields": {"notes": f"a{chr(code)}b", chr(code): 1.5}}
    assert mutation_digest(m) == _reference_digest(m)


def _general(entity, data, partial=False, writable=None):
    """validate_record as it was: normalize_value per field, in field order."""
    clean, problems = {}, []
    known = {f.name: f for f in entity.fields}
    for name in data:
        if name not in known:
            problems.append(FieldProblem(name, f"is not a field of {entity.name}"))
        elif writable is not None and name not in writable:
            problems.append(FieldProblem(name, "may not be set by your role"))
    for f in entity.fields:
        if f.name in data:
            if data[f.name] is None and f.required:
                problems.append(FieldProblem(f.name, "is required and may not be null"))
                continue
            try:
                clean[f.name] = normalize_value(f, data[f.name])
            except ValueProblem as exc:
                problems.append(FieldProblem(f.name, str(exc)))
        elif not partial:
            if f.has_default:
                clean[f.name] = f.default
            elif f.required:
                problems.append(FieldProblem(f.name, "is required"))
    return clean, problems


VISIT_VALUES = {
    "retailer_id": ["0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d", "0190A4C2-7D1E-7A3B-9C4D-5E6F7A8B9C0D", "not-a-uuid", 7,
                    "{0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d}", None],
    "visited_at": ["2026-03-01T09:30:00.000000Z", "2026-02-30T09:30:00.000000Z", "0999-03-01T09:30:00.000000Z",
                   "2026-03-01T09:30:00Z", "2026-03-01T15:00:00.000000+05:30", "2026-03-01T09:30:00.000000z",
                   "２026-03-01T09:30:00.000000Z", "2026-03-01T09:30:00.000000", 12, None],
    "purpose": ["order", "ORDER", "", "a\x00b", 3, None],
    "notes": ["fine", "é accented", "x" * 5000, "nul\x00inside", "\ud800", 5, None],
    "duration_minutes": [5, -1, 2 ** 64, 3.0, 3.5, True, "5", None],
}


@pytest.mark.parametrize("name", sorted(VISIT_VALUES))
def test_validate_record_fast_paths_match_the_general_path(example_model, name):
    visit = example_model.entity("visit")
    for value in VISIT_VALUES[name]:
        for partial in (False, True):
            data = {name: value}
            assert validate_record(visit, data, partial=partial) == _general(visit, data, partial=partial), value
