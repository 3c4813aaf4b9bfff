"""`fieldsync audit ...`: verify, export, checkpoint, purge, public-key and acknowledge-reset
(docs/cli.md, docs/audit.md).

`fieldsync.cli` registers these through `add_audit_commands`; each parses its flags and calls the
audit library (`fieldsync.audit.trail`, `audit_verify`, `audit_export`).
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import socket
import sys
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

__all__ = ["add_audit_commands"]

_COMMANDS = {
    "verify": "check the audit trail's hash chain, seals and signed checkpoints; exit 1 naming each problem",
    "export": "write audit entries of a period as FHIR R5 AuditEvent NDJSON or CSV (the export is audited)",
    "checkpoint": "sign a checkpoint at the newest audit entry and print it (keep it outside the server)",
    "purge": "delete audit entries older than the retention (AUDIT_RETENTION_DAYS, default 6 years)",
    "public-key": "print the public key that verifies the audit trail's signed checkpoints",
    "acknowledge-reset": "accept, on the record, that the audit trail no longer matches its anchor (a restored "
                         "backup, a deliberate new trail), so the server starts again",
}


def _who() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def _open(config_fn, args, *, create: bool):
    """(audit log, engine); with `create`, the trail prepared as the server would (checked
    against its anchor, refused when wiped). Without, (None, None) after saying why when there
    is no trail to read: an anchor then says it was wiped."""
    from fieldsync.audit.chain import HEAD
    from fieldsync.audit.trail import AuditLog
    from fieldsync.store.engine import make_engine
    config = config_fn(args)
    database = config.get("DATABASE_URL")
    if not database:
        if create:
            config.data_dir.mkdir(parents=True, exist_ok=True)
        elif not (config.data_dir / "fieldsync.db").exists():
            print(f"fieldsync audit: no server database in {config.data_dir}: pass --database-url or the server's "
                  "--data-dir", file=sys.stderr)
            return None, None
    engine = make_engine(config.database_url)
    audit = AuditLog.from_config(config, engine)
    if create:
        try:
            audit.prepare()
        except BaseException:
            engine.dispose()
            raise
    elif not sa.inspect(engine).has_table(HEAD.name):
        engine.dispose()
        shown = engine.url.render_as_string(hide_password=True)
        found, unreadable = audit.read_anchors() if not getattr(args, "no_anchor", False) else ([], [])
        for problem in unreadable:
            print(f"problem: {problem}")
        for store, anchor in found:
            print(f"problem: the audit trail was wiped: {shown} has no audit tables, but the anchor {store.location} "
                  f"records {anchor.describe()}")
        print(f"fieldsync audit: {shown} has no audit trail (no {HEAD.name} table)", file=sys.stderr)
        return None, None
    return audit, engine


def cmd_verify(config_fn, args) -> int:
    from fieldsync.audit.chain import load_public_key
    from fieldsync.audit.verify import parse_checkpoints
    audit, engine = _open(config_fn, args, create=False)
    if audit is None:
        return 1
    try:
        external = parse_checkpoints(Path(args.checkpoints).read_text().splitlines()) if args.checkpoints else []
        keys = [load_public_key(Path(p).read_bytes()) for p in args.public_key or ()]
        report = audit.verify(checkpoints=external, public_keys=keys, use_anchors=not args.no_anchor)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({"ok": report.ok, "problems": report.problems, "entries": report.entries,
                          "first_seq": report.first_seq, "last_seq": report.last_seq,
                          "checkpoints_verified": report.checkpoints_verified,
                          "last_checkpoint": report.last_checkpoint, "purged_through": report.anchor_seq}, indent=2))
    else:
        for problem in report.problems:
            print(f"problem: {problem}")
        print(report.summary())
    return 0 if report.ok else 1


def _when(text: str, flag: str) -> dt.datetime:
    """A date (midnight UTC) or an ISO 8601 time (UTC when it names no zone)."""
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"fieldsync audit export: {flag} {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time")
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value


def cmd_export(config_fn, args) -> int:
    from fieldsync.api import create_app
    from fieldsync.audit.events import subject_ref_function
    from fieldsync.audit.export import export_audit
    start, end = _when(args.start, "--from"), _when(args.end, "--to")
    if end <= start:
        print("fieldsync audit export: --to must be after --from (the period is [from, to))", file=sys.stderr)
        return 2
    app = create_app(config_fn(args))   # the record store's codec makes the patient's subject reference
    state = app.extensions["fieldsync"]
    try:
        subject = None
        if args.patient is not None:
            ref = subject_ref_function(state.store.codec)
            if ref is None:
                print("fieldsync audit export: --patient needs field encryption (subject references); "
                      "this server's codec has none", file=sys.stderr)
                return 2
            subject = ref(args.patient)
        destination = args.output or "stdout"
        out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
        try:
            done = export_audit(state.audit, out, fmt=args.format, start=start, end=end, actor=args.user,
                                entity=args.entity, subject=subject, include_reasons=args.include_reasons,
                                exported_by=_who(), destination=destination, server=socket.gethostname())
        finally:
            if args.output:
                out.close()
    finally:
        state.sync.close()
        state.engine.dispose()
    print(f"exported {done['entries']} audit entr{'y' if done['entries'] == 1 else 'ies'} as {args.format} to "
          f"{destination} (recorded as audit entry {done['export_entry']})", file=sys.stderr)
    return 0


def cmd_checkpoint(config_fn, args) -> int:
    audit, engine = _open(config_fn, args, create=True)
    try:
        cp = audit.checkpoint()
    finally:
        engine.dispose()
    if cp is None:
        print("the audit trail is empty: nothing to sign", file=sys.stderr)
        return 0
    print(cp.as_json())
    print(f"signed checkpoint at entry {cp.seq}; keep the line above outside the server "
          "(`fieldsync audit verify --checkpoints FILE`)", file=sys.stderr)
    return 0


def cmd_purge(config_fn, args) -> int:
    audit, engine = _open(config_fn, args, create=True)
    try:
        done = audit.purge(args.retention_days, actor=_who())
    finally:
        engine.dispose()
    print(f"purged {done['purged']} audit entr{'y' if done['purged'] == 1 else 'ies'} recorded before "
          f"{done['cutoff']}; the trail now starts after entry {done['through']}")
    return 0


def cmd_acknowledge_reset(config_fn, args) -> int:
    from fieldsync.audit.trail import AuditLog
    from fieldsync.store.engine import make_engine
    config = config_fn(args)
    if not config.get("DATABASE_URL"):
        config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(config.database_url)
    try:
        cp = AuditLog.from_config(config, engine).acknowledge_reset(args.log, reason=args.reason, actor=_who())
    finally:
        engine.dispose()
    print(f"recorded the reset of audit log {args.log} as entry {cp.seq} of the trail; it is the new anchor. "
          "The server starts again.", file=sys.stderr)
    print(cp.as_json())
    return 0


def cmd_public_key(config_fn, args) -> int:
    from fieldsync.audit.trail import AuditLog
    from fieldsync.store.engine import make_engine
    config = config_fn(args)
    engine = make_engine(config.database_url)
    try:
        pem = AuditLog.from_config(config, engine).public_key_pem()
    finally:
        engine.dispose()
    if args.output:
        Path(args.output).write_text(pem)
        print(f"wrote the audit public key to {args.output}", file=sys.stderr)
    else:
        print(pem, end="")
    return 0


def add_audit_commands(sub, command: Callable, config_fn: Callable, commands: dict[str, str]) -> None:
    """Add `fieldsync audit <action>` to the parser `sub` (cli.py's subparsers)."""
    audit = command(sub, "audit", "verify, export, checkpoint and purge the audit trail of PHI access",
                    lambda args: audit.print_help() or 2)
    actions = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    handlers = {"verify": cmd_verify, "export": cmd_export, "checkpoint": cmd_checkpoint, "purge": cmd_purge,
                "public-key": cmd_public_key, "acknowledge-reset": cmd_acknowledge_reset}
    for name, help_text in _COMMANDS.items():
        commands["audit " + name] = help_text
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=lambda args, h=handlers[name]: h(config_fn, args))
        if name == "verify":
            p.add_argument("--checkpoints", metavar="FILE",
                           help="signed checkpoints kept outside the server, one JSON line each")
            p.add_argument("--public-key", action="append", metavar="FILE",
                           help="a PEM public key to check signatures with (repeatable; the local key is used too)")
            p.add_argument("--json", action="store_true", help="print JSON instead of text")
            p.add_argument("--no-anchor", action="store_true",
                           help="do not compare with the anchor kept outside the database (a copy of the database "
                                "checked elsewhere)")
        elif name == "export":
            p.add_argument("--from", dest="start", required=True, help="start (inclusive): YYYY-MM-DD or ISO time")
            p.add_argument("--to", dest="end", required=True, help="end (exclusive): YYYY-MM-DD or ISO time")
            p.add_argument("--patient", help="only entries about this patient (matched by its subject reference)")
            p.add_argument("--user", help="only entries of this user id")
            p.add_argument("--entity", help="only entries of this entity")
            p.add_argument("--format", choices=("fhir", "csv"), required=True,
                           help="fhir: FHIR R5 AuditEvent NDJSON; csv: one row per entry")
            p.add_argument("--output", metavar="FILE", help="write here instead of standard output")
            p.add_argument("--include-reasons", action="store_true",
                           help="decrypt break-glass reasons into the export (they may name a patient)")
            p.add_argument("--defs", help="definitions directory")
        elif name == "purge":
            p.add_argument("--retention-days", type=int, help="override AUDIT_RETENTION_DAYS")
        elif name == "acknowledge-reset":
            p.add_argument("--log", required=True, metavar="LOG_ID",
                           help="the id of the anchored audit log being given up (the server's refusal names it)")
            p.add_argument("--reason", required=True,
                           help="why (recorded, encrypted, in the trail's reset entry)")
        elif name == "public-key":
            p.add_argument("--output", metavar="FILE", help="write the PEM here instead of standard output")
        p.add_argument("--database-url", help="database URL")
        p.add_argument("--data-dir", help="data directory (default var/)")
