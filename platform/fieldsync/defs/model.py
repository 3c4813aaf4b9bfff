"""The validated, immutable model that every other part of fieldsync is derived from.

`fieldsync.defs.load_model()` builds it from `entity_defs/`; nothing here does I/O. All
collections are tuples (ordered as written in the YAML, which keeps generated output
deterministic) and every object is a frozen dataclass, so a model can be shared between
threads and swapped atomically when definitions change.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field as dc_field
from typing import Any

from fieldsync.defs.expr import Expr

FIELD_TYPES = (
    "string", "text", "integer", "decimal", "boolean", "date", "datetime",
    "uuid", "enum", "json", "ref", "media", "geopoint",
)
KINDS = ("master", "transaction")
ACTIONS = ("read", "create", "update", "delete")
DIRECTIONS = ("pull", "push", "both", "none")
CONFLICT_POLICIES = ("server_wins", "last_write_wins", "field_merge", "reject_stale")
ENCRYPTION_MODES = ("plain", "encrypt", "deterministic", "blind_index")

# Columns the platform adds to every server table; a field may not use these names.
SYSTEM_COLUMNS = ("id", "version", "created_at", "updated_at", "deleted")


@dataclass(frozen=True, slots=True)
class Location:
    """Where something was written: file path (as given), 1-based line and column."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True, slots=True)
class Field:
    """One field of an entity, with its type, constraints and encryption policy."""

    name: str
    type: str
    label: str = ""
    description: str = ""
    required: bool = False
    unique: bool = False
    has_default: bool = False
    default: Any = None
    minimum: Any = None          # int or decimal.Decimal
    maximum: Any = None
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    precision: int | None = None  # decimal only
    scale: int | None = None      # decimal only
    values: tuple[str, ...] = ()  # enum only
    ref: str | None = None        # ref only: the target entity's name
    max_bytes: int | None = None  # media only: the largest object an upload may hold
    content_types: tuple[str, ...] = ()   # media only: accepted MIME types (`image/*` wildcards); () any
    renamed_from: tuple[str, ...] = ()
    encryption: str = "plain"     # one of ENCRYPTION_MODES
    phi: bool = False
    location: Location | None = dc_field(default=None, compare=False)

    @property
    def encrypted(self) -> bool:
        return self.encryption != "plain"


@dataclass(frozen=True, slots=True)
class Permission:
    """What one role may do with one entity.

    `visible` and `editable` are None when the role sees / may edit every field.
    `row_filter` limits the rows the role reaches (None: all rows). `break_glass` lets the role
    read every field, PHI included, on a request that gives a reason (audited; docs/access.md).
    """

    role: str
    actions: frozenset[str]
    visible: tuple[str, ...] | None = None
    editable: tuple[str, ...] | None = None
    row_filter: Expr | None = None
    row_filter_source: str | None = None
    break_glass: bool = False

    def can(self, action: str) -> bool:
        return action in self.actions


@dataclass(frozen=True, slots=True)
class SyncRule:
    """How an entity travels between server and devices (enforced by the sync issue)."""

    direction: str = "both"
    scope: Expr | None = None
    scope_source: str | None = None
    window_days: int | None = None
    window_field: str | None = None
    conflict: str = "last_write_wins"
    priority: int = 100


@dataclass(frozen=True, slots=True)
class Entity:
    """A master or transaction entity; child collections are entities with a `parent`."""

    name: str
    kind: str
    fields: tuple[Field, ...]
    label: str = ""
    description: str = ""
    parent: str | None = None          # child entities: the parent entity's name
    parent_field: str | None = None    # child entities: the column holding the parent's id
    collection: str | None = None      # child entities: the collection name in the parent
    children: tuple[str, ...] = ()     # names of child entities
    owner: str | None = None           # field filled from the authenticated user's id
    subject: str | None = None         # field naming the data subject (per-subject keys)
    renamed_from: tuple[str, ...] = ()
    permissions: tuple[Permission, ...] = ()
    sync: SyncRule = SyncRule()
    location: Location | None = dc_field(default=None, compare=False)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(f"{self.name} has no field {name!r}")

    def has_field(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def permission(self, role: str) -> Permission | None:
        for p in self.permissions:
            if p.role == role:
                return p
        return None

    @property
    def has_encrypted(self) -> bool:
        return any(f.encrypted for f in self.fields)

    @property
    def phi_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.phi)


@dataclass(frozen=True, slots=True)
class Role:
    name: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class UserAttribute:
    """An attribute a user's token carries, usable as `$user.<name>` in expressions."""

    name: str
    type: str             # string | integer | uuid | boolean | list
    items: str | None = None  # element type for lists
    description: str = ""


# $user.id and $user.role exist for every user.
BUILTIN_USER_ATTRIBUTES = (
    UserAttribute("id", "string", description="The user's id."),
    UserAttribute("role", "string", description="The role the token carries."),
)


@dataclass(frozen=True, slots=True)
class Model:
    """The whole application: entities (parents before their children), roles, attributes."""

    app: str
    schema_version: int
    entities: tuple[Entity, ...]
    roles: tuple[Role, ...]
    attributes: tuple[UserAttribute, ...]
    title: str = ""
    description: str = ""
    sources: tuple[str, ...] = ()   # definition files, relative to the definitions directory

    def entity(self, name: str) -> Entity:
        for e in self.entities:
            if e.name == name:
                return e
        raise KeyError(f"no entity {name!r}")

    def has_entity(self, name: str) -> bool:
        return any(e.name == name for e in self.entities)

    @property
    def entity_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entities)

    @property
    def role_names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.roles)

    def attribute(self, name: str) -> UserAttribute | None:
        for a in BUILTIN_USER_ATTRIBUTES + self.attributes:
            if a.name == name:
                return a
        return None

    def fingerprint(self) -> str:
        """A stable hash of everything that shapes storage, so generated files can name it."""
        shape = [
            [e.name, e.kind, e.parent, [[f.name, f.type, f.required, f.unique, f.precision,
                                          f.scale, list(f.values), f.ref, f.encryption]
                                         for f in e.fields]]
            for e in self.entities
        ]
        raw = json.dumps([self.app, self.schema_version, shape], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:16]
