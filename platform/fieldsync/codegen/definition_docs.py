"""The reference of the definition language, read off the meta-schema (pure).

Every key the meta-schema allows is documented by its own `description`, so the reference
cannot drift from what the loader accepts: `reference_sections(meta_schema())` walks the
three kinds of file (app.yaml, roles.yaml, one file per entity) and every object reachable
from them, and `templates/docs/definition-language.md.j2` renders the result.
"""

from __future__ import annotations

from typing import Any

from fieldsync.defs.model import Model

# The documents of the definition language, in the order the reference presents them.
DOCUMENTS = (
    ("entity", "Entity files", ("entity_defs/masters/<entity>.yaml", "entity_defs/transactions/<entity>.yaml")),
    ("roles", "roles.yaml", ("entity_defs/roles.yaml",)),
    ("app", "app.yaml", ("entity_defs/app.yaml",)),
)
# Definitions that describe a value rather than an object: listed once, under "Value types".
VALUE_TYPES = ("name", "expression", "renamed_from")


def _ref_name(node: dict[str, Any]) -> str | None:
    ref = node.get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def _is_object(node: dict[str, Any]) -> bool:
    return isinstance(node.get("properties"), dict)


def _anchor(title: str) -> str:
    """The anchor GitHub-flavoured Markdown gives a heading."""
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def markdown_cell(text: str) -> str:
    """Text for one Markdown table cell: one line, `|` escaped, `<...>` shown rather than
    taken for HTML (outside code spans, where Markdown already shows it literally)."""
    parts = " ".join(str(text).split()).replace("|", "\\|").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


class _Walker:
    def __init__(self, meta: dict[str, Any]):
        self.defs: dict[str, Any] = meta.get("$defs", {})
        self.sections: list[dict[str, Any]] = []
        self.section_of_def: dict[str, str] = {}   # def name -> section title
        self.pending: list[tuple[str, str, dict[str, Any]]] = []

    def resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        name = _ref_name(node)
        if name is None:
            return node
        merged = dict(self.defs[name])
        merged.update({k: v for k, v in node.items() if k != "$ref"})
        return merged

    def section_for(self, title: str, node: dict[str, Any], def_name: str | None) -> str:
        """Queue an object for its own section (once per definition) and return its title."""
        if def_name is not None:
            if def_name not in self.section_of_def:
                self.section_of_def[def_name] = title
                self.pending.append((title, def_name, self.defs[def_name]))
            return self.section_of_def[def_name]
        self.pending.append((title, "", node))
        return title

    def type_of(self, node: dict[str, Any], path: str) -> str:
        ref = _ref_name(node)
        if ref in VALUE_TYPES:
            return f"[{ref}](#{_anchor('Value types')})"
        if ref is not None and _is_object(self.defs[ref]):
            title = self.section_for(f"{path}", self.defs[ref], ref)
            return f"object, see [`{title}`](#{_anchor(title)})"
        node = self.resolve(node)
        if "oneOf" in node:
            return " or ".join(self.type_of(n, path) for n in node["oneOf"])
        if _is_object(node):
            title = self.section_for(path, node, None)
            return f"object, see [`{title}`](#{_anchor(title)})"
        t = node.get("type")
        if t == "array" or "items" in node:
            return "list of " + self.type_of(node.get("items", {}), path + "[]")
        if t == "object" or (isinstance(t, list) and "object" in t):
            extra = node.get("additionalProperties")
            if isinstance(extra, dict):
                value = self.type_of(extra, path + ".<name>")
                keys = self.type_of(node.get("propertyNames", {}), path) if node.get("propertyNames") else "string"
                nullable = " (or empty)" if isinstance(t, list) and "null" in t else ""
                return f"map of {keys} to {value}{nullable}"
            return "object"
        if isinstance(t, list):
            return " or ".join(t)
        if t:
            return t
        if "enum" in node:
            kinds = sorted({type(v).__name__ for v in node["enum"]})
            return "string" if kinds == ["str"] else "one of the values"
        return "any JSON/YAML value"

    def constraints(self, node: dict[str, Any]) -> str:
        node = self.resolve(node)
        out = []
        if "enum" in node:
            out.append(", ".join(f"`{v}`" for v in node["enum"]))
        items = node.get("items")
        if isinstance(items, dict) and "enum" in self.resolve(items):
            out.append("each one of " + ", ".join(f"`{v}`" for v in self.resolve(items)["enum"]))
        if "pattern" in node:
            out.append(f"matches `{node['pattern']}`")
        for key, text in (("minimum", "at least {}"), ("maximum", "at most {}"),
                          ("minLength", "at least {} character(s)"), ("minItems", "at least {} item(s)"),
                          ("minProperties", "at least {} entries")):
            if key in node:
                out.append("not empty" if key != "minimum" and node[key] == 1 else text.format(node[key]))
        if node.get("uniqueItems"):
            out.append("no duplicates")
        return "; ".join(out)

    def rows(self, node: dict[str, Any], path: str) -> list[dict[str, str]]:
        required = set(node.get("required", ()))
        rows = []
        for key, prop in node.get("properties", {}).items():
            resolved = self.resolve(prop)
            rows.append({
                "key": key,
                "required": "yes" if key in required else "",
                "type": markdown_cell(self.type_of(prop, f"{path}.{key}" if path else key)),
                "values": markdown_cell(self.constraints(prop)),
                "description": markdown_cell(resolved.get("description", "")),
            })
        return rows

    def run(self) -> list[dict[str, Any]]:
        for def_name, title, where in DOCUMENTS:
            node = self.defs[def_name]
            self.section_of_def[def_name] = title
            self.sections.append({"title": title, "code": False, "anchor": _anchor(title), "where": where,
                                  "description": markdown_cell(node.get("description", "")),
                                  "rows": self.rows(node, "")})
            self.drain()
        return self.sections

    def drain(self) -> None:
        # Depth-first: an object's own section follows the section that introduced it.
        while self.pending:
            title, _, node = self.pending.pop(0)
            node = self.resolve(node)
            self.sections.append({"title": title, "code": True, "anchor": _anchor(title), "where": (),
                                  "description": markdown_cell(node.get("description", "")),
                                  "rows": self.rows(node, title)})


def reference_sections(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One section per object of the meta-schema: title, anchor, description and key rows.

    Each row holds key, required ("yes" or ""), type, allowed values and description, with
    Markdown table cells escaped.
    """
    return _Walker(meta).run()


def value_types(meta: dict[str, Any]) -> list[dict[str, str]]:
    """The shared value definitions (names, expressions, renamed_from) with their rules."""
    walker = _Walker(meta)
    return [{"name": name, "description": markdown_cell(walker.defs[name].get("description", "")),
             "values": markdown_cell(walker.constraints(walker.defs[name]))}
            for name in VALUE_TYPES if name in walker.defs]


def model_summary(model: Model) -> list[dict[str, str]]:
    """One row per entity of `model` for the reference's example section."""
    rows = []
    for e in model.entities:
        rows.append({
            "name": e.name, "kind": e.kind + (f" (child of {e.parent})" if e.parent else ""),
            "label": markdown_cell(e.label), "fields": str(len(e.fields)),
            "sync": f"{e.sync.direction}, {e.sync.conflict}, priority {e.sync.priority}",
            "phi": ", ".join(f.name for f in e.phi_fields),
            "description": markdown_cell(e.description),
        })
    return rows
