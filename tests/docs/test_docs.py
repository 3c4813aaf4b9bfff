"""Docs that tests keep true: every meta-schema key is described, every command documented."""

from __future__ import annotations

from pathlib import Path

import click

from fieldsync.cli import fieldsync
from fieldsync.defs import meta_schema

ROOT = Path(__file__).resolve().parents[2]


def _described(schema: dict, defs: dict) -> bool:
    if schema.get("description"):
        return True
    ref = schema.get("$ref")
    return bool(ref) and _described(defs[ref.split("/")[-1]], defs)


def _walk(schema, path, defs, missing):
    if isinstance(schema, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if not _described(sub, defs):
                missing.append(".".join(path + [key]))
            _walk(sub, path + [key], defs, missing)
        for key in ("additionalProperties", "items"):
            if isinstance(schema.get(key), dict):
                _walk(schema[key], path + [f"<{key}>"], defs, missing)
        for key in ("oneOf", "anyOf", "allOf"):
            for i, sub in enumerate(schema.get(key) or ()):
                _walk(sub, path + [f"{key}{i}"], defs, missing)


def test_every_meta_schema_key_has_a_description():
    schema = meta_schema()
    defs = schema["$defs"]
    missing: list[str] = []
    for name, sub in defs.items():
        assert sub.get("description"), f"$defs.{name} has no description"
        _walk(sub, [name], defs, missing)
    assert missing == []


def _command_names(group: click.Group, prefix: str = ""):
    """Every command and group under `group`, as typed after `fieldsync` ("audit verify")."""
    for name, command in group.commands.items():
        yield prefix + name
        if isinstance(command, click.Group):
            yield from _command_names(command, f"{prefix}{name} ")


def test_every_cli_command_is_documented():
    text = (ROOT / "docs" / "cli.md").read_text()
    names = list(_command_names(fieldsync))
    undocumented = [name for name in names if f"fieldsync {name}" not in text]
    assert len(names) > 30 and undocumented == []


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().split("\n## ")[0]
    assert "make run" in head and "make test" in head
