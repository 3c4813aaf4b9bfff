"""`fieldsync devices revoke <id> --reason R` and `fieldsync token revoke <token id>` (docs/cli.md).

Both work on the database directly (no running server needed; every server refuses the
revoked tokens at their next request) and append their audit entry in the same transaction,
with channel "cli" and the operating-system user as the actor.
"""

from __future__ import annotations

import getpass
import socket
import sys
from typing import Callable

__all__ = ["add_device_revoke_command", "add_token_revoke_command"]


def _actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()} (cli)"


def _open(config):
    """The engine, with the tables a revocation writes, and the audit log."""
    from fieldsync.auth.sessions import create_session_tables
    from fieldsync.audit.trail import AuditLog
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


def cmd_devices_revoke(args, config_of: Callable) -> int:
    from fieldsync.auth.revocation import revoke_device
    from fieldsync.errors import NotFound
    engine, audit = _open(config_of(args))
    try:
        before = revoke_device(engine, audit, args.device_id, reason=args.reason, actor=_actor(), channel="cli")
    except NotFound:
        print(f"fieldsync devices revoke: no device {args.device_id}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"fieldsync devices revoke: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if before["status"] == "revoked":
        print(f"device {args.device_id} (user {before['user_id']}) was already revoked; nothing changed")
    else:
        print(f"device {args.device_id} (user {before['user_id']}) revoked: every token of it is refused "
              "from now on; its data and outbox stay on the device")
    return 0


def cmd_token_revoke(args, config_of: Callable) -> int:
    from fieldsync.auth.revocation import revoke_token
    engine, audit = _open(config_of(args))
    try:
        known = revoke_token(engine, audit, args.token_id, actor=_actor(), channel="cli", reason=args.reason)
    except ValueError as exc:
        print(f"fieldsync token revoke: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"token {args.token_id} revoked" + ("" if known else
          " (not used yet: it is refused from its first use)"))
    return 0


def add_device_revoke_command(devices_parser, config_of: Callable, commands: dict[str, str]) -> None:
    """`fieldsync devices revoke` under the `devices` command (which still lists without an action)."""
    help_text = "revoke a device: every token of it is refused from now on (audited with --reason)"
    commands["devices revoke"] = help_text
    sub = devices_parser.add_subparsers(dest="devices_command", metavar="ACTION")
    p = sub.add_parser("revoke", help=help_text, description=help_text)
    p.set_defaults(handler=lambda args: cmd_devices_revoke(args, config_of))
    p.add_argument("device_id", help="the device's id (fieldsync devices lists them)")
    p.add_argument("--reason", required=True, help="why (kept encrypted in the audit log)")
    p.add_argument("--database-url", help="database URL")
    p.add_argument("--data-dir", help="data directory (default var/)")


def add_token_revoke_command(token_sub, config_of: Callable, commands: dict[str, str]) -> None:
    help_text = "revoke one token by its id (printed by token create; in the audit log's session entries)"
    commands["token revoke"] = help_text
    p = token_sub.add_parser("revoke", help=help_text, description=help_text)
    p.set_defaults(handler=lambda args: cmd_token_revoke(args, config_of))
    p.add_argument("token_id", help="the token's id (its jti)")
    p.add_argument("--reason", help="why (optional; kept encrypted in the audit log)")
    p.add_argument("--database-url", help="database URL")
    p.add_argument("--data-dir", help="data directory (default var/)")
