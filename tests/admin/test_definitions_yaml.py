"""The YAML the Definitions view's forms write (admin/fieldsync_admin/definitions_yaml.py): a
field inserted as text keeps the rest of the file, odd strings are quoted, a flow-style file falls
back to a PyYAML round trip, a new entity gets the defaults it needs."""

from __future__ import annotations

import pytest
import yaml

from fieldsync.defs import build_model, read_sources
from fieldsync_admin.definitions_change import merge3
from fieldsync_admin.definitions_yaml import FieldSpec, FormError, add_field, new_entity_text
from tests.conftest import DEFS_DIR

def test_add_field_keeps_the_rest_of_the_file():
    text = (DEFS_DIR / "transactions" / "prescription.yaml").read_text()
    edited = add_field(text, FieldSpec("allergy", "text", max_length=500, encryption="encrypt", phi=True))
    assert edited.startswith(text[:text.index("encryption:")])
    assert "# emergency access (docs/access.md)" in edited
    data = yaml.safe_load(edited)
    assert data["fields"]["allergy"] == {"type": "text", "max_length": 500}
    assert data["encryption"]["fields"]["allergy"] == {"mode": "encrypt", "phi": True}
    with pytest.raises(FormError, match="already has a field"):
        add_field(text, FieldSpec("dosage", "string"))


def test_add_field_falls_back_to_a_round_trip_for_flow_style():
    text = "entity: x\nkind: master\nfields: {a: {type: string}}\n"
    data = yaml.safe_load(add_field(text, FieldSpec("b", "integer", required=True, minimum=0)))
    assert data["fields"] == {"a": {"type": "string"}, "b": {"type": "integer", "required": True, "minimum": 0}}


def test_odd_strings_are_quoted():
    text = (DEFS_DIR / "masters" / "retailer.yaml").read_text()
    spec = FieldSpec("note", "string", description='yes: "quoted" # not a comment', pattern="^[a-z]+$")
    data = yaml.safe_load(add_field(text, spec))
    assert data["fields"]["note"]["description"] == 'yes: "quoted" # not a comment'
    assert data["fields"]["note"]["pattern"] == "^[a-z]+$"


def test_a_new_master_pulls_and_every_role_reads():
    text = new_entity_text("brand", "master", [FieldSpec("title", "string", required=True, max_length=80)],
                           roles=("field_rep", "admin"))
    sources = read_sources(DEFS_DIR)
    sources["masters/brand.yaml"] = text
    entity = build_model(sources).entity("brand")
    assert entity.sync.direction == "pull" and entity.permission("field_rep").actions == {"read"}
    assert entity.permission("admin").can("delete") and entity.owner is None


def test_merge3_joins_separate_changes_and_refuses_a_clash():
    old = "a\nb\nc\nd\n"
    assert merge3(old, "A\nb\nc\nd\n", "a\nb\nc\nD\n") == "A\nb\nc\nD\n"
    assert merge3(old, "a\nb\nc\nd\nmine\n", "a\nb\nc\nd\ntheirs\n") == "a\nb\nc\nd\ntheirs\nmine\n"
    assert merge3(old, "a\nB\nc\nd\n", "a\nB\nc\nd\n") == "a\nB\nc\nd\n"
    assert merge3(old, "a\nX\nc\nd\n", "a\nY\nc\nd\n") is None
