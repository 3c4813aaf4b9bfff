"""`fieldsync audit ...`: verify, export, checkpoint, purge, public-key and acknowledge-reset
(docs/cli.md, docs/audit.md).

Each parses its flags and calls the audit library (`fieldsync.audit.trail`, `.verify`, `.export`).
"""

from __future__ import annotations

import datetime as dt
import json
import socket
import sys
from pathlib import Path

import click
import sqlalchemy as sa

from fieldsync.cli.common import (Invocation, action_group, command, database_options, defs_option, operator,
                                  pass_invocation)

audit_group = action_group("audit", "verify, export, checkpoint and purge the audit trail of PHI access")


def _open(config, *, create: bool, no_anchor: bool = False):
    """(audit log, engine); with `create`, the trail prepared as the server would (checked
    against its anchor, refused when wiped). Without, (None, None) after saying why when there
    is no trail to read: an anchor then says it was wiped."""
    from fieldsync.audit.chain import HEAD
    from fieldsync.audit.trail import AuditLog
    from fieldsync.store.engine import make_engine
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
        found, unreadable = audit.read_anchors() if not no_anchor else ([], [])
        for problem in unreadable:
            print(f"problem: {problem}")
        for store, anchor in found:
            print(f"problem: the audit trail was wiped: {shown} has no audit tables, but the anchor {store.location} "
                  f"records {anchor.describe()}")
        print(f"fieldsync audit: {shown} has no audit trail (no {HEAD.name} table)", file=sys.stderr)
        return None, None
    return audit, engine


@audit_group.add_command
@command("verify", "check the audit trail's hash chain, seals and signed checkpoints; exit 1 naming each problem")
@click.option("--checkpoints", metavar="FILE", help="signed checkpoints kept outside the server, one JSON line each")
@click.option("--public-key", "public_keys", multiple=True, metavar="FILE",
              help="a PEM public key to check signatures with (repeatable; the local key is used too)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of text")
@click.option("--no-anchor", is_flag=True, help="do not compare with the anchor kept outside the database (a copy "
                                                "of the database checked elsewhere)")
@click.option("--record", is_flag=True, help="record this run and its result in the trail (an admin entry "
                                             "audit_verified; the admin dashboard shows the newest)")
@database_options
@pass_invocation
def verify(invocation: Invocation, checkpoints: str | None, public_keys: tuple[str, ...], as_json: bool,
           no_anchor: bool, record: bool, database_url: str | None, data_dir: str | None) -> int:
    from fieldsync.audit.chain import load_public_key
    from fieldsync.audit.verify import parse_checkpoints
    audit, engine = _open(invocation.config(database_url=database_url, data_dir=data_dir), create=False,
                          no_anchor=no_anchor)
    if audit is None:
        return 1
    try:
        external = parse_checkpoints(Path(checkpoints).read_text().splitlines()) if checkpoints else []
        keys = [load_public_key(Path(p).read_bytes()) for p in public_keys]
        report = audit.verify(checkpoints=external, public_keys=keys, use_anchors=not no_anchor)
        if record:   # only when asked: a verifier stays read-only (a copy, a replaced trail as evidence)
            from fieldsync.audit.search import verification_event
            from fieldsync.errors import AuditUnavailable
            try:
                audit.record(verification_event(report, actor=operator(), channel="cli"))
            except AuditUnavailable as exc:
                print(f"fieldsync audit verify: the run was not recorded: {exc}", file=sys.stderr)
    finally:
        engine.dispose()
    if as_json:
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


@audit_group.add_command
@command("export", "write audit entries of a period as FHIR R5 AuditEvent NDJSON, a verifiable FHIR Bundle or CSV "
                   "(the export is audited)")
@click.option("--from", "start", required=True, help="start (inclusive): YYYY-MM-DD or ISO time")
@click.option("--to", "end", required=True, help="end (exclusive): YYYY-MM-DD or ISO time")
@click.option("--patient", help="only entries about this patient (matched by its subject reference)")
@click.option("--user", help="only entries of this user id")
@click.option("--entity", help="only entries of this entity")
@click.option("--format", "fmt", type=click.Choice(("fhir", "bundle", "csv")), required=True,
              help="fhir: FHIR R5 AuditEvent NDJSON; bundle: a FHIR Bundle that verifies on its own "
                   "(`audit verify-export`); csv: one row per entry")
@click.option("--output", metavar="FILE", help="write here instead of standard output")
@click.option("--include-reasons", is_flag=True,
              help="decrypt break-glass reasons into the export (they may name a patient)")
@defs_option
@database_options
@pass_invocation
def export(invocation: Invocation, start: str, end: str, patient: str | None, user: str | None, entity: str | None,
           fmt: str, output: str | None, include_reasons: bool, defs: str | None, database_url: str | None,
           data_dir: str | None) -> int:
    from fieldsync.api import create_app
    from fieldsync.audit.events import subject_ref_function
    from fieldsync.audit.export import export_audit
    since, until = _when(start, "--from"), _when(end, "--to")
    if until <= since:
        print("fieldsync audit export: --to must be after --from (the period is [from, to))", file=sys.stderr)
        return 2
    app = create_app(invocation.config(defs=defs, database_url=database_url, data_dir=data_dir))   # the record store's codec makes the patient's subject reference
    state = app.extensions["fieldsync"]
    try:
        subject = None
        if patient is not None:
            ref = subject_ref_function(state.store.codec)
            if ref is None:
                print("fieldsync audit export: --patient needs field encryption (subject references); "
                      "this server's codec has none", file=sys.stderr)
                return 2
            subject = ref(patient)
        destination = output or "stdout"
        out = open(output, "w", encoding="utf-8", newline="") if output else sys.stdout
        try:
            if fmt == "bundle":
                if include_reasons:
                    print("fieldsync audit export: --include-reasons is not offered for a bundle (its entries are "
                          "verified as stored, reasons encrypted)", file=sys.stderr)
                    return 2
                from fieldsync.audit.bundle import export_bundle
                bundle, done = export_bundle(state.audit, start=since, end=until, actor=user, entity=entity,
                                             subject=subject, exported_by=operator(), channel="cli",
                                             server=socket.gethostname())
                out.write(json.dumps(bundle, indent=1, sort_keys=True) + "\n")
            else:
                done = export_audit(state.audit, out, fmt=fmt, start=since, end=until, actor=user,
                                    entity=entity, subject=subject, include_reasons=include_reasons,
                                    exported_by=operator(), destination=destination, server=socket.gethostname())
        finally:
            if output:
                out.close()
    finally:
        state.sync.close()
        state.engine.dispose()
    print(f"exported {done['entries']} audit entr{'y' if done['entries'] == 1 else 'ies'} as {fmt} to "
          f"{destination} (recorded as audit entry {done['export_entry']})", file=sys.stderr)
    return 0


@audit_group.add_command
@command("verify-export", "check an audit bundle (`audit export --format bundle`, the admin UI's download) against "
                          "its hash chain and signed checkpoint; exit 1 naming each problem")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--public-key", "public_keys", multiple=True, metavar="FILE",
              help="a PEM public key (`audit public-key`) to check the signature with (repeatable); without one, "
                   "the local signing key's public half")
@database_options
@pass_invocation
def verify_export(invocation: Invocation, file: str, public_keys: tuple[str, ...], database_url: str | None,
                  data_dir: str | None) -> int:
    """FILE: the downloaded bundle (JSON)."""
    from fieldsync.audit.bundle import verify_bundle
    from fieldsync.audit.chain import load_public_key
    from fieldsync.audit.trail import AuditLog
    from fieldsync.errors import ConfigError
    try:
        keys = [load_public_key(Path(p).read_bytes()) for p in public_keys]
        bundle = json.loads(Path(file).read_text(encoding="utf-8"))
    except (OSError, ValueError, ConfigError) as exc:
        print(f"fieldsync audit verify-export: {exc}", file=sys.stderr)
        return 2
    if not keys:
        from fieldsync.store.engine import make_engine
        config = invocation.config(database_url=database_url, data_dir=data_dir)
        engine = make_engine(config.database_url)   # not opened: only the signing key file is read
        try:
            local = AuditLog.from_config(config, engine).local_public_key()
        finally:
            engine.dispose()
        if local is None:
            print("fieldsync audit verify-export: no signing key here; pass --public-key (from `fieldsync audit "
                  "public-key` on the server)", file=sys.stderr)
            return 2
        keys = [local]
    report = verify_bundle(bundle, keys)
    for problem in report.problems:
        print(f"problem: {problem}")
    print(report.summary())
    return 0 if report.ok else 1


@audit_group.add_command
@command("checkpoint", "sign a checkpoint at the newest audit entry and print it (keep it outside the server)")
@database_options
@pass_invocation
def checkpoint(invocation: Invocation, database_url: str | None, data_dir: str | None) -> int:
    audit, engine = _open(invocation.config(database_url=database_url, data_dir=data_dir), create=True)
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


@audit_group.add_command
@command("purge", "delete audit entries older than the retention (AUDIT_RETENTION_DAYS, default 6 years)")
@click.option("--retention-days", type=int, help="override AUDIT_RETENTION_DAYS")
@database_options
@pass_invocation
def purge(invocation: Invocation, retention_days: int | None, database_url: str | None, data_dir: str | None) -> int:
    audit, engine = _open(invocation.config(database_url=database_url, data_dir=data_dir), create=True)
    try:
        done = audit.purge(retention_days, actor=operator())
    finally:
        engine.dispose()
    print(f"purged {done['purged']} audit entr{'y' if done['purged'] == 1 else 'ies'} recorded before "
          f"{done['cutoff']}; the trail now starts after entry {done['through']}")
    return 0


@audit_group.add_command
@command("acknowledge-reset", "accept, on the record, that the audit trail no longer matches its anchor (a "
                              "restored backup, a deliberate new trail), so the server starts again")
@click.option("--log", required=True, metavar="LOG_ID",
              help="the id of the anchored audit log being given up (the server's refusal names it)")
@click.option("--reason", required=True, help="why (recorded, encrypted, in the trail's reset entry)")
@database_options
@pass_invocation
def acknowledge_reset(invocation: Invocation, log: str, reason: str, database_url: str | None,
                      data_dir: str | None) -> int:
    from fieldsync.audit.trail import AuditLog
    from fieldsync.store.engine import make_engine
    config = invocation.config(database_url=database_url, data_dir=data_dir)
    if not config.get("DATABASE_URL"):
        config.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(config.database_url)
    try:
        cp = AuditLog.from_config(config, engine).acknowledge_reset(log, reason=reason, actor=operator())
    finally:
        engine.dispose()
    print(f"recorded the reset of audit log {log} as entry {cp.seq} of the trail; it is the new anchor. "
          "The server starts again.", file=sys.stderr)
    print(cp.as_json())
    return 0


@audit_group.add_command
@command("public-key", "print the public key that verifies the audit trail's signed checkpoints")
@click.option("--output", metavar="FILE", help="write the PEM here instead of standard output")
@database_options
@pass_invocation
def public_key(invocation: Invocation, output: str | None, database_url: str | None, data_dir: str | None) -> int:
    from fieldsync.audit.trail import AuditLog
    from fieldsync.store.engine import make_engine
    config = invocation.config(database_url=database_url, data_dir=data_dir)
    engine = make_engine(config.database_url)
    try:
        pem = AuditLog.from_config(config, engine).public_key_pem()
    finally:
        engine.dispose()
    if output:
        Path(output).write_text(pem)
        print(f"wrote the audit public key to {output}", file=sys.stderr)
    else:
        print(pem, end="")
    return 0
