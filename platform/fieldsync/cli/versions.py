"""`fieldsync apply`, `fieldsync versions list|show` and `fieldsync rollback`: a definition change
made live in one command, the applied versions, and going back to one (docs/cli.md; the work is
in fieldsync.live)."""

from __future__ import annotations

import json
import sys

import click

from fieldsync.cli.common import (Invocation, action_group, command, data_dir_option, database_url_option,
                                  json_option, operator, pass_invocation, table)


def _engine(config):
    from fieldsync.store.engine import make_engine
    if not config.get("DATABASE_URL"):
        config.data_dir.mkdir(parents=True, exist_ok=True)   # the embedded SQLite file lives there
    return make_engine(config.database_url)


def _plan_and_apply(config, sources: dict[str, str], label: str, *, dry_run: bool, allow_destructive: bool,
                    out: str | None, name: str) -> int:
    """Print the plan of `sources`, then (unless dry_run) apply it; the exit status."""
    from fieldsync.live import apply_change, plan_change
    from fieldsync.store.migrate import format_plan
    engine = _engine(config)
    try:
        change = plan_change(engine, sources, label)
        print(format_plan(change.plan))
        if change.refused is not None:
            print(f"fieldsync {name}: {change.refused}", file=sys.stderr)
            return 1
        if dry_run:
            return 0
        applied = apply_change(engine, change, config["DEFS_DIR"], out, allow_destructive=allow_destructive,
                               applied_by=operator())
        print(f"applied {len(applied.plan.steps)} step(s); model version {applied.version} "
              f"(schema_version {change.model.schema_version}) is live: running servers swap to it within a second")
        return 0
    finally:
        engine.dispose()


def _change_options(function):
    """The flags of a definition change (`apply` and `rollback`): plan only, allow data loss,
    where the definitions and generated/ are written, which database."""
    for option in reversed((
            click.option("--dry-run", is_flag=True, help="print the plan, change nothing"),
            click.option("--allow-destructive", is_flag=True, help="also run steps that lose data"),
            click.option("--defs", help="the definitions directory written to (default: DEFS_DIR)"),
            click.option("--out", default="generated", help="generated output directory (default: generated)"),
            database_url_option, data_dir_option, pass_invocation)):
        function = option(function)
    return function


@command("apply", "validate, plan, write, generate and migrate a definition change; servers swap live")
@click.argument("directory", metavar="[DIR]", required=False)
@_change_options
def apply(invocation: Invocation, directory: str | None, dry_run: bool, allow_destructive: bool,
          defs: str | None, out: str, database_url: str | None, data_dir: str | None) -> int:
    """DIR: the changed definitions (default: DEFS_DIR itself)."""
    from fieldsync.defs import read_sources
    config = invocation.config(defs=defs, database_url=database_url, data_dir=data_dir)
    source = directory or config["DEFS_DIR"]
    return _plan_and_apply(config, read_sources(source), str(source), dry_run=dry_run,
                           allow_destructive=allow_destructive, out=out, name="apply")


versions = action_group("versions", "the applied model versions")


@versions.command("list", help="every applied model version", short_help="every applied model version")
@json_option
@database_url_option
@data_dir_option
@pass_invocation
def versions_list(invocation: Invocation, as_json: bool, database_url: str | None, data_dir: str | None) -> int:
    from fieldsync.store.versions import list_versions
    config = invocation.config(database_url=database_url, data_dir=data_dir)
    engine = _engine(config)
    try:
        with engine.connect() as conn:
            rows = list_versions(conn)
    finally:
        engine.dispose()
    items = [{"version": r["id"], "schema_version": r["schema_version"], "fingerprint": r["fingerprint"],
              "applied_at": r["applied_at"].isoformat() if r["applied_at"] else None,
              "applied_by": r["applied_by"] or "(server start)", "steps": len(r["steps"] or [])} for r in rows]
    if as_json:
        print(json.dumps(items, indent=2))
    else:
        table(items, ("version", "schema_version", "fingerprint", "applied_at", "applied_by", "steps"))
    return 0


@versions.command("show", help="one applied version: its plan and definitions",
                  short_help="one applied version: its plan and definitions")
@click.argument("number", type=int)
@click.option("--full", is_flag=True, help="print the definitions whole, not their diff")
@database_url_option
@data_dir_option
@pass_invocation
def versions_show(invocation: Invocation, number: int, full: bool, database_url: str | None,
                  data_dir: str | None) -> int:
    from fieldsync.store.versions import read_version
    config = invocation.config(database_url=database_url, data_dir=data_dir)
    engine = _engine(config)
    try:
        with engine.connect() as conn:
            row = read_version(conn, number)
            previous = next((p for p in (read_version(conn, n) for n in range(number - 1, 0, -1))
                             if p is not None and p["definitions"]), None)
    finally:
        engine.dispose()
    if row is None:
        print(f"fieldsync versions: no model version {number}", file=sys.stderr)
        return 1
    print(f"model version {row['id']}: schema_version {row['schema_version']}, fingerprint {row['fingerprint']}")
    print(f"applied {row['applied_at'].isoformat()} by {row['applied_by'] or '(server start)'}")
    print("steps:" if row["steps"] else "steps: none")
    for step in row["steps"] or []:
        print(f"  {step}")
    for step in row["pending"] or []:
        print(f"  left undone: {step}")
    if not row["definitions"]:
        print("definitions: not recorded (applied by a server's start)")
    elif previous is None or full:
        for rel, text in sorted(row["definitions"].items()):
            print(f"--- {rel}")
            print(text.rstrip("\n"))
    else:
        print(f"definitions: changes since model version {previous['id']} (--full prints them whole)")
        for line in _diff(previous["definitions"], row["definitions"]):
            print(line)
    return 0


def _diff(old: dict[str, str], new: dict[str, str]) -> list[str]:
    from fieldsync.live import definitions_diff
    return definitions_diff(old, new)


@command("rollback", "apply the definitions of an earlier model version again (itself a plan)")
@click.argument("number", type=int)
@_change_options
def rollback(invocation: Invocation, number: int, dry_run: bool, allow_destructive: bool, defs: str | None,
             out: str, database_url: str | None, data_dir: str | None) -> int:
    from fieldsync.live import rollback_sources
    from fieldsync.store.migrate import read_schema_record
    from fieldsync.store.versions import read_version
    config = invocation.config(defs=defs, database_url=database_url, data_dir=data_dir)
    engine = _engine(config)
    try:
        with engine.connect() as conn:
            row = read_version(conn, number)
            applied = read_schema_record(conn)
    finally:
        engine.dispose()
    if row is None or not row["definitions"]:
        why = "does not exist" if row is None else "was recorded without its definitions"
        print(f"fieldsync rollback: model version {number} {why}", file=sys.stderr)
        return 1
    sources = rollback_sources(row["definitions"], applied)
    return _plan_and_apply(config, sources, f"model version {number}", dry_run=dry_run,
                           allow_destructive=allow_destructive, out=out, name="rollback")

