"""YAML definitions -> validated, immutable `Model`, with every error located.

`build_model(sources)` is pure: it takes the files' texts keyed by their path relative to the
definitions directory and either returns a Model or raises `DefinitionErrors` listing every
problem found in one pass, each with file, line, column and key path. `load_model(directory)`
reads the files and calls it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import jsonschema
import yaml

from fieldsync.defs import expr as ex
from fieldsync.defs.access import child_permission
from fieldsync.defs.model import (
    BUILTIN_USER_ATTRIBUTES, SYSTEM_COLUMNS, Entity, Field, Location, Model, Permission,
    Role, SyncRule, UserAttribute,
)
from fieldsync.defs.patterns import compile_pattern, subset_problem
from fieldsync.defs.values import normalize_value
from fieldsync.errors import DefinitionErrors, ExprError, ValueProblem

# libyaml's C parser when PyYAML was built with it: the same nodes and marks, ~10x faster.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

KEY_ORDER_KINDS = {"masters": "master", "transactions": "transaction"}
NUMERIC = ("integer", "decimal")
TEXTUAL = ("string", "text")
MEDIA_MAX_BYTES_CEILING = 5 * 1024 ** 3
# a MIME type as a media field's content_types lists it: type/subtype or type/* (RFC 6838 names)
MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/(?:\*|[a-z0-9][a-z0-9!#$&^_.+-]{0,126})")
EXPRESSION_COLUMNS = ("id", "created_at", "updated_at")


@dataclass(frozen=True, slots=True)
class DefinitionError:
    """One problem in the definitions."""

    file: str
    line: int
    column: int
    path: str          # dotted key path, e.g. fields.unit_price.precision
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


def meta_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every definition file is checked against."""
    text = resources.files("fieldsync.defs").joinpath("meta_schema.json").read_text("utf-8")
    return json.loads(text)


# ---------------------------------------------------------------------------------------------
# YAML with locations

class _Located:
    """A parsed file: plain data plus the location of every key path."""

    def __init__(self, file: str, data: Any, keys: dict[tuple, Location], values: dict[tuple, tuple]):
        self.file = file
        self.data = data
        self.keys = keys        # path -> location of the key (or of the item, for list items)
        self.values = values    # path -> (location of the value, scalar style)

    def at(self, path: Iterable) -> Location:
        path = tuple(path)
        while path:
            if path in self.keys:
                return self.keys[path]
            path = path[:-1]
        return Location(self.file, 1, 1)


def _parse_yaml(file: str, text: str, errors: list[DefinitionError]) -> _Located | None:
    try:
        node = yaml.compose(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        errors.append(DefinitionError(file, line, col, "", f"invalid YAML: {problem}"))
        return None
    if node is None:
        errors.append(DefinitionError(file, 1, 1, "", "the file is empty"))
        return None
    keys: dict[tuple, Location] = {}
    values: dict[tuple, tuple] = {}
    before = len(errors)
    try:
        _walk(file, node, (), keys, values, errors)
    except RecursionError:
        # an alias inside its own anchor (`&a [*a]`) makes the node graph a cycle; aliases of
        # aliases can expand beyond MAX_NODES
        errors.append(DefinitionError(file, 1, 1, "", "invalid YAML: an alias refers to the node that "
                                                      f"contains it, or aliases expand to more than {MAX_NODES} "
                                                      "keys and items"))
        return None
    if len(errors) > before:
        return None
    try:
        data = _plain(yaml.load(text, Loader=_YAML_LOADER))
    except _SCALAR_ERRORS as exc:
        # the composed nodes are fine, a scalar's value is not: a date like 2026-02-30, an
        # integer past int()'s 4300 digits, bad base64 under !!binary, `!!bool x` (KeyError),
        # `!!timestamp x` (AttributeError in PyYAML); or lists nested deeper than _plain recurses
        problem = "nested too deep" if isinstance(exc, RecursionError) else \
            getattr(exc, "problem", None) or f"a value YAML cannot read ({exc})"
        errors.append(DefinitionError(file, 1, 1, "", f"invalid YAML: {problem}"))
        return None
    return _Located(file, data, keys, values)


_SCALAR_ERRORS = (yaml.YAMLError, ValueError, TypeError, AttributeError, LookupError, OverflowError, RecursionError)


def _loc(file: str, node) -> Location:
    return Location(file, node.start_mark.line + 1, node.start_mark.column + 1)


# no definition file comes near this many keys and items; aliases of aliases can (a "billion
# laughs" file expands exponentially), and the walk below would never end
MAX_NODES = 50_000


def _walk(file, node, path, keys, values, errors) -> None:
    if len(values) >= MAX_NODES:
        raise RecursionError("too many nodes")
    values[path] = (_loc(file, node), getattr(node, "style", None))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, Location] = {}
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):   # `? [a, b]` or `{[1]: 2}`: no definition key is one
                errors.append(DefinitionError(file, k.start_mark.line + 1, k.start_mark.column + 1,
                                              ".".join(map(str, path)), "a key must be a plain value, not a "
                                              "list or a mapping"))
                continue
            key = k.value
            if key in seen:
                errors.append(DefinitionError(file, k.start_mark.line + 1, k.start_mark.column + 1,
                                              ".".join(map(str, path + (key,))),
                                              f"duplicate key (first at line {seen[key].line})"))
                continue
            seen[key] = _loc(file, k)
            keys[path + (key,)] = seen[key]
            _walk(file, v, path + (key,), keys, values, errors)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            keys[path + (i,)] = _loc(file, item)
            _walk(file, item, path + (i,), keys, values, errors)


def _plain(value: Any) -> Any:
    """YAML's dates and odd scalars -> JSON-like values the meta-schema can check."""
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, str) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


# ---------------------------------------------------------------------------------------------
# The builder

class _Builder:
    def __init__(self, sources: Mapping[str, str], label: str):
        self.sources = sources
        self.label = label.rstrip("/")
        self.errors: list[DefinitionError] = []
        schema = meta_schema()
        self.defs = schema["$defs"]
        self.validators = {
            kind: jsonschema.Draft202012Validator({"$ref": f"#/$defs/{kind}", "$defs": self.defs})
            for kind in ("entity", "roles", "app")
        }

    def display(self, rel: str) -> str:
        return f"{self.label}/{rel}" if self.label else rel

    def error(self, doc: _Located, path: Iterable, message: str, loc: Location | None = None) -> None:
        path = tuple(path)
        loc = loc or doc.at(path)
        self.errors.append(DefinitionError(doc.file, loc.line, loc.column,
                                           ".".join(str(p) for p in path), message))

    # -- schema ---------------------------------------------------------------------------------
    def check_schema(self, doc: _Located, kind: str) -> bool:
        """Report every meta-schema violation. Returns True when the file can still be checked
        for meaning: the broken parts are reported and then set aside (an unknown key dropped, a
        broken field kept by name only, a broken permission or sync key dropped), so one mistake
        neither hides the file's other errors nor cascades into errors in other files."""
        repairs: list[tuple[tuple, str]] = []
        recoverable = True
        for err in self.validators[kind].iter_errors(doc.data):
            path = tuple(err.absolute_path)
            if err.validator == "additionalProperties" and isinstance(err.instance, dict):
                allowed = set(err.schema.get("properties", {}))
                for key in err.instance:
                    if key not in allowed:
                        hint = f" (allowed: {', '.join(sorted(allowed))})" if allowed else ""
                        if kind == "entity" and key == "children" and len(path) == 2 and path[0] == "children":
                            self.error(doc, path + (key,), "a child collection cannot have children of its own: "
                                       "the definition language allows one level of children; define the "
                                       "grandchild as a child of its own entity, or as an entity with a ref "
                                       "field to this child")
                        else:
                            self.error(doc, path + (key,), f"unknown key{hint}")
                        repairs.append((path + (key,), "drop"))
                continue
            if err.validator == "required":
                self.error(doc, path, err.message.replace("is a required property", "is required"))
            elif err.validator == "propertyNames":
                bad = err.instance
                path = path + (bad,) if isinstance(bad, str) else path
                self.error(doc, path, f"{bad!r} is not a valid name (lower case letter, then letters, digits, _)")
            elif err.validator in ("oneOf", "anyOf"):
                self.error(doc, path, f"{err.instance!r} is not valid here: "
                                      f"{err.schema.get('description', '').split('.')[0].lower()}")
            else:
                self.error(doc, path, err.message)
            repair = _repair_for(kind, path, err.validator == "propertyNames")
            if repair is None:
                recoverable = False
            else:
                repairs.append(repair)
        if not repairs:
            return recoverable
        if not recoverable:
            return False
        for path, action in sorted(repairs, key=lambda r: len(r[0]), reverse=True):
            parent = doc.data
            try:
                for key in path[:-1]:
                    parent = parent[key]
            except (KeyError, IndexError, TypeError):
                continue    # an enclosing part was already set aside
            if isinstance(parent, dict) and path[-1] in parent:
                if action == "placeholder":
                    parent[path[-1]] = {"type": "json"}
                else:
                    parent.pop(path[-1])
        return not any(True for _ in self.validators[kind].iter_errors(doc.data))

    # -- files ----------------------------------------------------------------------------------
    def build(self) -> Model:
        docs: dict[str, _Located] = {}
        for rel in sorted(self.sources):
            doc = _parse_yaml(self.display(rel), self.sources[rel], self.errors)
            if doc is not None:
                docs[rel] = doc

        app = self.build_app(docs.get("app.yaml"))
        roles, attributes = self.build_roles(docs.get("roles.yaml"))
        entity_docs: list[tuple[str, _Located]] = []
        for rel, doc in docs.items():
            parts = rel.split("/")
            if rel in ("app.yaml", "roles.yaml"):
                continue
            if len(parts) == 2 and parts[0] in KEY_ORDER_KINDS and parts[1].endswith((".yaml", ".yml")):
                if self.check_schema(doc, "entity"):
                    entity_docs.append((KEY_ORDER_KINDS[parts[0]], doc))
            else:
                self.error(doc, (), "unexpected file: entities go in masters/ or transactions/, "
                                    "plus app.yaml and roles.yaml")
        for required in ("app.yaml", "roles.yaml"):
            if required not in self.sources:
                self.errors.append(DefinitionError(self.display(required), 1, 1, "",
                                                   "file is missing"))

        entities: list[Entity] = []
        sources_by_entity: dict[str, _Located] = {}
        # masters first, then transactions; files in name order; children after their parent
        entity_docs.sort(key=lambda kd: (kd[0] != "master", kd[1].file))
        for kind, doc in entity_docs:
            for entity in self.build_entity(kind, doc, {r.name for r in roles}, attributes):
                if entity.name in sources_by_entity:
                    first = sources_by_entity[entity.name]
                    self.error(doc, ("entity",) if entity.parent is None else ("children",),
                               f"duplicate entity name {entity.name!r} (also defined in {first.file})")
                    continue
                sources_by_entity[entity.name] = doc
                entities.append(entity)

        self.check_cross_references(entities, sources_by_entity)
        if self.errors:
            raise DefinitionErrors(self.errors)
        return Model(app=app["app"], schema_version=app["schema_version"], title=app.get("title", ""),
                     description=app.get("description", "").strip(), entities=tuple(entities),
                     roles=tuple(roles), attributes=tuple(attributes),
                     sources=tuple(sorted(self.sources)))

    def build_app(self, doc: _Located | None) -> dict[str, Any]:
        if doc is None or not self.check_schema(doc, "app"):
            return {"app": "app", "schema_version": 1}
        return doc.data

    def build_roles(self, doc: _Located | None) -> tuple[list[Role], list[UserAttribute]]:
        if doc is None or not self.check_schema(doc, "roles"):
            return [], []
        roles = [Role(name, (spec or {}).get("description", "")) for name, spec in doc.data["roles"].items()]
        attributes = []
        for name, spec in (doc.data.get("attributes") or {}).items():
            if any(a.name == name for a in BUILTIN_USER_ATTRIBUTES):
                self.error(doc, ("attributes", name), f"$user.{name} is built in and cannot be redefined")
                continue
            if spec["type"] == "list" and "items" not in spec:
                self.error(doc, ("attributes", name), "a list attribute needs items")
            if spec["type"] != "list" and "items" in spec:
                self.error(doc, ("attributes", name, "items"), "only list attributes have items")
            attributes.append(UserAttribute(name, spec["type"], spec.get("items"), spec.get("description", "")))
        return roles, attributes

    # -- entities -------------------------------------------------------------------------------
    def build_entity(self, kind: str, doc: _Located, role_names: set[str],
                     attributes: list[UserAttribute]) -> list[Entity]:
        data = doc.data
        name = data["entity"]
        if data["kind"] != kind:
            folder = "masters" if data["kind"] == "master" else "transactions"
            self.error(doc, ("kind",), f"a {data['kind']} belongs in {folder}/, not here")
        if name.startswith("fs_"):
            self.error(doc, ("entity",), "names starting with fs_ are reserved for the platform's own tables")
        stem = Path(doc.file).stem
        if stem != name:
            self.error(doc, ("entity",), f"entity {name!r} must be defined in a file named {name}.yaml")
        encryption = data.get("encryption") or {}
        policies = encryption.get("fields") or {}
        fields = self.build_fields(doc, ("fields",), data["fields"], policies)
        field_names = {f.name for f in fields}
        for fname in policies:
            if fname not in field_names:
                self.error(doc, ("encryption", "fields", fname), f"encryption policy for unknown field {fname!r}")
        subject = encryption.get("subject")
        if subject is not None and subject not in field_names:
            self.error(doc, ("encryption", "subject"), f"unknown field {subject!r}")
        owner = data.get("owner")
        if owner is not None:
            if owner not in field_names:
                self.error(doc, ("owner",), f"unknown field {owner!r}")
            elif next(f for f in fields if f.name == owner).type != "string":
                self.error(doc, ("owner",), "the owner field must be a string (it holds a user id)")
        permissions = self.build_permissions(doc, data.get("permissions") or {}, fields, role_names, attributes)
        sync = self.build_sync(doc, kind, data.get("sync") or {}, fields, attributes)
        children_spec = data.get("children") or {}
        child_names = tuple(spec["entity"] for spec in children_spec.values())
        entity = Entity(
            name=name, kind=kind, fields=fields, label=data.get("label") or _title(name),
            description=(data.get("description") or "").strip(), children=child_names, owner=owner,
            subject=subject, renamed_from=_names(data.get("renamed_from")), permissions=permissions,
            sync=sync, location=doc.at(("entity",)),
        )
        result = [entity]
        for collection, spec in children_spec.items():
            path = ("children", collection)
            parent_field = f"{name}_id"
            child_fields = self.build_fields(doc, path + ("fields",), spec["fields"], {})
            if any(f.name == parent_field for f in child_fields):
                self.error(doc, path + ("fields", parent_field),
                           f"{parent_field} is added by the platform (the parent's id); remove it")
            parent_ref = Field(parent_field, "ref", label=_title(name), required=True, ref=name,
                               description=f"The {name} this {spec['entity']} belongs to.",
                               location=doc.at(path))
            child_fields = (parent_ref,) + tuple(f for f in child_fields if f.name != parent_field)
            result.append(Entity(
                name=spec["entity"], kind=kind, fields=child_fields,
                label=spec.get("label") or _title(spec["entity"]),
                description=(spec.get("description") or "").strip(), parent=name,
                parent_field=parent_field, collection=collection, renamed_from=_names(spec.get("renamed_from")),
                permissions=self.build_child_permissions(doc, path, spec.get("permissions") or {}, permissions,
                                                         child_fields, parent_field),
                sync=SyncRule(direction=sync.direction, conflict=sync.conflict, priority=sync.priority),
                location=doc.at(path),
            ))
        return result

    def build_fields(self, doc: _Located, path: tuple, specs: dict, policies: dict) -> tuple[Field, ...]:
        fields = []
        for fname, spec in specs.items():
            fpath = path + (fname,)
            if fname in SYSTEM_COLUMNS:
                self.error(doc, fpath, f"{fname!r} is a column the platform adds to every entity; "
                                       f"choose another name ({', '.join(SYSTEM_COLUMNS)} are reserved)")
                continue
            if fname.startswith("fs_"):
                self.error(doc, fpath, "field names starting with fs_ are reserved for the platform's own "
                                       "columns (blind indexes)")
                continue
            t = spec["type"]
            self.check_field_keys(doc, fpath, spec)
            policy = policies.get(fname) or {}
            mode = policy.get("mode", "plain")
            phi = bool(policy.get("phi", False))
            minimum = _number(spec.get("minimum"), doc, fpath + ("minimum",), self)
            maximum = _number(spec.get("maximum"), doc, fpath + ("maximum",), self)
            f = Field(
                name=fname, type=t, label=spec.get("label") or _title(fname),
                description=(spec.get("description") or "").strip(), required=bool(spec.get("required")),
                unique=bool(spec.get("unique")), minimum=minimum, maximum=maximum,
                min_length=spec.get("min_length"), max_length=spec.get("max_length"), pattern=spec.get("pattern"),
                precision=spec.get("precision"), scale=spec.get("scale"), values=tuple(spec.get("values") or ()),
                ref=spec.get("to"), renamed_from=_names(spec.get("renamed_from")), encryption=mode, phi=phi,
                max_bytes=spec.get("max_bytes"), content_types=tuple(spec.get("content_types") or ()),
                location=doc.at(fpath),
            )
            if minimum is not None and maximum is not None and minimum > maximum:
                self.error(doc, fpath + ("minimum",), f"minimum {minimum} is greater than maximum {maximum}")
            if f.min_length is not None and f.max_length is not None and f.min_length > f.max_length:
                self.error(doc, fpath + ("min_length",), "min_length is greater than max_length")
            if f.precision is not None and f.scale is not None and f.scale > f.precision:
                self.error(doc, fpath + ("scale",), f"scale {f.scale} is greater than precision {f.precision}")
            self.check_encryption(doc, fpath, f, policies)
            if "default" in spec:
                try:
                    default = normalize_value(f, spec["default"])
                except ValueProblem as exc:
                    self.error(doc, fpath + ("default",), f"default {spec['default']!r} {exc}")
                    default = None
                f = _replace(f, has_default=True, default=default)
            fields.append(f)
        return tuple(fields)

    def check_field_keys(self, doc: _Located, fpath: tuple, spec: dict) -> None:
        t = spec["type"]
        only = {
            "precision": ("decimal",), "scale": ("decimal",), "values": ("enum",), "to": ("ref",),
            "minimum": NUMERIC, "maximum": NUMERIC, "min_length": TEXTUAL, "max_length": TEXTUAL,
            "pattern": TEXTUAL, "max_bytes": ("media",), "content_types": ("media",),
        }
        for key, types in only.items():
            if key in spec and t not in types:
                self.error(doc, fpath + (key,), f"{key} applies to {' and '.join(types)} fields, not {t}")
        needs = {"decimal": ("precision", "scale"), "enum": ("values",), "ref": ("to",)}
        for key in needs.get(t, ()):
            if key not in spec:
                self.error(doc, fpath, f"a {t} field needs {key}")
        if "pattern" in spec:
            # devices validate with ECMA-262: only what Python and it read the same way
            problem = subset_problem(spec["pattern"])
            if problem is not None:
                self.error(doc, fpath + ("pattern",), problem)
            else:
                try:
                    compile_pattern(spec["pattern"])
                except re.error as exc:
                    self.error(doc, fpath + ("pattern",), f"invalid regular expression: {exc}")
        if t == "media":
            self.check_media_limits(doc, fpath, spec)
        if spec.get("unique") and t in ("json", "geopoint", "text"):
            self.error(doc, fpath + ("unique",), f"a {t} field cannot be unique")

    def check_media_limits(self, doc: _Located, fpath: tuple, spec: dict) -> None:
        """A media field's upload limits: a size one S3 POST can take, MIME types as `type/subtype`
        or `type/*` (lower case, as media/sniff.py compares them)."""
        size = spec.get("max_bytes")
        if isinstance(size, int) and size > MEDIA_MAX_BYTES_CEILING:
            self.error(doc, fpath + ("max_bytes",), f"max_bytes {size} is above {MEDIA_MAX_BYTES_CEILING} "
                                                    "(5 GiB, the most one S3 POST upload takes)")
        for i, kind in enumerate(spec.get("content_types") or ()):
            if not isinstance(kind, str) or not MIME_TYPE.fullmatch(kind):
                self.error(doc, fpath + ("content_types", i), f"{kind!r} is not a MIME type: write type/subtype "
                                                              "or type/* in lower case, e.g. image/jpeg or image/*")

    def check_encryption(self, doc: _Located, fpath: tuple, f: Field, policies: dict) -> None:
        if f.name not in policies:
            return
        epath = ("encryption", "fields", f.name)
        if f.phi and f.encryption == "plain":
            self.error(doc, epath + ("mode",), "a PHI field cannot be plain: PHI is never stored in plaintext")
        if f.type == "media" and f.encryption not in ("plain", "encrypt"):
            self.error(doc, epath + ("mode",), f"a media field is encrypted with mode encrypt, not {f.encryption} "
                                               "(its file is encrypted in the media store; nobody looks it up by value)")
        if f.encryption != "plain" and f.type == "ref":
            self.error(doc, epath + ("mode",), "a ref field cannot be encrypted (the server must join on it)")
        if f.unique and f.encryption in ("encrypt", "blind_index"):
            self.error(doc, epath + ("mode",), f"a unique field needs deterministic encryption, not {f.encryption}")

    def build_permissions(self, doc: _Located, specs: dict, fields: tuple[Field, ...], role_names: set[str],
                          attributes: list[UserAttribute]) -> tuple[Permission, ...]:
        names = {f.name for f in fields}
        result = []
        for role, spec in specs.items():
            path = ("permissions", role)
            if role not in role_names:
                self.error(doc, path, f"unknown role {role!r} (roles.yaml defines: {', '.join(sorted(role_names))})")
            for key in ("visible", "editable"):
                for i, fname in enumerate(spec.get(key) or ()):
                    if fname not in names:
                        self.error(doc, path + (key, i), f"unknown field {fname!r}")
            visible = tuple(spec["visible"]) if "visible" in spec else None
            editable = tuple(spec["editable"]) if "editable" in spec else None
            if visible is not None and editable is not None:
                for i, fname in enumerate(editable):
                    if fname in names and fname not in visible:
                        self.error(doc, path + ("editable", i), f"{fname!r} is editable but not visible")
            row_filter = self.build_expression(doc, path + ("row_filter",), spec.get("row_filter"), fields, attributes)
            break_glass = bool(spec.get("break_glass", False))
            if break_glass and "read" not in spec["actions"]:
                self.error(doc, path + ("break_glass",), "break_glass widens reads: the role needs the read action")
            result.append(Permission(role, frozenset(spec["actions"]), visible, editable, row_filter,
                                     spec.get("row_filter"), break_glass=break_glass))
        return tuple(result)

    def build_child_permissions(self, doc: _Located, path: tuple, specs: dict, parent: tuple[Permission, ...],
                                fields: tuple[Field, ...], parent_field: str) -> tuple[Permission, ...]:
        """A child's permissions: per role of the parent, `access.child_permission` with the
        visible/editable lists the child section declares for it (checked here)."""
        names = {f.name for f in fields}
        by_role = {p.role: p for p in parent}
        for role, spec in specs.items():
            rpath = path + ("permissions", role)
            if role not in by_role:
                self.error(doc, rpath, f"the parent grants role {role!r} nothing; a child's actions are its "
                                       f"parent's, so list the role under the parent's permissions first")
            for key in ("visible", "editable"):
                for i, fname in enumerate(spec.get(key) or ()):
                    if fname not in names:
                        self.error(doc, rpath + (key, i), f"unknown field {fname!r}")
        result = []
        for p in parent:
            perm = child_permission(p, tuple(f.name for f in fields), parent_field, specs.get(p.role))
            if p.role in specs and perm.visible is not None and perm.editable is not None:
                for i, fname in enumerate(perm.editable):
                    if fname in names and fname not in perm.visible:
                        key = "editable" if "editable" in specs[p.role] else "visible"
                        self.error(doc, path + ("permissions", p.role, key) + ((i,) if key == "editable" else ()),
                                   f"{fname!r} is editable but not visible")
            result.append(perm)
        return tuple(result)

    def build_sync(self, doc: _Located, kind: str, spec: dict, fields: tuple[Field, ...],
                   attributes: list[UserAttribute]) -> SyncRule:
        window_days = None
        if "window" in spec:
            if kind != "transaction":
                self.error(doc, ("sync", "window"), "only transactions have a sync window")
            text = spec["window"]
            window_days = int(text[:-1]) * {"d": 1, "w": 7, "m": 30}[text[-1]]
        window_field = spec.get("window_field")
        if window_field is not None:
            if "window" not in spec:
                self.error(doc, ("sync", "window_field"), "window_field needs a window")
            field = next((f for f in fields if f.name == window_field), None)
            if field is None:
                self.error(doc, ("sync", "window_field"), f"unknown field {window_field!r}")
            elif field.type not in ("date", "datetime"):
                self.error(doc, ("sync", "window_field"), f"{window_field!r} must be a date or datetime field")
        scope = self.build_expression(doc, ("sync", "scope"), spec.get("scope"), fields, attributes)
        return SyncRule(
            direction=spec.get("direction", "pull" if kind == "master" else "both"),
            scope=scope, scope_source=spec.get("scope"), window_days=window_days, window_field=window_field,
            conflict=spec.get("conflict", "server_wins" if kind == "master" else "last_write_wins"),
            priority=spec.get("priority", 100 if kind == "master" else 200),
        )

    def build_expression(self, doc: _Located, path: tuple, source: str | None, fields: tuple[Field, ...],
                         attributes: list[UserAttribute]) -> ex.Expr | None:
        if source is None:
            return None
        try:
            tree = ex.parse(source)
        except ExprError as exc:
            loc, style = doc.values.get(path, (doc.at(path), None))
            offset = 1 if style in ("'", '"') else 0
            self.error(doc, path, f"{exc.reason}: {source!r}",
                       Location(loc.file, loc.line, loc.column + offset + exc.position))
            return None
        by_name = {f.name: f for f in fields}
        attrs = {a.name: a for a in BUILTIN_USER_ATTRIBUTES + tuple(attributes)}
        ok = True
        for name in sorted(ex.field_names(tree)):
            f = by_name.get(name)
            if f is None and name not in EXPRESSION_COLUMNS:
                self.error(doc, path, f"unknown field {name!r} in {source!r}")
                ok = False
            elif f is not None and f.encryption in ("encrypt", "blind_index"):
                self.error(doc, path, f"field {name!r} is encrypted ({f.encryption}); expressions may use "
                                      f"plain or deterministic fields only")
                ok = False
        for name in sorted(ex.user_attributes(tree)):
            if name not in attrs:
                self.error(doc, path, f"unknown user attribute $user.{name} "
                                      f"(declare it under attributes in roles.yaml)")
                ok = False
        for node in _comparisons(tree):
            if node.op in ("in", "not in") and isinstance(node.right, ex.UserAttr):
                attr = attrs.get(node.right.name)
                if attr is not None and attr.type != "list":
                    self.error(doc, path, f"$user.{attr.name} is not a list; use == instead of {node.op}")
                    ok = False
            if node.op in ("in", "not in") and isinstance(node.right, (ex.Literal, ex.FieldRef)):
                self.error(doc, path, f"the right side of {node.op!r} must be a list or a list attribute")
                ok = False
        return tree if ok else None

    # -- across files ---------------------------------------------------------------------------
    def check_cross_references(self, entities: list[Entity], docs: dict[str, _Located]) -> None:
        names = {e.name for e in entities}
        for e in entities:
            doc = docs[e.name]
            for old in e.renamed_from:
                if old in names:
                    self.error(doc, ("renamed_from",), f"renamed_from {old!r} names an entity that still exists")
            for f in e.fields:
                if f.type == "ref" and f.ref not in names:
                    path = self.field_path(e, f.name) + ("to",)
                    self.error(doc, path, f"unknown entity {f.ref!r} (known: {', '.join(sorted(names))})")
                for old in f.renamed_from:
                    if e.has_field(old):
                        self.error(doc, self.field_path(e, f.name) + ("renamed_from",),
                                   f"renamed_from {old!r} names a field that still exists")
        # a cycle of required references means no record of them could ever be created first
        graph = {e.name: sorted({f.ref for f in e.fields if f.type == "ref" and f.required and f.ref in names})
                 for e in entities}
        for cycle in _cycles(graph):
            e = next(x for x in entities if x.name == cycle[0])
            fname = next(f.name for f in e.fields if f.type == "ref" and f.required and f.ref == cycle[1 % len(cycle)])
            self.error(docs[e.name], self.field_path(e, fname),
                       "required references form a cycle, so no record could be created first: "
                       + " -> ".join(cycle + [cycle[0]]) + " (make one of them optional)")

    @staticmethod
    def field_path(e: Entity, fname: str) -> tuple:
        if e.parent is None:
            return ("fields", fname)
        return ("children", e.collection, "fields", fname)


def _repair_for(kind: str, path: tuple, bad_name: bool) -> tuple[tuple, str] | None:
    """How to set aside the part of an entity file that failed the meta-schema, or None when the
    file's frame itself is broken (then only the schema errors are reported for it)."""
    if kind != "entity" or not path:
        return None
    if path[0] == "fields" and len(path) >= 2:
        return (path[:2], "drop" if bad_name else "placeholder")
    if path[0] == "children" and len(path) >= 4 and path[2] == "fields":
        return (path[:4], "drop" if bad_name else "placeholder")
    if path[0] == "children" and len(path) >= 2:
        return (path[:2], "drop")
    if path[0] in ("permissions", "sync") and len(path) >= 2:
        return (path[:2], "drop")
    if path[0] == "encryption" and len(path) >= 3 and path[1] == "fields":
        return (path[:3], "drop")
    if path[0] in ("encryption", "permissions", "children", "label", "description", "renamed_from", "owner"):
        return (path[:1], "drop")
    return None


def _comparisons(tree: ex.Expr):
    if isinstance(tree, (ex.And, ex.Or)):
        for item in tree.items:
            yield from _comparisons(item)
    elif isinstance(tree, ex.Not):
        yield from _comparisons(tree.item)
    elif isinstance(tree, ex.Compare):
        yield tree


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each elementary cycle once (by its smallest node), found by depth-first search."""
    found: list[list[str]] = []
    seen_keys: set[tuple] = set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in graph.get(node, ()):
            if nxt in stack:
                cycle = stack[stack.index(nxt):]
                i = cycle.index(min(cycle))
                key = tuple(cycle[i:] + cycle[:i])
                if key not in seen_keys:
                    seen_keys.add(key)
                    found.append(list(key))
            elif len(stack) < len(graph):
                visit(nxt, stack + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def _names(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _title(name: str) -> str:
    return name.replace("_", " ").capitalize()


def _number(value: Any, doc: _Located, path: tuple, builder: _Builder):
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    try:
        return Decimal(str(value))
    except Exception:
        builder.error(doc, path, f"{value!r} is not a number")
        return None


def _replace(f: Field, **changes) -> Field:
    from dataclasses import replace
    return replace(f, **changes)


def build_model(sources: Mapping[str, str], label: str = "entity_defs") -> Model:
    """Build the model from file texts keyed by path relative to the definitions directory.

    `label` prefixes file names in error messages. Raises DefinitionErrors with every problem.
    """
    return _Builder(sources, label).build()


def read_sources(directory: str | Path) -> dict[str, str]:
    """Every .yaml/.yml file below `directory`, keyed by its relative POSIX path."""
    root = Path(directory)
    if not root.is_dir():
        raise DefinitionErrors([DefinitionError(str(root), 1, 1, "", "definitions directory not found")])
    return {p.relative_to(root).as_posix(): p.read_text("utf-8")
            for p in sorted(root.rglob("*")) if p.suffix in (".yaml", ".yml") and p.is_file()}


def load_model(directory: str | Path) -> Model:
    """Read and validate the definitions in `directory`."""
    return build_model(read_sources(directory), label=str(directory))
