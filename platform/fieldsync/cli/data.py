"""`fieldsync seed` and `compact`: the server's data — master seed records in, change history
past the retention window out (docs/cli.md)."""

from __future__ import annotations

from pathlib import Path

import click

from fieldsync.cli.common import (Invocation, command, data_dir_option, database_url_option, defs_option,
                                  model_for_database, pass_invocation)


@command("seed", "load the master seed data (records already present are kept)")
@click.argument("directory", metavar="[DIR]", default="examples/seed", required=False)
@defs_option
@database_url_option
@data_dir_option
@pass_invocation
def seed(invocation: Invocation, directory: str, defs: str | None, database_url: str | None,
         data_dir: str | None) -> int:
    """DIR: the seed directory (default examples/seed)."""
    from fieldsync.seed import load_seed
    config = invocation.config(defs=defs, database_url=database_url, data_dir=data_dir)
    if model_for_database(config, "seed") is None:   # seeding migrates a database that is behind
        return 1
    counts = load_seed(config, Path(directory))
    for entity, n in counts.items():
        print(f"{entity}: {n} record(s) new")
    return 0


@command("compact", "drop change-log entries and tombstones older than the retention window")
@click.option("--retention-days", type=int, help="override RETENTION_DAYS")
@database_url_option
@data_dir_option
@pass_invocation
def compact(invocation: Invocation, retention_days: int | None, database_url: str | None,
            data_dir: str | None) -> int:
    """Retention: drop change-log entries and tombstones older than RETENTION_DAYS."""
    from fieldsync.api import create_app
    from fieldsync.sync.service import compact_history
    config = invocation.config(database_url=database_url, data_dir=data_dir)
    days = retention_days if retention_days is not None else int(config["RETENTION_DAYS"])
    app = create_app(config)
    state = app.extensions["fieldsync"]
    done = compact_history(state.engine, state.store, days)
    print(f"kept positions from {done['horizon']}: {done['changes_deleted']} change(s) and "
          f"{done['tombstones_purged']} tombstone(s) older than {days} day(s) removed")
    return 0
