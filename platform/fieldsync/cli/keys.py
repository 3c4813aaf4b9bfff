"""`fieldsync keys list|rotate|reencrypt|shred`: data-key operations, each one audited.

Run against the server's database and key provider (the same configuration as the server).
A running server picks rotations and shreds up within KEY_CACHE_SECONDS.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from fieldsync.cli.common import Invocation, action_group, command, database_options, defs_option, pass_invocation

keys = action_group("keys", "data keys of field-level encryption: list, rotate, re-encrypt, shred")


def _open(config, entity: str | None = None, subject: str | None = None) -> tuple[Any, Any, Any]:
    """(store, crypto, audit) for the configured database."""
    from fieldsync.defs import load_model
    from fieldsync.audit.trail import AuditLog
    from fieldsync.crypto.keyring import crypto_from_config
    from fieldsync.store.changelog import create_changelog_tables
    from fieldsync.store.engine import make_engine
    from fieldsync.store.records import RecordStore
    from fieldsync.store.tables import build_metadata

    from fieldsync.errors import ConfigError
    if not config.get("DATABASE_URL") and not (config.data_dir / "fieldsync.db").exists():
        raise ConfigError(f"no server database in {config.data_dir}: pass --database-url or the server's --data-dir")
    model = load_model(config["DEFS_DIR"])
    if entity is not None and not model.has_entity(entity):
        raise ConfigError(f"no entity {entity!r} in {config['DEFS_DIR']}")
    if entity is not None and not model.entity(entity).has_encrypted:
        raise ConfigError(f"entity {entity!r} has no encrypted field: it has no data keys")
    if subject is not None:
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
    return store, crypto, audit


def _audit(audit, event: str, *, entity: str | None = None, subjects: tuple[str, ...] = (),
           detail: dict[str, Any] | None = None, outcome: str = "success", reason: str | None = None) -> None:
    from fieldsync.audit.trail import AuditEvent
    audit.record(AuditEvent(action="key", outcome=outcome, actor="cli", channel="cli", entity=entity,
                            subjects=subjects, reason=reason, detail={"event": event, **(detail or {})}))


def _entity_option(f):
    return click.option("--entity", help="only this entity (default: every entity with encrypted fields)")(f)


@keys.add_command
@command("list", "list the data keys: scope, version, state, provider (never key material)")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@defs_option
@database_options
@pass_invocation
def list_keys(invocation: Invocation, as_json: bool, defs: str | None, database_url: str | None,
              data_dir: str | None) -> int:
    _store, crypto, _audit_log = _open(invocation.config(defs=defs, database_url=database_url, data_dir=data_dir))
    rows = list(crypto.keyring.describe())
    if as_json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    for r in rows:
        print(f"{r['kid']}  v{r['version']:<3} {r['state']:<9} {r['provider']:<6} {r['scope']}")
    print(f"{len(rows)} key(s)")
    return 0


@keys.add_command
@command("rotate", "make new data keys for an entity (or all), then re-encrypt and destroy the old ones")
@_entity_option
@click.option("--no-reencrypt", is_flag=True, help="only make the new keys; the server's key maintenance re-encrypts")
@defs_option
@database_options
@pass_invocation
def rotate_keys(invocation: Invocation, entity: str | None, no_reencrypt: bool, defs: str | None,
                database_url: str | None, data_dir: str | None) -> int:
    from fieldsync.crypto.rotation import reencrypt, rotate
    store, crypto, audit = _open(invocation.config(defs=defs, database_url=database_url, data_dir=data_dir), entity)
    done = rotate(crypto, store.model, entity)
    _audit(audit, "rotate", entity=entity, detail={"keys": len(done), "new": [n for _s, _o, n in done][:50]})
    print(f"{len(done)} key(s) rotated" + (f" for {entity}" if entity else ""))
    if no_reencrypt:
        print("re-encryption left to the server's key maintenance (or `fieldsync keys reencrypt`)")
        return 0
    report = reencrypt(store, crypto, entity=entity)
    _audit(audit, "reencrypt", entity=entity, detail={"rows": report.rows, "changes": report.changes,
                                                      "destroyed": report.destroyed[:50]})
    print(report.summary())
    if report.still_retired:
        print("retired keys are kept until no server may still write with them (KEY_RETIRE_GRACE_SECONDS); "
              "run `fieldsync keys reencrypt` again later, or let the server's key maintenance do it")
    return 0


@keys.add_command
@command("reencrypt", "re-encrypt values still under retired keys; destroy retired keys no value uses")
@_entity_option
@defs_option
@database_options
@pass_invocation
def reencrypt_keys(invocation: Invocation, entity: str | None, defs: str | None, database_url: str | None,
                   data_dir: str | None) -> int:
    from fieldsync.crypto.rotation import reencrypt
    store, crypto, audit = _open(invocation.config(defs=defs, database_url=database_url, data_dir=data_dir), entity)
    report = reencrypt(store, crypto, entity=entity)
    _audit(audit, "reencrypt", entity=entity, detail={"rows": report.rows, "changes": report.changes,
                                                      "destroyed": report.destroyed[:50]})
    print(report.summary())
    return 0


@keys.add_command
@command("shred", "destroy the data keys of one subject (patient) or a whole entity: crypto-shredding")
@_entity_option
@click.option("--subject", help="the subject's value (e.g. a patient id); with --entity, only in that entity")
@click.option("--reason", help="why (kept encrypted in the audit trail)")
@click.option("--yes", is_flag=True, help="confirm: the values are destroyed for good")
@defs_option
@database_options
@pass_invocation
def shred(invocation: Invocation, entity: str | None, subject: str | None, reason: str | None, yes: bool,
          defs: str | None, database_url: str | None, data_dir: str | None) -> int:
    from fieldsync.crypto.rotation import shred_entity, shred_subject
    if not yes:
        print("shredding destroys data for good; rerun with --yes", file=sys.stderr)
        return 2
    store, crypto, audit = _open(invocation.config(defs=defs, database_url=database_url, data_dir=data_dir),
                                 entity, subject)
    if subject is not None:
        ref = crypto.subject_ref(subject)
        destroyed = shred_subject(store, crypto, subject, entity)
        _audit(audit, "shred-subject", entity=entity, subjects=(ref,), detail={"destroyed": destroyed}, reason=reason)
        print(f"{len(destroyed)} key(s) of subject {ref} destroyed")
    else:
        if not entity:
            print("name --entity, --subject, or both", file=sys.stderr)
            return 2
        destroyed = shred_entity(store, crypto, entity)
        _audit(audit, "shred-entity", entity=entity, detail={"destroyed": destroyed}, reason=reason)
        print(f"{len(destroyed)} key(s) of {entity} destroyed: its encrypted values are gone")
    return 0
