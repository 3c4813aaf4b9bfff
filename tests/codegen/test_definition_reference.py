"""The generated definition-language reference documents every key of the meta-schema."""

from __future__ import annotations

import re

from fieldsync.codegen.definition_docs import markdown_cell, reference_sections
from fieldsync.defs import meta_schema


def _all_keys(node, found: set[str]) -> set[str]:
    """Every property name declared anywhere in the meta-schema."""
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            found.add(key)
            _all_keys(value, found)
        for key, value in node.items():
            if key != "properties":
                _all_keys(value, found)
    elif isinstance(node, list):
        for item in node:
            _all_keys(item, found)
    return found


def _documented(text: str) -> dict[str, set[str]]:
    """Section title -> keys with a row in that section's table."""
    out: dict[str, set[str]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip("`")
            out[section] = set()
        match = re.match(r"^\| `([a-z_]+)` \|", line)
        if match:
            out[section].add(match.group(1))
    return out


def test_every_meta_schema_key_has_a_row(rendered):
    documented = set().union(*_documented(rendered["docs/definition-language.md"]).values())
    missing = _all_keys(meta_schema(), set()) - documented
    assert not missing, f"keys missing from the reference: {sorted(missing)}"


def test_rows_carry_the_meta_schema_descriptions_and_values(rendered):
    text = rendered["docs/definition-language.md"]
    field = meta_schema()["$defs"]["field"]["properties"]
    assert markdown_cell(field["type"]["description"]) in text
    sync = [line for line in text.splitlines() if line.startswith("| `conflict` |")]
    assert sync and all(f"`{p}`" in sync[0] for p in ("server_wins", "last_write_wins", "field_merge",
                                                        "reject_stale"))
    entity_rows = [line for line in text.splitlines() if line.startswith("| `kind` | yes |")]
    assert entity_rows, "required keys are marked"


def test_sections_cover_the_three_files_and_nested_objects():
    titles = [s["title"] for s in reference_sections(meta_schema())]
    assert titles[:1] == ["Entity files"] and "roles.yaml" in titles and "app.yaml" in titles
    assert {"fields.<name>", "children.<name>", "permissions.<name>", "sync", "encryption",
            "encryption.fields.<name>"} <= set(titles)
    assert len(titles) == len(set(titles)), "each object is documented once"


def test_the_example_model_is_summarised(rendered, example_model):
    text = rendered["docs/definition-language.md"]
    for entity in example_model.entities:
        assert f"| `{entity.name}` | {entity.kind}" in text
    assert "patient_id, patient_name, patient_dob, diagnosis" in text


def test_table_cells_show_angle_brackets_and_pipes_literally():
    assert markdown_cell("a <b> | `c <d>`") == "a &lt;b&gt; \\| `c <d>`"
