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

__all__ = ["Change", "apply_change", "plan_change", "rollback_sources", "write_definitions"]


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


def apply_change(engine: sa.Engine, change: Change, defs_dir: str | Path, out_dir: str | Path | None, *,
                 allow_destructive: bool = False, applied_by: str | None = None) -> MigrationPlan:
    """Write the texts into `defs_dir`, regenerate `out_dir` (None: skip), migrate and record.

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
    return apply_migration(engine, change.plan, allow_destructive=allow_destructive,
                           definitions=change.sources, applied_by=applied_by)


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
