"""`fieldsync validate`, `generate` and `migrate`: the definitions, what is generated from them,
and the server tables that follow them (docs/cli.md)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from fieldsync.cli.common import (Invocation, command, data_dir_option, defs_option, load_model_or_report,
                                  operator, pass_invocation, unraised_in_database)


@command("validate", "check the entity definitions and report every error")
@click.argument("directory", metavar="[DIR]", required=False)
@pass_invocation
def validate(invocation: Invocation, directory: str | None) -> int:
    """DIR: the definitions directory (default: DEFS_DIR, entity_defs)."""
    defs_dir = directory or invocation.config()["DEFS_DIR"]
    model = load_model_or_report(defs_dir)
    if model is None:
        return 1
    print(f"{defs_dir}: valid — {len(model.entities)} entities, {len(model.roles)} roles, "
          f"schema version {model.schema_version}, fingerprint {model.fingerprint()}")
    return 0


@command("generate", "render generated/ from the definitions")
@click.option("--check", is_flag=True, help="change nothing; exit 1 naming stale files")
@defs_option
@click.option("--out", default="generated", help="output directory (default: generated)")
@pass_invocation
def generate(invocation: Invocation, check: bool, defs: str | None, out: str) -> int:
    from fieldsync.codegen import generate as render
    from fieldsync.defs import DefinitionErrors
    from fieldsync.defs.schema_version import unraised_version
    from fieldsync.store.ddl import server_ddl
    config = invocation.config(defs=defs)
    model = load_model_or_report(config["DEFS_DIR"])
    if model is None:
        return 1
    previous = Path(out) / "device" / "schema.json"   # what devices were last built with
    if previous.is_file():
        try:
            recorded = json.loads(previous.read_text("utf-8"))
        except ValueError:
            recorded = {}
        problem = unraised_version(model, recorded.get("schema_version"), recorded.get("fingerprint"),
                                   f"{previous}") if isinstance(recorded, dict) else None
        if problem is not None:
            print(f"fieldsync generate: {problem}", file=sys.stderr)
            return 1
    start = time.perf_counter()
    try:
        paths = render(config["DEFS_DIR"], out, check=check, server_ddl=server_ddl)
    except DefinitionErrors as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    if check:
        if paths:
            print(f"{out} is stale; run `fieldsync generate` (or `make generate`):", file=sys.stderr)
            for path in paths:
                print(f"  {path}", file=sys.stderr)
            return 1
        print(f"{out} is up to date ({elapsed * 1000:.0f} ms)")
        return 0
    print(f"generated {len(paths)} changed file(s) in {out} ({elapsed * 1000:.0f} ms)")
    for path in paths:
        print(f"  {path}")
    return 0


@command("migrate", "bring the server tables up to date with the definitions")
@click.option("--dry-run", is_flag=True, help="print the plan, change nothing")
@click.option("--allow-destructive", is_flag=True, help="also drop or narrow columns/tables")
@defs_option
@click.option("--database-url", help="database URL (default: SQLite in the data directory)")
@data_dir_option
@pass_invocation
def migrate(invocation: Invocation, dry_run: bool, allow_destructive: bool, defs: str | None,
            database_url: str | None, data_dir: str | None) -> int:
    from fieldsync.defs import read_sources
    from fieldsync.store.engine import make_engine
    from fieldsync.store.migrate import apply_migration, format_plan, plan_migration
    config = invocation.config(defs=defs, database_url=database_url, data_dir=data_dir)
    model = load_model_or_report(config["DEFS_DIR"])
    if model is None:
        return 1
    unraised = unraised_in_database(config, model)
    if not config.get("DATABASE_URL"):
        config.data_dir.mkdir(parents=True, exist_ok=True)   # the embedded SQLite file lives there
    engine = make_engine(config.database_url)
    try:
        plan = plan_migration(engine, model)
        print(format_plan(plan))
        if unraised is not None:   # the plan is shown, nothing is applied (--dry-run exits 1 too)
            print(f"fieldsync migrate: {unraised}", file=sys.stderr)
            return 1
        if dry_run:
            return 0
        # recorded even without table changes when the texts changed (a sync rule, a permission):
        # running servers swap to every recorded version (docs/decisions.md, live definitions)
        apply_migration(engine, plan, allow_destructive=allow_destructive,
                        definitions=read_sources(config["DEFS_DIR"]), applied_by=operator())
        if not plan.steps:
            return 0
        print(f"applied {len(plan.steps)} step(s)")
        return 0
    finally:
        engine.dispose()
