"""The `fieldsync` command: a click group (Flask's own CLI library), one module per group of
commands — defs (validate, generate, migrate), versions (apply, versions, rollback), serve (serve,
run, worker, demo), data (seed, compact), devices, tokens, users, workers (workers, dlq), tls, keys
and audit. Each command parses its
flags and calls one library function; the work lives in the package, so everything here is
also reachable from Python. Serving itself (HTTP, HTTPS) is the server's: fieldsync.api.https_server.

`main(argv) -> int` is the console script's entry (setup.cfg) and gives the exit statuses
docs/cli.md documents: 0 success, 1 failure, 2 bad usage, 141 when the reader of standard output
went away, 130 on Ctrl-C.
"""

from __future__ import annotations

import sys
from typing import Sequence

import click

from fieldsync.cli import audit, data, defs, devices, keys, serve, tls, tokens, transfer, users, versions, workers
from fieldsync.cli.common import Invocation, report_definition_errors
from fieldsync.errors import Error

__all__ = ["fieldsync", "main"]


class _Root(click.Group):
    """The root group: click parses the command line; `main` turns what a command returns or
    raises into the documented exit status, whether called by the console script or CliRunner."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        status = _run(self, list(sys.argv[1:] if args is None else args))
        if standalone_mode:
            sys.exit(status)
        return status


@click.group("fieldsync", cls=_Root, help="Offline-first sync platform.", invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", help="configuration file (YAML); FIELDSYNC_* variables override it")
@click.pass_context
def fieldsync(ctx: click.Context, config: str | None) -> None:
    if ctx.invoked_subcommand is None:
        raise click.UsageError("missing command", ctx=ctx)
    invocation = ctx.ensure_object(Invocation)
    invocation.command = ctx.invoked_subcommand
    invocation.config_file = config


for _command in (defs.validate, defs.generate, defs.migrate, versions.apply, versions.versions,
                 versions.rollback, serve.serve, serve.run, data.seed, devices.devices,
                 data.compact, serve.demo, serve.worker, workers.workers, workers.dlq, tls.tls, tokens.token,
                 users.users, audit.audit_group, keys.keys, transfer.transfer):
    fieldsync.add_command(_command)


def _run(group: click.Group, args: list[str]) -> int:
    from fieldsync.defs import DefinitionErrors
    invocation = Invocation()
    try:
        with group.make_context("fieldsync", args, obj=invocation) as ctx:
            status = int(group.invoke(ctx) or 0)
        sys.stdout.flush()    # inside the try: a reader gone by now is a broken pipe like any other
        return status
    except click.exceptions.Exit as exc:    # --help
        return exc.exit_code
    except click.ClickException as exc:    # bad usage: 2
        exc.show()
        return exc.exit_code
    except BrokenPipeError:
        return _reader_gone()
    except DefinitionErrors as exc:
        # any command that loads the model (serve, run, seed, worker...) reports invalid
        # definitions as validate does, not as a traceback
        built = invocation.built
        report_definition_errors(exc, built["DEFS_DIR"] if built is not None else "the definitions")
        return 1
    except Error as exc:
        print(f"fieldsync {invocation.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _reader_gone() -> int:
    """The reader of standard output went away (`fieldsync audit export | head`): stop quietly,
    with the status of a process killed by SIGPIPE, as other Unix tools do. Standard output is
    pointed at /dev/null, so the interpreter's last flush cannot fail again with a traceback."""
    import os
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13


def main(argv: Sequence[str] | None = None) -> int:
    """Run `fieldsync` with `argv` (default: the process's arguments); the exit status."""
    return fieldsync.main(argv, standalone_mode=False)
