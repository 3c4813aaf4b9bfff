"""The definition language: YAML in `entity_defs/` -> a validated, immutable Model (no I/O).

Importing the package loads nothing: the SDK imports `defs.model` and `defs.values` (the value
rules it shares with the server, standard library only) without the YAML loader and its
jsonschema; the names below load on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DefinitionError": "loader", "DefinitionErrors": "loader", "build_model": "loader", "load_model": "loader",
    "meta_schema": "loader", "read_sources": "loader",
    "Entity": "model", "Field": "model", "Model": "model", "Permission": "model", "Role": "model",
    "SyncRule": "model", "UserAttribute": "model",
    "FieldProblem": "values", "validate_record": "values",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fieldsync.defs' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"fieldsync.defs.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
