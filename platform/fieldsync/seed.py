"""Seed data for the masters (what `make run` loads), and the demo users it puts in the user
directory with fresh passwords and prints tokens for.

A seed directory holds YAML files of the form `{entity: name, records: [...]}`; children may be
given inline under their collection name (a price list's `items`). Entity and field names of
earlier definitions are mapped through `renamed_from`, so seed files need no edit after a
rename. Records go through the same validation as REST writes. A record whose id already exists is left alone, so seeding on every
start is safe and never overwrites what users changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fieldsync.config import Config
from fieldsync.defs import load_model
from fieldsync.defs.model import Model
from fieldsync.errors import Conflict, ConfigError, NotFound, ValidationFailed

# Territory ids are the seed's fixed ids (examples/seed/territory.yaml).
PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"
PUNE_RURAL = "58f87001-cb0b-5eac-8382-fd18ac1f335e"
BENGALURU_EAST = "336f8d69-35bc-5019-a729-009dcca293dd"

DEMO_USERS: tuple[dict[str, Any], ...] = (
    {"user": "rep-asha", "role": "field_rep", "attributes": {"territory_ids": [PUNE_CENTRAL, PUNE_RURAL]}},
    {"user": "sup-ravi", "role": "supervisor", "attributes": {"region": "west",
                                                              "territory_ids": [PUNE_CENTRAL, PUNE_RURAL]}},
    {"user": "admin-meera", "role": "admin", "attributes": {}},
    {"user": "analyst-joe", "role": "analyst", "attributes": {}},
    {"user": "compliance-lin", "role": "compliance", "attributes": {}},
)


def demo_logins(engine, audit, model: Model, *, now: float | None = None, keyring=None) -> dict[str, str]:
    """Put DEMO_USERS in the user directory (auth/users.py) with a new random password each: a
    user added by an earlier run gets a new password (revoking their old tokens), the demo role
    and attributes back, and no second factor. user id -> password, for `make run` to print; never
    stored. `keyring` (the server's) is handed to the directory, which seals TOTP secrets with it."""
    import secrets
    from fieldsync.auth.users import add_user, set_user
    from fieldsync.errors import Conflict
    passwords = {}
    for user in DEMO_USERS:
        password = secrets.token_urlsafe(12)
        try:
            add_user(engine, audit, model, user["user"], role=user["role"], attributes=user["attributes"],
                     password=password, actor="fieldsync run", now=now, keyring=keyring)
        except Conflict:
            set_user(engine, audit, model, user["user"], role=user["role"], attributes=user["attributes"],
                     password=password, totp=False, actor="fieldsync run", now=now, keyring=keyring)
        passwords[user["user"]] = password
    return passwords


def read_seed(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """entity name -> records, from every YAML file in `directory`."""
    seed: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text("utf-8"))
        if not isinstance(doc, dict) or not isinstance(doc.get("entity"), str) \
                or not isinstance(doc.get("records"), list):
            raise ConfigError(f"{path}: a seed file holds `entity: <name>` and `records: [...]`")
        seed.setdefault(doc["entity"], []).extend(doc["records"])
    return seed


def current_names(model: Model, seed: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """`seed` with entity and field names of earlier definitions mapped through `renamed_from`
    (invariant 9), so seed files written before a rename still load; names the model does not
    know, old or new, are left for the caller to report."""
    mapped: dict[str, list[dict[str, Any]]] = {}
    for name, records in seed.items():
        entity = _entity_named(model, name)
        if entity is None:
            mapped.setdefault(name, []).extend(records)
            continue
        mapped.setdefault(entity.name, []).extend(_record_names(model, entity, r) for r in records)
    return mapped


def _entity_named(model: Model, name: str):
    if model.has_entity(name):
        return model.entity(name)
    return next((e for e in model.entities if name in e.renamed_from), None)


def _record_names(model: Model, entity, record: Any) -> Any:
    if not isinstance(record, dict):
        return record
    fields = {f.name for f in entity.fields}
    old_names = {old: f.name for f in entity.fields for old in f.renamed_from}
    children = {model.entity(c).collection: model.entity(c) for c in entity.children}
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key in children and isinstance(value, list):
            out[key] = [_record_names(model, children[key], child) for child in value]
        elif key not in fields and key in old_names:
            out[old_names[key]] = value
        else:
            out[key] = value
    return out


def dependency_order(model: Model, names: list[str]) -> list[str]:
    """`names` ordered so an entity comes after those its refs point at (self-refs aside)."""
    remaining, ordered = sorted(names), []
    while remaining:
        for name in remaining:
            targets = {f.ref for f in model.entity(name).fields if f.type == "ref"} - {name}
            if not targets & set(remaining):
                ordered.append(name)
                remaining.remove(name)
                break
        else:
            ordered.extend(remaining)   # optional cycles: refs are checked per record anyway
            break
    return ordered


def load_seed(config: Config, directory: Path, store=None) -> dict[str, int]:
    """Insert the seed records that are not there yet; returns how many were new per entity."""
    from fieldsync.crypto.keyring import crypto_from_config
    from fieldsync.store.engine import make_engine
    from fieldsync.store.changelog import ChangeLog, create_changelog_tables
    from fieldsync.store.migrate import auto_migrate
    from fieldsync.store.records import RecordStore

    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError(f"seed directory {directory} not found")
    model = load_model(config["DEFS_DIR"])
    seed = current_names(model, read_seed(directory))
    unknown = [name for name in seed if not model.has_entity(name)]
    if unknown:
        raise ConfigError(f"{directory}: seed for unknown entities: {', '.join(unknown)}")
    engine = None
    if store is None:
        if not config.get("DATABASE_URL"):
            config.data_dir.mkdir(parents=True, exist_ok=True)   # the embedded SQLite file lives there
        engine = make_engine(config.database_url)
        # a fresh database gets its tables here, as the server would at start (additive steps only)
        auto_migrate(engine, model)
        # every server-side write is logged, or devices would never pull it (invariant 4)
        create_changelog_tables(engine)
        crypto = crypto_from_config(config, engine, model=model)   # seeded PHI is encrypted like any write
        store = RecordStore(engine=engine, model=model, codec=crypto, changelog=ChangeLog(codec=crypto))
    counts: dict[str, int] = {}
    try:
        for name in dependency_order(model, list(seed)):
            entity = model.entity(name)
            collections = {model.entity(c).collection for c in entity.children}
            counts[name] = 0
            for record in seed[name]:
                body = {k: v for k, v in record.items() if k not in collections}
                children = {k: v for k, v in record.items() if k in collections}
                try:
                    store.get(entity, str(record.get("id")))
                    continue                # already seeded (and perhaps edited since)
                except NotFound:
                    pass
                try:
                    store.create(entity, body, children=children or None)
                except Conflict:
                    continue            # already seeded
                except ValidationFailed as exc:
                    problems = "; ".join(f"{p.field}: {p.reason}" for p in exc.problems)
                    raise ConfigError(f"{directory}/{name}.yaml record {record.get('id')}: {problems}") from None
                counts[name] += 1
    finally:
        if engine is not None:
            engine.dispose()
    return counts
