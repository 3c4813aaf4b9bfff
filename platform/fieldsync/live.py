"""Applying a definition change to a running platform: `fieldsync apply` and `fieldsync rollback`.

One change is: validate the definitions, plan the migration (additive, rename, destructive with
the values each destructive step loses), write the YAML files into DEFS_DIR, regenerate
`generated/`, migrate and record the applied version in fs_schema (with its texts and who
applied it). Recording is the notification: every server and worker process reads the newest
version number before each request or push batch and swaps to it (api/app.py), so the change
goes live without a restart (invariant 9: destructive steps need the explicit flag).

A rollback to version N is the same change made from N's recorded texts: it is planned like any
other (and needs the flag where it loses data). Since devices migrate only to a higher
schema_version, a rollback whose storage shape differs from the applied one is given the next
schema_version.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import sqlalchemy as sa

from fieldsync.defs import build_model, read_sources
from fieldsync.defs.model import Model
from fieldsync.defs.schema_version import unraised_version
from fieldsync.errors import MigrationRefused
from fieldsync.store.migrate import MigrationPlan, apply_migration, plan_migration, read_schema_record

__all__ = ["Applied", "Change", "apply_change", "artifact_diffs", "definitions_diff", "generated_dir", "plan_change",
           "rollback_sources", "with_raised_version", "write_definitions"]


@dataclass(frozen=True)
class Change:
    """A validated set of definitions and what applying them to the database would do.
    `refused`: why they may not follow the applied model (schema_version), or None."""

    sources: dict[str, str]
    model: Model
    plan: MigrationPlan
    refused: str | None = None


def plan_change(engine: sa.Engine, sources: Mapping[str, str], label: str) -> Change:
    """Validate `sources` (raises DefinitionErrors) and plan their migration; changes nothing."""
    model = build_model(sources, label=label)
    with engine.connect() as conn:
        record = read_schema_record(conn) or {}
    refused = unraised_version(model, record.get("schema_version"), record.get("fingerprint"),
                               "the model last applied to the database")
    return Change(dict(sources), model, plan_migration(engine, model), refused)


@dataclass(frozen=True)
class Applied:
    """What an applied change did: the steps run (`plan`) and the model version now live (the
    one it recorded; the previous one when the definitions were already applied)."""

    plan: MigrationPlan
    version: int | None


def apply_change(engine: sa.Engine, change: Change, defs_dir: str | Path, out_dir: str | Path | None, *,
                 allow_destructive: bool = False, applied_by: str | None = None) -> Applied:
    """Write the texts into `defs_dir`, regenerate `out_dir` (None: skip), migrate and record;
    what `fieldsync apply`, `rollback` and the admin UI's Apply all run.

    Refuses (MigrationRefused, nothing written) a destructive plan without `allow_destructive`
    and definitions that may not follow the applied model."""
    if change.refused is not None:
        raise MigrationRefused((), change.refused)
    if change.plan.destructive and not allow_destructive:
        raise MigrationRefused(change.plan.destructive, (
            f"{len(change.plan.destructive)} destructive step(s) can lose data; review them with "
            "--dry-run and rerun with --allow-destructive"))
    write_definitions(defs_dir, change.sources)
    if out_dir is not None:
        from fieldsync.codegen import generate
        from fieldsync.store.ddl import server_ddl
        generate(defs_dir, out_dir, server_ddl=server_ddl)
    plan = apply_migration(engine, change.plan, allow_destructive=allow_destructive,
                           definitions=change.sources, applied_by=applied_by)
    from fieldsync.store.versions import latest_version_id
    with engine.connect() as conn:
        version = latest_version_id(conn)
    return Applied(plan, version)


def generated_dir(defs_dir: str | Path) -> Path:
    """Where a change applied from a server (the admin UI) regenerates `generated/`: the source
    checkout's `generated/` when `defs_dir` is its `entity_defs/` (what `fieldsync apply` run in
    the checkout writes), else a `generated/` beside `defs_dir`, so definitions kept elsewhere
    never overwrite the checkout's committed output."""
    from fieldsync.codegen import DEFAULT_TEMPLATES_DIR
    root = DEFAULT_TEMPLATES_DIR.parent
    defs = Path(defs_dir).resolve()
    if defs == (root / "entity_defs").resolve():
        return root / "generated"
    return defs.parent / "generated"


def definitions_diff(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """A unified diff of two sets of definition texts, file by file (lines without newlines)."""
    lines: list[str] = []
    for rel in sorted(set(old) | set(new)):
        a, b = old.get(rel, ""), new.get(rel, "")
        if a != b:
            lines.extend(line.rstrip("\n") for line in difflib.unified_diff(
                a.splitlines(True), b.splitlines(True), f"a/{rel}", f"b/{rel}"))
    return lines


def artifact_diffs(before: Model, after: Model, *, page_size_max: int | None = None) -> dict[str, list[str]]:
    """What a change does to what clients see: unified diffs of the OpenAPI document (JSON with
    sorted keys) and of the device's SQLite schema (generated/device/schema.sql), keyed by those
    two names; an empty list when one is unchanged."""
    from fieldsync.codegen import render_all
    from fieldsync.codegen.openapi import openapi_document
    kwargs = {"page_size_max": page_size_max} if page_size_max is not None else {}

    def lines(text: str) -> list[str]:
        return text.splitlines(True)

    def unified(name: str, a: str, b: str) -> list[str]:
        return [line.rstrip("\n") for line in difflib.unified_diff(lines(a), lines(b), f"a/{name}", f"b/{name}")]

    documents = [json.dumps(openapi_document(m, **kwargs), indent=2, sort_keys=True, default=str) + "\n"
                 for m in (before, after)]
    schemas = [render_all(m)["device/schema.sql"] for m in (before, after)]
    return {"openapi.json": unified("openapi.json", *documents),
            "device/schema.sql": unified("device/schema.sql", *schemas)}


def write_definitions(defs_dir: str | Path, sources: Mapping[str, str]) -> list[str]:
    """Make `defs_dir` hold exactly `sources` (YAML files by relative path); returns the paths
    written or removed. Files other than YAML are left alone."""
    root = Path(defs_dir)
    root.mkdir(parents=True, exist_ok=True)
    touched = []
    current = read_sources(root)
    for rel in sorted(set(current) - set(sources)):
        (root / rel).unlink()
        touched.append(rel)
    for rel, text in sorted(sources.items()):
        if current.get(rel) != text:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, "utf-8")
            touched.append(rel)
    return touched


_VERSION_LINE = re.compile(r"^(schema_version:\s*)(\d+)", re.MULTILINE)


def rollback_sources(recorded: Mapping[str, str], applied: Mapping | None) -> dict[str, str]:
    """Version N's texts, with app.yaml's schema_version raised above the applied one when the
    storage shape differs (devices never migrate to a lower version)."""
    return with_raised_version(recorded, applied)


def with_raised_version(recorded: Mapping[str, str], applied: Mapping | None) -> dict[str, str]:
    """`recorded` (valid definitions), with app.yaml's schema_version set above the applied
    record's (`read_schema_record`) when their storage shape differs from it and the version was
    not raised: a rollback, and an admin UI edit (the analyst changes fields, the platform keeps
    devices migrating). Raises DefinitionErrors for definitions that do not build."""
    sources = dict(recorded)
    if not applied:
        return sources
    model = build_model(sources, label="rollback")
    if model.fingerprint() == applied["fingerprint"] or model.schema_version > applied["schema_version"]:
        return sources
    target = applied["schema_version"] + 1
    for rel, text in sources.items():
        if Path(rel).name in ("app.yaml", "app.yml") and _VERSION_LINE.search(text):
            sources[rel] = _VERSION_LINE.sub(lambda m: f"{m.group(1)}{target}", text, count=1)
    return sources
