"""The context `templates/sdk/python/fieldsync_models.py.j2` renders the typed SDK models from.

Each entity becomes a frozen, keyword-only dataclass whose attributes follow the model's field
order. The generated module depends on the standard library only, so an app can vendor it.
Python expressions (annotations, defaults, conversions) are built here, where they can be
tested; the template only lays them out.
"""

from __future__ import annotations

import datetime as dt
import json
import keyword
from decimal import Decimal
from typing import Any

from fieldsync.defs.model import Entity, Field, Model

# Field names that would shadow a name the generated class body or its type hints use.
RESERVED_ATTRIBUTES = frozenset(keyword.kwlist) | {
    "from_row", "to_dict", "datetime", "dataclasses", "str", "int", "bool", "dict", "float",
    "list", "cls", "self",
}

PY_TYPES = {
    "string": "str", "text": "str", "uuid": "str", "ref": "str", "media": "str",
    "integer": "int", "decimal": "Decimal", "boolean": "bool", "date": "datetime.date",
    "datetime": "datetime.datetime", "json": "Any", "geopoint": "dict[str, float]",
}


def py_string(value: str) -> str:
    """A double-quoted Python string literal (JSON string syntax is valid Python)."""
    return json.dumps(value, ensure_ascii=False)


def class_name(entity_name: str) -> str:
    """`price_list_item` -> `PriceListItem`."""
    return "".join(part[:1].upper() + part[1:] for part in entity_name.split("_") if part)


def attribute_name(field_name: str) -> str:
    """The Python attribute for a field: its name, with `_` appended when it is reserved."""
    return field_name + "_" if field_name in RESERVED_ATTRIBUTES else field_name


def enum_alias(entity: Entity, f: Field) -> str:
    """The Literal alias of an enum field: `order.status` -> `OrderStatus`."""
    return class_name(entity.name) + class_name(f.name)


def _docstring(*parts: str) -> str:
    text = " ".join(" ".join(p.split()) for p in parts if p and p.strip())
    # Keep the text a valid triple-quoted literal whatever the analyst wrote.
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return text[:-1] + '\\"' if text.endswith('"') else text


def _default_expr(f: Field) -> str | None:
    """A Python expression for the field's default (None: the field has no default)."""
    if not f.has_default:
        return None
    value = f.default
    if value is None:
        return "None"
    if f.type == "decimal":
        return f"_Decimal({py_string(str(value))})"
    if f.type == "date":
        return f"_datetime.date.fromisoformat({py_string(str(value))})"
    if f.type == "datetime":
        return f"_parse_datetime({py_string(str(value))})"
    if f.type in ("json", "geopoint") and isinstance(value, (dict, list)):
        return f"dataclasses.field(default_factory=lambda: {_literal(value)}, repr={not f.phi})"
    return _literal(value)


def _literal(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, (str, Decimal, dt.date)):
        return py_string(str(value))
    return repr(value)


def _from_expr(f: Field) -> str:
    get = f"row.get({py_string(f.name)})"
    return {
        "decimal": f"_parse_decimal({get})",
        "date": f"_parse_date({get})",
        "datetime": f"_parse_datetime({get})",
        "boolean": f"_parse_bool({get})",
    }.get(f.type, get)


def _to_expr(f: Field, attr: str) -> str:
    value = f"self.{attr}"
    if f.type == "decimal":
        return f"_format_decimal({value}, {f.scale or 0})"
    if f.type == "date":
        return f"_format_date({value})"
    if f.type == "datetime":
        return f"_format_datetime({value})"
    return value


def _field_context(entity: Entity, f: Field) -> dict[str, Any]:
    attr = attribute_name(f.name)
    py_type = enum_alias(entity, f) if f.type == "enum" else PY_TYPES[f.type]
    default = _default_expr(f)
    if default is None and not f.required:
        default = "None"
    if f.phi and (default is None or not default.startswith("dataclasses.field(")):
        # PHI stays out of repr(), so a logged record never prints it (invariant 7).
        default = "dataclasses.field(repr=False)" if default is None else \
            f"dataclasses.field(default={default}, repr=False)"
    annotation = py_type if f.required else f"Optional[{py_type}]"
    doc_tail = []
    if f.type == "ref":
        doc_tail.append(f"Id of the referenced {f.ref} record.")
    if f.type == "decimal":
        doc_tail.append(f"Decimal({f.precision}, {f.scale}).")
    if f.phi:
        doc_tail.append("PHI: keep out of logs.")
    return {
        "name": f.name, "attr": attr, "annotation": annotation, "default": default,
        "from_expr": _from_expr(f), "to_expr": _to_expr(f, attr),
        "doc": _docstring(f.label + ".", f.description, *doc_tail),
    }


def _entity_context(entity: Entity) -> dict[str, Any]:
    enums = [{"alias": enum_alias(entity, f), "values": ", ".join(py_string(v) for v in f.values)}
             for f in entity.fields if f.type == "enum"]
    fields = [_field_context(entity, f) for f in entity.fields]
    about = [f"{entity.label} ({entity.kind}" + (f", child of {entity.parent})." if entity.parent else ").")]
    return {
        "name": entity.name,
        "class_name": class_name(entity.name),
        "doc": _docstring(*about, entity.description),
        "enums": enums,
        "fields": fields,
    }


# Module-level names of the generated module that a class or enum alias must not take.
MODULE_NAMES = frozenset({
    "APP", "ENTITIES", "FINGERPRINT", "SCHEMA_VERSION", "Decimal", "Any", "ClassVar", "Literal",
    "Mapping", "Optional",
})


def python_sdk_context(model: Model) -> dict[str, Any]:
    """Everything the Python SDK template needs, as plain data.

    Raises ValueError when two generated names collide (entity `order_status` and the
    enum field `status` of `order` would both be `OrderStatus`).
    """
    entities = [_entity_context(e) for e in model.entities]
    seen: dict[str, str] = {name: "the module itself" for name in MODULE_NAMES}
    for e in entities:
        for name, what in [(e["class_name"], f"entity {e['name']}")] + [
                (en["alias"], f"an enum of entity {e['name']}") for en in e["enums"]]:
            if name in seen:
                raise ValueError(f"the Python SDK name {name} is used by {seen[name]} and by {what}; "
                                 "rename one of them")
            seen[name] = what
    return {
        "app": model.app,
        "schema_version": model.schema_version,
        "fingerprint": model.fingerprint(),
        "entities": entities,
    }
