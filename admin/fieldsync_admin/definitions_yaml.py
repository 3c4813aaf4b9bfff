"""The Definitions view's forms as YAML edits (pure: text in, text out; no Flask).

"Add a field" and "new entity" produce the same YAML an analyst would write, so the change is
reviewed as a diff, planned and applied exactly like an edit in the YAML editor. A field is
inserted as text at the end of the entity's `fields:` block (comments and layout of the rest
of the file are kept); only when the file's layout defeats that (a flow-style mapping, say)
the file is re-dumped with PyYAML, which loses its comments.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from dataclasses import dataclass, field as dc_field
from typing import Any, Mapping

import yaml

from fieldsync.defs.model import ENCRYPTION_MODES, FIELD_TYPES, SYSTEM_COLUMNS

__all__ = ["FieldSpec", "FormError", "add_field", "entity_file", "new_entity_text"]

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_ .,/-]*$")
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null", "~"}


class FormError(ValueError):
    """A form value that cannot become a definition (shown to the user; nothing is changed)."""


@dataclass
class FieldSpec:
    """One field as the forms collect it (empty values are left out of the YAML)."""

    name: str
    type: str
    required: bool = False
    label: str = ""
    description: str = ""
    max_length: int | None = None
    min_length: int | None = None
    minimum: Any = None
    maximum: Any = None
    pattern: str = ""
    precision: int | None = None
    scale: int | None = None
    values: list[str] = dc_field(default_factory=list)
    to: str = ""
    encryption: str = "plain"
    phi: bool = False

    def check(self) -> None:
        if not NAME.match(self.name or ""):
            raise FormError(f"{self.name!r} is not a valid field name (a lower case letter, then letters, "
                            "digits or _)")
        if self.name in SYSTEM_COLUMNS or self.name.startswith("fs_"):
            raise FormError(f"{self.name!r} is reserved for the platform's own columns")
        if self.type not in FIELD_TYPES:
            raise FormError(f"{self.type!r} is not a field type ({', '.join(FIELD_TYPES)})")
        if self.encryption not in ENCRYPTION_MODES:
            raise FormError(f"{self.encryption!r} is not an encryption mode ({', '.join(ENCRYPTION_MODES)})")

    def body(self) -> dict[str, Any]:
        """The field's mapping, in the order the example definitions write keys."""
        body: dict[str, Any] = {"type": self.type}
        if self.type == "ref":
            body["to"] = self.to
        if self.type == "enum":
            body["values"] = list(self.values)
        if self.required:
            body["required"] = True
        for key in ("max_length", "min_length", "minimum", "maximum", "precision", "scale"):
            value = getattr(self, key)
            if value is not None and value != "":
                body[key] = value
        for key in ("pattern", "label", "description"):
            if getattr(self, key):
                body[key] = getattr(self, key)
        return body

    def policy(self) -> dict[str, Any] | None:
        """The field's encryption policy, or None when it is plain and not PHI."""
        if self.encryption == "plain" and not self.phi:
            return None
        policy: dict[str, Any] = {"mode": self.encryption}
        if self.phi:
            policy["phi"] = True
        return policy


def scalar(value: Any) -> str:
    """A YAML scalar for `value`: plain when unambiguous, else double-quoted (JSON's escapes are
    valid YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, Decimal)):
        return str(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_WORDS and text == text.strip() \
            and ": " not in text and " #" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _lines(mapping: Mapping[str, Any], indent: int, step: int) -> list[str]:
    out = []
    pad = " " * indent
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.append(f"{pad}{key}:")
            out.extend(_lines(value, indent + step, step))
        elif isinstance(value, (list, tuple)):
            out.append(f"{pad}{key}: [{', '.join(scalar(v) for v in value)}]")
        else:
            out.append(f"{pad}{key}: {scalar(value)}")
    return out


def _block(lines: list[str], start: int, indent: int) -> tuple[int, int | None]:
    """The end (exclusive, after its last content line) of the block opened at `start` whose
    content is indented more than `indent`, and the indentation of its first entry."""
    end, child = start + 1, None
    for i in range(start + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped or stripped.startswith("#"):
            continue
        depth = len(lines[i]) - len(lines[i].lstrip(" "))
        if depth <= indent:
            break
        if child is None:
            child = depth
        end = i + 1
    return end, child


def _find_key(lines: list[str], key: str, indent: int, start: int = 0, stop: int | None = None) -> int | None:
    pattern = re.compile(rf"^ {{{indent}}}{re.escape(key)}:\s*(#.*)?$")
    for i in range(start, len(lines) if stop is None else stop):
        if pattern.match(lines[i]):
            return i
    return None


def _insert_entry(text: str, path: tuple[str, str | None], name: str, body: Mapping[str, Any]) -> str | None:
    """`text` with `name: body` appended to the block at `path` (a top-level key, optionally one
    key below it), the block created at the end of the file when missing; None when the layout
    is not one this can edit safely."""
    lines = text.split("\n")
    top, sub = path
    at = _find_key(lines, top, 0)
    if at is None:
        entry = {top: {sub: {name: body}} if sub else {name: body}}
        body_lines = _lines(entry, 0, 2)
        while lines and lines[-1] == "":
            lines.pop()
        return "\n".join(lines + body_lines) + "\n"
    end, child = _block(lines, at, 0)
    if sub is not None:
        if child is None:
            return None
        inner = _find_key(lines, sub, child, at + 1, end)
        if inner is None:
            new = _lines({sub: {name: body}}, child, child)
            return "\n".join(lines[:end] + new + lines[end:])
        end, grandchild = _block(lines, inner, child)
        step = (grandchild - child) if grandchild else child
        indent = grandchild or child * 2
    else:
        step = child or 2
        indent = child or 2
    new = _lines({name: body}, indent, step)
    return "\n".join(lines[:end] + new + lines[end:])


def entity_file(sources: Mapping[str, str], entity: str) -> str | None:
    """The definition file (relative path) that defines the top-level entity `entity`."""
    for rel in ("masters/" + entity + ".yaml", "transactions/" + entity + ".yaml",
                "masters/" + entity + ".yml", "transactions/" + entity + ".yml"):
        if rel in sources:
            return rel
    return None


def add_field(text: str, spec: FieldSpec) -> str:
    """The entity file `text` with `spec` added to its fields (and its encryption policy);
    FormError when the file already has that field or cannot be read."""
    spec.check()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FormError(f"the entity file is not valid YAML; fix it in the YAML editor first ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("fields"), dict):
        raise FormError("the entity file has no fields mapping; edit it in the YAML editor")
    if spec.name in data["fields"]:
        raise FormError(f"the entity already has a field {spec.name!r}")
    policy = spec.policy()
    edited = _insert_entry(text, ("fields", None), spec.name, spec.body())
    if edited is not None and policy is not None:
        edited = _insert_entry(edited, ("encryption", "fields"), spec.name, policy)
    if edited is not None and _added_as_meant(edited, data, spec, policy):
        return edited
    # the layout defeats text insertion: round trip (comments are lost)
    data["fields"][spec.name] = spec.body()
    if policy is not None:
        encryption = data.setdefault("encryption", {}) or {}
        data["encryption"] = encryption
        encryption.setdefault("fields", {})[spec.name] = policy
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)


def _added_as_meant(edited: str, before: dict, spec: FieldSpec, policy: dict | None) -> bool:
    try:
        after = yaml.safe_load(edited)
    except yaml.YAMLError:
        return False
    expected = dict(before)
    expected["fields"] = {**before["fields"], spec.name: spec.body()}
    if policy is not None:
        encryption = dict(before.get("encryption") or {})
        encryption["fields"] = {**(encryption.get("fields") or {}), spec.name: policy}
        expected["encryption"] = encryption
    return after == json.loads(json.dumps(expected))


def new_entity_text(name: str, kind: str, fields: list[FieldSpec], *, label: str = "", description: str = "",
                    roles: tuple[str, ...] = (), owner_role: str | None = None) -> str:
    """The YAML of a new entity with the defaults it needs to be usable at once.

    A transaction gets an owner field `rep_id` (the creating user's id, filled by the server),
    `owner_role` may read, create and update its own rows (and sync them both ways, scoped to
    them); a master syncs down to every device (server-owned, pull only). Every role gets read,
    `admin` every action; the analyst refines them with the rule forms (definitions_rules.py) or
    in the YAML editor."""
    if not NAME.match(name or "") or name.startswith("fs_"):
        raise FormError(f"{name!r} is not a valid entity name (a lower case letter, then letters, digits or _; "
                        "not fs_)")
    if kind not in ("master", "transaction"):
        raise FormError("the kind is master or transaction")
    if not fields:
        raise FormError("a new entity needs at least one field")
    owner = "rep_id" if kind == "transaction" else None
    names = [f.name for f in fields]
    for f in fields:
        f.check()
    if len(set(names)) != len(names):
        raise FormError("two fields have the same name")
    if owner in names:
        raise FormError(f"{owner} is added for you (the owner of a transaction); choose another name")
    doc: dict[str, Any] = {"entity": name, "kind": kind, "label": label or name.replace("_", " ").capitalize()}
    if description:
        doc["description"] = description
    field_map: dict[str, Any] = {}
    if owner:
        doc["owner"] = owner
        field_map[owner] = {"type": "string", "required": True, "max_length": 64,
                            "description": "User id of the creator; set by the server from the token on create."}
    field_map.update({f.name: f.body() for f in fields})
    doc["fields"] = field_map
    policies = {f.name: f.policy() for f in fields if f.policy() is not None}
    if policies:
        doc["encryption"] = {"fields": policies}
    permissions: dict[str, Any] = {}
    for role in roles:
        if role == "admin":
            permissions[role] = {"actions": ["read", "create", "update", "delete"]}
        elif owner and role == owner_role:
            permissions[role] = {"actions": ["read", "create", "update"], "editable": names,
                                 "row_filter": f"{owner} == $user.id"}
        else:
            permissions[role] = {"actions": ["read"]}
    if permissions:
        doc["permissions"] = permissions
    if owner:
        doc["sync"] = {"direction": "both", "scope": f"{owner} == $user.id", "conflict": "last_write_wins"}
    else:
        doc["sync"] = {"direction": "pull", "conflict": "server_wins"}
    return "\n".join(_lines(doc, 0, 2)) + "\n"
