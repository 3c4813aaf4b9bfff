"""The rule forms of the Definitions view as YAML edits (pure: text in, text out; no Flask).

The sync rule, permissions and encryption policies of a top-level entity are edited as forms
that produce the same YAML an analyst would write. Each change is a set of (key path, new value
or None to remove) pairs; each is written as text over just that entry (`sync: window:`,
`permissions: supervisor: actions:`), so the rest of the file — comments included — stays byte
for byte. The edited text is parsed back and compared with the intended data; only when the
layout defeats the text edit (a flow-style mapping, say) the file is re-dumped with PyYAML,
which loses its comments.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from fieldsync.defs.model import ENCRYPTION_MODES

from fieldsync_admin.definitions_yaml import FormError, _block, _lines

__all__ = ["ACTIONS", "CONFLICTS", "DIRECTIONS", "Edit", "apply_edits", "encryption_edits", "entity_data",
           "permission_edits", "sync_edits"]

# the meta-schema's enums (platform/fieldsync/defs/meta_schema.json), in its order
DIRECTIONS = ("pull", "push", "both", "none")
CONFLICTS = ("server_wins", "last_write_wins", "field_merge", "reject_stale")
ACTIONS = ("read", "create", "update", "delete")
SYNC_KEYS = ("direction", "scope", "window", "window_field", "conflict", "priority")
PERMISSION_KEYS = ("actions", "visible", "editable", "row_filter", "break_glass")
WINDOW = re.compile(r"^[1-9][0-9]*[dwm]$")
# bounds the meta-schema leaves open: a window beyond timedelta's range, or a priority no column
# holds, would validate and fail later (in sync), so the form keeps them sane
MAX_WINDOW_DAYS = 36500
MAX_PRIORITY = 1_000_000


@dataclass(frozen=True)
class Edit:
    """Set the entry at `path` (keys from the top of the file) to `value`; None removes it."""

    path: tuple[str, ...]
    value: Any


def entity_data(text: str) -> dict:
    """The parsed entity file; FormError when it is not a YAML mapping."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FormError(f"the entity file is not valid YAML; fix it in the YAML editor first ({exc})") from None
    if not isinstance(data, dict):
        raise FormError("the entity file is not a mapping; edit it in the YAML editor")
    return data


def _clean(value: str, key: str) -> str:
    if "\x00" in value:
        raise FormError(f"{key}: NUL characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FormError(f"{key}: the text holds a character UTF-8 cannot store (a lone surrogate)") from None
    return value.strip()


# -- the forms' values as edits -------------------------------------------------------------------

def sync_edits(data: Mapping, form: Mapping[str, str], *, kind: str) -> list[Edit]:
    """The edits that make the file's `sync:` block say what the sync form says (one per key that
    changed; empty values remove the key, so the platform's default applies)."""
    current = data.get("sync") if isinstance(data.get("sync"), dict) else {}
    wanted: dict[str, Any] = {}
    direction = _clean(form.get("direction", ""), "direction")
    if direction and direction not in DIRECTIONS:
        raise FormError(f"direction: {direction!r} is not one of {', '.join(DIRECTIONS)}")
    conflict = _clean(form.get("conflict", ""), "conflict")
    if conflict and conflict not in CONFLICTS:
        raise FormError(f"conflict: {conflict!r} is not one of {', '.join(CONFLICTS)}")
    window = _clean(form.get("window", ""), "window").replace(" ", "")
    if window and not WINDOW.match(window):
        raise FormError(f"window: {window!r} is not a period such as 90d, 12w or 6m (a whole number and d, w or m)")
    if window and int(window[:-1]) * {"d": 1, "w": 7, "m": 30}[window[-1]] > MAX_WINDOW_DAYS:
        raise FormError(f"window: {window} is more than {MAX_WINDOW_DAYS} days (100 years); leave it empty for "
                        "no window")
    if window and kind != "transaction":
        raise FormError("window: only transactions have a sync window")
    window_field = _clean(form.get("window_field", ""), "window_field")
    if window_field and not window:
        raise FormError("window field: a window field needs a window")
    priority_raw = _clean(form.get("priority", ""), "priority")
    priority = None
    if priority_raw:
        try:
            priority = int(priority_raw)
        except ValueError:
            raise FormError(f"priority: {priority_raw!r} is not a whole number") from None
        if not 0 <= priority <= MAX_PRIORITY:
            raise FormError(f"priority: lower numbers sync first; a whole number from 0 to {MAX_PRIORITY}")
    values = {"direction": direction, "scope": _clean(form.get("scope", ""), "scope"), "window": window,
              "window_field": window_field, "conflict": conflict, "priority": priority}
    for key in SYNC_KEYS:
        if values[key] not in ("", None):
            wanted[key] = values[key]
    edits = [Edit(("sync", key), wanted.get(key)) for key in SYNC_KEYS if current.get(key) != wanted.get(key)]
    if not wanted:
        return [Edit(("sync",), None)] if "sync" in data else []
    return edits


def _field_list(form, key: str, fields: tuple[str, ...]) -> list[str] | None:
    """A visible/editable list: None (omitted: all fields) when "all" is ticked."""
    if form.get(f"{key}_all"):
        return None
    chosen = form.getlist(key) if hasattr(form, "getlist") else list(form.get(key) or [])
    unknown = [c for c in chosen if c not in fields]
    if unknown:
        raise FormError(f"{key.split('_')[0]}: {', '.join(unknown)} is not a field of the entity")
    return [f for f in fields if f in chosen]


def _compared(spec: Mapping, key: str) -> Any:
    """A permission key's value as it means: lists as sets, break_glass False when absent."""
    value = spec.get(key)
    if key == "break_glass":
        return bool(value)
    if key in ("actions", "visible", "editable") and value is not None:
        return frozenset(value)
    return value


def permission_edits(data: Mapping, form, *, roles: tuple[str, ...], fields: tuple[str, ...]) -> list[Edit]:
    """The edits that make the file's `permissions:` say what the permissions form says: per role
    of roles.yaml its actions (none: the role is removed, it may do nothing), visible and editable
    fields, row filter and break-glass grant. Roles whose permission did not change are left as
    written; in a changed role only the keys that changed are rewritten."""
    current = data.get("permissions") if isinstance(data.get("permissions"), dict) else {}
    wanted: dict[str, dict] = {}
    for role in roles:
        actions = form.getlist(f"actions_{role}") if hasattr(form, "getlist") else form.get(f"actions_{role}", [])
        bad = [a for a in actions if a not in ACTIONS]
        if bad:
            raise FormError(f"{role}: {', '.join(bad)} is not an action ({', '.join(ACTIONS)})")
        if not actions:
            continue
        spec: dict[str, Any] = {"actions": [a for a in ACTIONS if a in actions]}
        visible = _field_list(form, f"visible_{role}", fields)
        editable = _field_list(form, f"editable_{role}", fields)
        if visible is not None:
            spec["visible"] = visible
        if editable is not None:
            spec["editable"] = editable
        row_filter = _clean(form.get(f"row_filter_{role}", ""), f"{role} row filter")
        if row_filter:
            spec["row_filter"] = row_filter
        if form.get(f"break_glass_{role}"):
            if "read" not in spec["actions"]:
                raise FormError(f"{role}: break-glass widens reads; the role needs the read action")
            spec["break_glass"] = True
        wanted[role] = spec
    edits: list[Edit] = []
    for role in list(current) + [r for r in wanted if r not in current]:
        if role not in roles:
            continue        # not a role of roles.yaml: the loader reports it; the form leaves it alone
        old, new = current.get(role), wanted.get(role)
        if old is None or new is None or not isinstance(old, dict):
            if old != new:
                edits.append(Edit(("permissions", role), new))
            continue
        edits.extend(Edit(("permissions", role, key), new.get(key)) for key in PERMISSION_KEYS
                     if _compared(old, key) != _compared(new, key))
    return edits


def encryption_edits(data: Mapping, form: Mapping[str, str], *, fields: tuple[str, ...]) -> list[Edit]:
    """The edits that make `encryption: fields:` say what the encryption form says: per field its
    mode (`mode_<field>`) and PHI flag (`phi_<field>`); a plain, non-PHI field has no policy."""
    encryption = data.get("encryption") if isinstance(data.get("encryption"), dict) else {}
    current = encryption.get("fields") if isinstance(encryption.get("fields"), dict) else {}
    edits = []
    for name in fields:
        if f"mode_{name}" not in form:
            continue        # not in the posted form (the page posts every field): left as it is
        mode = _clean(form.get(f"mode_{name}", "plain"), f"{name} mode") or "plain"
        if mode not in ENCRYPTION_MODES:
            raise FormError(f"{name}: {mode!r} is not an encryption mode ({', '.join(ENCRYPTION_MODES)})")
        phi = bool(form.get(f"phi_{name}"))
        if phi and mode == "plain":
            raise FormError(f"{name}: a PHI field must be encrypted (choose encrypt, deterministic or blind_index)")
        new: dict[str, Any] | None = None
        if mode != "plain" or phi:
            new = {"mode": mode, **({"phi": True} if phi else {})}
        old = current.get(name)
        old_norm = None if not isinstance(old, dict) or (old.get("mode", "plain") == "plain" and not old.get("phi")) \
            else {"mode": old.get("mode"), "phi": bool(old.get("phi"))}
        new_norm = None if new is None else {"mode": mode, "phi": phi}
        if old_norm == new_norm:
            continue
        if isinstance(old, dict) and new is not None:
            for key in ("mode", "phi"):
                if old.get(key, False if key == "phi" else None) != new.get(key, False if key == "phi" else None):
                    edits.append(Edit(("encryption", "fields", name, key), new.get(key)))
        else:
            edits.append(Edit(("encryption", "fields", name), new))
    return edits


# -- writing edits as text ------------------------------------------------------------------------

def _key_line(lines: list[str], key: str, indent: int, start: int, stop: int) -> int | None:
    pattern = re.compile(rf"^ {{{indent}}}{re.escape(key)}:(\s|$)")
    for i in range(start, stop):
        if pattern.match(lines[i]):
            return i
    return None


def _locate(lines: list[str], path: tuple[str, ...]) -> tuple[int, int, int, int | None] | None:
    """(first line, end, indent, indent of its entries) of the entry at `path`; None when absent."""
    start, stop, indent = 0, len(lines), 0
    found = None
    for depth, key in enumerate(path):
        at = _key_line(lines, key, indent, start, stop)
        if at is None:
            return None
        end, child = _block(lines, at, indent)
        found = (at, end, indent, child)
        if depth < len(path) - 1:
            if child is None:
                return None
            start, stop, indent = at + 1, end, child
    return found


def _step(lines: list[str]) -> int:
    """The file's indentation step (the indent of the first nested line; 2 when none)."""
    for line in lines:
        if line.strip() and not line.lstrip().startswith("#") and line.startswith(" "):
            return len(line) - len(line.lstrip(" "))
    return 2


def _render(key: str, value: Any, indent: int, step: int) -> list[str]:
    """`key: value` as YAML lines; a sync window (90d) stays plain, as people write it."""
    if isinstance(value, str) and WINDOW.match(value):
        return [f"{' ' * indent}{key}: {value}"]
    return _lines({key: value}, indent, step)


def _set_text(text: str, edit: Edit) -> str | None:
    """`text` with `edit` written over just its entry; None when the layout is not one this edits."""
    lines = text.split("\n")
    step = _step(lines)
    found = _locate(lines, edit.path)
    key = edit.path[-1]
    if found is not None:
        at, end, indent, _child = found
        if ":" in lines[at] and lines[at].split(":", 1)[1].strip().startswith(("{", "[", "&", "*", "|", ">")) \
                and isinstance(edit.value, Mapping):
            return None
        new = [] if edit.value is None else _render(key, edit.value, indent, step)
        lines[at:end] = new
        if edit.value is None and len(edit.path) > 1:
            parent = _locate(lines, edit.path[:-1])
            if parent is not None and parent[3] is None:     # the parent mapping is empty now
                return _set_text("\n".join(lines), Edit(edit.path[:-1], None))
        return "\n".join(lines)
    if edit.value is None:
        return text
    # absent: add it at the end of its parent (the parent created when missing)
    if len(edit.path) == 1:
        while lines and lines[-1] == "":
            lines.pop()
        return "\n".join(lines + _render(key, edit.value, 0, step)) + "\n"
    parent = _locate(lines, edit.path[:-1])
    if parent is None:
        return _set_text(text, Edit(edit.path[:-1], {key: edit.value}))
    at, end, indent, child = parent
    if lines[at].split(":", 1)[1].split("#", 1)[0].strip():
        return None                                       # a flow mapping or scalar: not ours to edit
    new = _render(key, edit.value, child if child is not None else indent + step, step)
    lines[end:end] = new
    return "\n".join(lines)


def _set_data(data: dict, edit: Edit) -> None:
    """`edit` applied to parsed data, as _set_text applies it to the text."""
    nodes = [data]
    for key in edit.path[:-1]:
        if not isinstance(nodes[-1].get(key), dict):
            nodes[-1][key] = {}
        nodes.append(nodes[-1][key])
    if edit.value is not None:
        nodes[-1][edit.path[-1]] = copy.deepcopy(edit.value)
        return
    nodes[-1].pop(edit.path[-1], None)
    # an emptied mapping goes too (an empty `fields:` or `permissions:` is null, not a mapping)
    for depth in range(len(nodes) - 1, 0, -1):
        if nodes[depth]:
            break
        nodes[depth - 1].pop(edit.path[depth - 1])


def apply_edits(text: str, edits: list[Edit]) -> str:
    """The entity file `text` with `edits` written as text (the rest kept byte for byte), or
    re-dumped with PyYAML when the layout defeats that; FormError when the file is not YAML."""
    data = entity_data(text)
    expected = copy.deepcopy(data)
    for edit in edits:
        _set_data(expected, edit)
    edited: str | None = text
    for edit in edits:
        edited = _set_text(edited, edit) if edited is not None else None
    if edited is not None:
        try:
            if yaml.safe_load(edited) == expected:
                return edited
        except yaml.YAMLError:
            pass
    return yaml.safe_dump(expected, sort_keys=False, allow_unicode=True, default_flow_style=None)
