"""Fixtures for the code generator's tests: the rendered example, and sample records per entity."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from fieldsync.defs.model import Entity, Field
from fieldsync.defs.values import normalize_value


@pytest.fixture(scope="session")
def rendered(example_model) -> dict[str, str]:
    """render_all of the example definitions, rendered once per session (it is pure)."""
    from fieldsync.codegen import render_all
    from fieldsync.store.ddl import server_ddl
    return render_all(example_model, server_ddl=server_ddl)


def sample_value(f: Field, n: int) -> Any:
    """A valid value for `f` in its canonical wire form (n varies it between records)."""
    raw: Any
    if f.type in ("string", "text"):
        raw = (f"{f.name[:3]}-{n}" + "x" * (f.min_length or 0))[: f.max_length or 255]
        if f.min_length and len(raw) < f.min_length:
            raw = raw.ljust(f.min_length, "x")
        if f.pattern:
            candidates = [f"CODE-{n}", f"+91 98450 1234{n % 10}", f"ab{n}"]
            raw = next(c for c in candidates if re.fullmatch(f.pattern, c))
    elif f.type == "integer":
        raw = max(int(f.minimum) if f.minimum is not None else 0, 1) + n
        if f.maximum is not None:
            raw = min(raw, int(f.maximum))
    elif f.type == "decimal":
        raw = f"{n + 1}.25"
    elif f.type == "boolean":
        raw = n % 2 == 0
    elif f.type == "date":
        raw = f"2026-03-{n % 27 + 1:02d}"
    elif f.type == "datetime":
        raw = f"2026-03-01T09:{n % 60:02d}:30.123456+05:30"
    elif f.type in ("uuid", "ref"):
        raw = str(uuid.UUID(int=n + 1))
    elif f.type == "enum":
        raw = f.values[n % len(f.values)]
    elif f.type == "json":
        raw = {"km": n, "tags": ["a", "b"], "ok": True}
    elif f.type == "media":
        raw = f"media/{n}.jpg"
    elif f.type == "geopoint":
        raw = {"lat": 12.97 + n / 100, "lon": 77.59}
    else:  # pragma: no cover - a new field type needs a sample here
        raise AssertionError(f"no sample for {f.type}")
    return normalize_value(f, raw)


def sample_row(entity: Entity, n: int = 0) -> dict[str, Any]:
    """A full wire-form row of `entity`, system columns included."""
    row: dict[str, Any] = {"id": str(uuid.UUID(int=10_000 + n))}
    row.update({f.name: sample_value(f, n) for f in entity.fields})
    row.update({"version": n + 1, "created_at": "2026-03-01T03:30:00.000000Z",
                "updated_at": "2026-03-02T03:30:00.000001Z", "deleted": False})
    return row


@pytest.fixture(scope="session")
def make_row():
    """`make_row(entity, n)`: a full wire-form sample row (see sample_row)."""
    return sample_row
