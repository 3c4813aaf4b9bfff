"""Definition changes an analyst makes, as edits of a copy of the YAML files: what scenario (1)
of issue 12 §4 applies (an optional field on `retailer`, a new transaction entity), for the
tests that apply them with `fieldsync apply` rather than through the admin UI."""

from __future__ import annotations

import shutil
from pathlib import Path

__all__ = ["SURVEY", "add_optional_field", "add_survey_entity", "changed_copy", "raise_schema_version"]

# a new transaction entity a field rep creates on the device and pushes
SURVEY = """entity: survey
kind: transaction
label: Survey
description: A short questionnaire a rep fills in at a retailer.
owner: rep_id
fields:
  rep_id:
    type: string
    required: true
    max_length: 64
  score:
    type: integer
    minimum: 0
    maximum: 10
permissions:
  field_rep:
    actions: [read, create, update]
    editable: [score]
    row_filter: "rep_id == $user.id"
  admin:
    actions: [read, create, update, delete]
sync:
  direction: both
  scope: "rep_id == $user.id"
  conflict: last_write_wins
"""


def changed_copy(defs: Path, target: Path) -> Path:
    """A copy of the definitions directory `defs` to edit (the live one is what apply writes)."""
    shutil.copytree(defs, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if old not in text:
        raise AssertionError(f"{path}: {old!r} not found")
    path.write_text(text.replace(old, new, 1))


def raise_schema_version(defs: Path) -> int:
    """Raise app.yaml's schema_version by one (devices migrate when it rises); the new number."""
    text = (defs / "app.yaml").read_text()
    number = int(text.split("schema_version: ")[1].split()[0])
    _edit(defs / "app.yaml", f"schema_version: {number}", f"schema_version: {number + 1}")
    return number + 1


def add_optional_field(defs: Path, entity: str = "retailer", name: str = "email", *, kind: str = "masters",
                       max_length: int = 120) -> None:
    """An optional string field, first in the entity's `fields:`."""
    _edit(defs / kind / f"{entity}.yaml", "fields:\n",
          f"fields:\n  {name}:\n    type: string\n    max_length: {max_length}\n")


def add_survey_entity(defs: Path) -> None:
    """The `survey` transaction entity (SURVEY)."""
    (defs / "transactions" / "survey.yaml").write_text(SURVEY)
