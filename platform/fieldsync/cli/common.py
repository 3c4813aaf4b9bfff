"""What every command module of `fieldsync` shares: the invocation (the configuration the flags
and `--config` name), the common flags, and reporting definitions that do not load.

Each command parses its flags and calls one library function; the work lives in the package,
so everything the command does is also reachable from Python.
"""

from __future__ import annotations

import getpass
import socket
import sys
from typing import Callable, Sequence

import click

from fieldsync.config import Config, load_config


class Invocation:
    """One run of `fieldsync`: the top-level command's name (for error messages), the
    configuration file, and the configuration the command built (None until it has)."""

    def __init__(self) -> None:
        self.command: str | None = None
        self.config_file: str | None = None
        self.built: Config | None = None

    def config(self, *, defs: str | None = None, database_url: str | None = None,
               data_dir: str | None = None) -> Config:
        """The layered configuration (fieldsync.config) with the command's flags on top."""
        overrides = {key: value for key, value in
                     (("DEFS_DIR", defs), ("DATABASE_URL", database_url), ("DATA_DIR", data_dir)) if value}
        self.built = load_config(file=self.config_file, overrides=overrides)
        return self.built


pass_invocation = click.make_pass_decorator(Invocation)


def command(name: str, help_text: str, **settings) -> Callable:
    """A command named `name`; its one-line help is what docs/cli.md documents (a test checks)."""
    return click.command(name, help=help_text, short_help=help_text, **settings)


def action_group(name: str, help_text: str) -> click.Group:
    """A command made of actions (`fieldsync token create`); without an action it prints its
    help and exits 2."""
    @click.group(name, help=help_text, short_help=help_text, invoke_without_command=True)
    @click.pass_context
    def group(ctx: click.Context) -> int | None:
        if ctx.invoked_subcommand is None:
            click.echo(ctx.get_help())
            return 2
        return None
    return group


def defs_option(f: Callable) -> Callable:
    return click.option("--defs", help="definitions directory")(f)


def database_url_option(f: Callable) -> Callable:
    return click.option("--database-url", help="database URL")(f)


def data_dir_option(f: Callable) -> Callable:
    return click.option("--data-dir", help="data directory (default var/)")(f)


def json_option(f: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")(f)


def database_options(f: Callable) -> Callable:
    """--database-url and --data-dir: where the server's database is."""
    return database_url_option(data_dir_option(f))


def operator() -> str:
    """Who runs the command, as audit entries and the worker pool record it: user@host."""
    return f"{getpass.getuser()}@{socket.gethostname()}"


def load_model_or_report(defs_dir) -> object | None:
    from fieldsync.defs import DefinitionErrors, load_model
    try:
        return load_model(defs_dir)
    except DefinitionErrors as exc:
        report_definition_errors(exc, defs_dir)
        return None


def report_definition_errors(exc, defs_dir) -> None:
    """What `fieldsync validate` prints: one `file:line:column: key: message` per error, then the count."""
    for err in exc.errors:
        print(err, file=sys.stderr)
    print(f"{len(exc.errors)} error(s) in {defs_dir}", file=sys.stderr)


def unraised_in_database(config: Config, model) -> str | None:
    """The schema_version refusal against the model last applied to the database, if any
    (defs/schema_version.py); None for a database that does not exist yet."""
    from fieldsync.defs.schema_version import unraised_version
    from fieldsync.store.engine import make_engine
    from fieldsync.store.migrate import read_schema_record
    if not config.get("DATABASE_URL") and not (config.data_dir / "fieldsync.db").exists():
        return None
    engine = make_engine(config.database_url)
    try:
        with engine.connect() as conn:
            record = read_schema_record(conn) or {}
    finally:
        engine.dispose()
    return unraised_version(model, record.get("schema_version"), record.get("fingerprint"),
                            "the model last applied to the database")


def model_for_database(config: Config, command_name: str):
    """The definitions' model, when valid and allowed to follow what the database holds; else
    None after printing why (every command that migrates at start checks this first)."""
    model = load_model_or_report(config["DEFS_DIR"])
    if model is None:
        return None
    problem = unraised_in_database(config, model)
    if problem is not None:
        print(f"fieldsync {command_name}: {problem}", file=sys.stderr)
        return None
    return model


def table(items: list[dict], columns: Sequence[str]) -> None:
    """Print `items` as aligned columns (None as "-")."""
    cells = [[str(item[c]) if item[c] is not None else "-" for c in columns] for item in items]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def open_for_revocation(config: Config):
    """(engine, audit log) with the tables a revocation writes: `devices revoke`, `token revoke`
    and `users` work on the database directly (no running server needed) and append their audit
    entry in the same transaction."""
    from fieldsync.audit.trail import AuditLog
    from fieldsync.auth.sessions import create_session_tables
    from fieldsync.store.engine import make_engine
    from fieldsync.store.sync_tables import create_sync_tables
    if not config.get("DATABASE_URL"):
        config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(config.database_url)
    create_sync_tables(engine)
    create_session_tables(engine)
    audit = AuditLog.from_config(config, engine)
    audit.prepare()
    return engine, audit
