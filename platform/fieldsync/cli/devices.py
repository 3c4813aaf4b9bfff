"""`fieldsync devices` and `devices revoke`: the registered devices, where each stands, and
taking one out of service (docs/cli.md, docs/access.md)."""

from __future__ import annotations

import json
import sys

import click

from fieldsync.cli.common import (Invocation, command, data_dir_option, database_options, json_option,
                                  open_for_revocation, operator, pass_invocation)

_LIST_HELP = "list registered devices: last contact, cursor, pending and quarantined counts"


@click.group("devices", help=_LIST_HELP, short_help=_LIST_HELP, invoke_without_command=True)
@json_option
@click.option("--database-url", help="database URL")
@data_dir_option
@click.pass_context
def devices(ctx: click.Context, as_json: bool, database_url: str | None, data_dir: str | None) -> int | None:
    """The registered devices and where each stands (what GET /api/v1/sync/devices returns);
    `fieldsync devices revoke` is its one action."""
    if ctx.invoked_subcommand is not None:
        return None
    import sqlalchemy as sa
    from fieldsync.store.changelog import create_changelog_tables, head_position
    from fieldsync.store.engine import make_engine
    from fieldsync.sync.tables import DEVICES, LEDGER, RECEIVED, create_sync_tables
    config = ctx.find_object(Invocation).config(database_url=database_url, data_dir=data_dir)
    engine = make_engine(config.database_url)
    try:
        create_changelog_tables(engine)
        create_sync_tables(engine)
        with engine.connect() as conn:
            head = head_position(conn)
            rows = list(conn.execute(sa.select(DEVICES).order_by(DEVICES.c.user_id, DEVICES.c.registered_at))
                        .mappings())
            checkpoints = dict(conn.execute(sa.select(LEDGER.c.device_id, sa.func.max(LEDGER.c.position))
                                            .group_by(LEDGER.c.device_id)).all())
            unsettled_by = dict(conn.execute(sa.select(RECEIVED.c.device_id, sa.func.count())
                                             .group_by(RECEIVED.c.device_id)).all())
        items = []
        for r in rows:
            reported = json.loads(r["reported"]) if r["reported"] else {}
            items.append({"device_id": r["device_id"], "user_id": r["user_id"], "status": r["status"],
                          # as of its latest push or pull (registration until then)
                          "schema_version": r["schema_version"], "app_version": r["app_version"],
                          "last_contact_at": str(r["last_contact_at"])[:19], "acked_cursor": r["acked_cursor"],
                          "behind": max(head - r["acked_cursor"], 0), "last_received_seq": r["last_received_seq"],
                          "unsettled": unsettled_by.get(r["device_id"], 0), "rejected": r["rejected"],
                          "pending": (reported.get("outbox") or {}).get("pending"),
                          "quarantined": reported.get("quarantined"),
                          "write_checkpoint": checkpoints.get(r["device_id"]) or 0})
    finally:
        engine.dispose()
    if as_json:
        print(json.dumps({"head": head, "items": items}, indent=2))
        return 0
    columns = ("device_id", "user_id", "status", "schema_version", "app_version", "last_contact_at",
               "acked_cursor", "behind",
               "last_received_seq", "unsettled", "rejected", "pending", "quarantined")
    widths = {c: max([len(c)] + [len(str(i[c])) for i in items]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for i in items:
        print("  ".join(str(i[c] if i[c] is not None else "-").ljust(widths[c]) for c in columns))
    print(f"{len(items)} device(s); head position {head}")
    return 0


@devices.add_command
@command("revoke", "revoke a device: every token of it is refused from now on (audited with --reason)")
@click.argument("device_id")
@click.option("--reason", required=True, help="why (kept encrypted in the audit log)")
@database_options
@pass_invocation
def revoke(invocation: Invocation, device_id: str, reason: str, database_url: str | None,
           data_dir: str | None) -> int:
    """DEVICE_ID: the device's id (fieldsync devices lists them)."""
    from fieldsync.auth.revocation import revoke_device
    from fieldsync.errors import NotFound
    engine, audit = open_for_revocation(invocation.config(database_url=database_url, data_dir=data_dir))
    try:
        before = revoke_device(engine, audit, device_id, reason=reason, actor=f"{operator()} (cli)", channel="cli")
    except NotFound:
        print(f"fieldsync devices revoke: no device {device_id}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"fieldsync devices revoke: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if before["status"] == "revoked":
        print(f"device {device_id} (user {before['user_id']}) was already revoked; nothing changed")
    else:
        print(f"device {device_id} (user {before['user_id']}) revoked: every token of it is refused "
              "from now on; its data and outbox stay on the device")
    return 0
