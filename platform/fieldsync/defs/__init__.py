"""The definition language: YAML in `entity_defs/` -> a validated, immutable Model (no I/O)."""

from fieldsync.defs.loader import (
    DefinitionError, DefinitionErrors, build_model, load_model, meta_schema, read_sources,
)
from fieldsync.defs.model import Entity, Field, Model, Permission, Role, SyncRule, UserAttribute
from fieldsync.defs.values import FieldProblem, validate_record

__all__ = [
    "DefinitionError", "DefinitionErrors", "Entity", "Field", "FieldProblem", "Model", "Permission",
    "Role", "SyncRule", "UserAttribute", "build_model", "load_model", "meta_schema", "read_sources",
    "validate_record",
]
