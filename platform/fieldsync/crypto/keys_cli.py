"""`fieldsync keys list|rotate|reencrypt|shred`: data-key operations, each one audited.

Run against the server's database and key provider (the same configuration as the server).
A running server picks rotations and shreds up within KEY_CACHE_SECONDS.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

_COMMANDS = {
    "list": "list the data keys: scope, version, state, provider (never key material)",
    "rotate": "make new data keys for an entity (or all), then re-encrypt and destroy the old ones",
    "reencrypt": "re-encrypt values still under retired keys; destroy retired keys no value uses",
    "shred": "destroy the data keys of one subject (patient) or a whole entity: crypto-shredding",
}


def _open(config_fn: Callable, args) -> tuple[Any, Any, Any, Any]:
    """(config, store, crypto, audit) for the configured database."""
    from fieldsync.defs import load_model
    from fieldsync.audit.trail import AuditLog
    from fieldsync.crypto.keyring import crypto_from_config
    from fieldsync.store.changelog import create_changelog_tables
    from fieldsync.store.engine import make_engine
    from fieldsync.store.records import RecordStore
    from fieldsync.store.tables import build_metadata

    from fieldsync.errors import ConfigError
    config = config_fn(args)
    if not config.get("DATABASE_URL") and not (config.data_dir / "fieldsync.db").exists():
        raise ConfigError(f"no server database in {config.data_dir}: pass --database-url or the server's --data-dir")
    model = load_model(config["DEFS_DIR"])
    entity = getattr(args, "entity", None)
    if entity is not None and not model.has_entity(entity):
        raise ConfigError(f"no entity {entity!r} in {config['DEFS_DIR']}")
    if entity is not None and not model.entity(entity).has_encrypted:
        raise ConfigError(f"entity {entity!r} has no encrypted field: it has no data keys")
    if getattr(args, "subject", None) is not None:
        named = [e.name for e in model.entities if e.subject and (entity is None or e.name == entity)]
        if not named:
            raise ConfigError(f"{'entity ' + repr(entity) if entity else 'no entity'} names no encryption "
                              "subject: --subject has nothing to shred")
    engine = make_engine(config.database_url)
    create_changelog_tables(engine)
    build_metadata(model).create_all(engine)
    crypto = crypto_from_config(config, engine, model=model)
    store = RecordStore(engine, model, codec=crypto)
    audit = AuditLog.from_config(config, engine)
    audit.prepare()   # as the server: a trail that does not match its anchor is refused, never restarted
    return config, store, crypto, audit


def _audit(audit, event: str, *, entity: str | None = None, subjects: tuple[str, ...] = (),
           detail: dict[str, Any] | None = None, outcome: str = "success", reason: str | None = None) -> None:
    from fieldsync.audit.trail import AuditEvent
    audit.record(AuditEvent(action="key", outcome=outcome, actor="cli", channel="cli", entity=entity,
                            subjects=subjects, reason=reason, detail={"event": event, **(detail or {})}))


def cmd_list(config_fn: Callable, args) -> int:
    _config, _store, crypto, _audit_log = _open(config_fn, args)
    rows = list(crypto.keyring.describe())
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    for r in rows:
        print(f"{r['kid']}  v{r['version']:<3} {r['state']:<9} {r['provider']:<6} {r['scope']}")
    print(f"{len(rows)} key(s)")
    return 0


def cmd_rotate(config_fn: Callable, args) -> int:
    from fieldsync.crypto.rotation import reencrypt, rotate
    _config, store, crypto, audit = _open(config_fn, args)
    done = rotate(crypto, store.model, args.entity)
    _audit(audit, "rotate", entity=args.entity, detail={"keys": len(done), "new": [n for _s, _o, n in done][:50]})
    print(f"{len(done)} key(s) rotated" + (f" for {args.entity}" if args.entity else ""))
    if args.no_reencrypt:
        print("re-encryption left to the server's key maintenance (or `fieldsync keys reencrypt`)")
        return 0
    report = reencrypt(store, crypto, entity=args.entity)
    _audit(audit, "reencrypt", entity=args.entity, detail={"rows": report.rows, "changes": report.changes,
                                                           "destroyed": report.destroyed[:50]})
    print(report.summary())
    if report.still_retired:
        print("retired keys are kept until no server may still write with them (KEY_RETIRE_GRACE_SECONDS); "
              "run `fieldsync keys reencrypt` again later, or let the server's key maintenance do it")
    return 0


def cmd_reencrypt(config_fn: Callable, args) -> int:
    from fieldsync.crypto.rotation import reencrypt
    _config, store, crypto, audit = _open(config_fn, args)
    report = reencrypt(store, crypto, entity=args.entity)
    _audit(audit, "reencrypt", entity=args.entity, detail={"rows": report.rows, "changes": report.changes,
                                                           "destroyed": report.destroyed[:50]})
    print(report.summary())
    return 0


def cmd_shred(config_fn: Callable, args) -> int:
    from fieldsync.crypto.rotation import shred_entity, shred_subject
    if not args.yes:
        print("shredding destroys data for good; rerun with --yes", file=sys.stderr)
        return 2
    _config, store, crypto, audit = _open(config_fn, args)
    if args.subject is not None:
        ref = crypto.subject_ref(args.subject)
        destroyed = shred_subject(store, crypto, args.subject, args.entity)
        _audit(audit, "shred-subject", entity=args.entity, subjects=(ref,),
               detail={"destroyed": destroyed}, reason=args.reason)
        print(f"{len(destroyed)} key(s) of subject {ref} destroyed")
    else:
        if not args.entity:
            print("name --entity, --subject, or both", file=sys.stderr)
            return 2
        destroyed = shred_entity(store, crypto, args.entity)
        _audit(audit, "shred-entity", entity=args.entity, detail={"destroyed": destroyed}, reason=args.reason)
        print(f"{len(destroyed)} key(s) of {args.entity} destroyed: its encrypted values are gone")
    return 0


def add_keys_commands(sub, command: Callable, config_fn: Callable, commands: dict[str, str]) -> None:
    """Add `fieldsync keys <action>` to the parser `sub` (cli.py's subparsers)."""
    keys = command(sub, "keys", "data keys of field-level encryption: list, rotate, re-encrypt, shred",
                   lambda args: keys.print_help() or 2)
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    handlers = {"list": cmd_list, "rotate": cmd_rotate, "reencrypt": cmd_reencrypt, "shred": cmd_shred}
    for name, help_text in _COMMANDS.items():
        commands["keys " + name] = help_text
        p = actions.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=lambda args, h=handlers[name]: h(config_fn, args))
        if name == "list":
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        if name in ("rotate", "reencrypt", "shred"):
            p.add_argument("--entity", help="only this entity (default: every entity with encrypted fields)")
        if name == "rotate":
            p.add_argument("--no-reencrypt", action="store_true",
                           help="only make the new keys; the server's key maintenance re-encrypts")
        if name == "shred":
            p.add_argument("--subject", help="the subject's value (e.g. a patient id); with --entity, "
                                             "only in that entity")
            p.add_argument("--reason", help="why (kept encrypted in the audit trail)")
            p.add_argument("--yes", action="store_true", help="confirm: the values are destroyed for good")
        p.add_argument("--defs", help="definitions directory")
        p.add_argument("--database-url", help="database URL")
        p.add_argument("--data-dir", help="data directory (default var/)")
