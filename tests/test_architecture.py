"""The layout's properties (issue 11), each a test that fails naming what broke it:

(1) `import fieldsync.client` loads no server library and no server module: an app embedding the
    SDK pulls in the SDK, the ids and errors it shares, and the pure value rules of `defs`;
(2) `defs` and `codegen` are pure: they import no I/O library and no server room;
(3) no import cycle between rooms (the sub-packages of fieldsync and its top-level modules) nor
    between files: arrows point one way, pure core at the bottom, I/O at the edges;
(4) no module over 800 lines.

Imports are read from the source (AST), at module level and inside functions alike: a lazy
import is still an arrow. (1) and (2) also import the code in a fresh interpreter, where what
counts is what ends up in `sys.modules`.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "platform"
PACKAGE = SOURCE / "fieldsync"
MAX_LINES = 800


# -- reading the imports -------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(name: str, path: Path) -> list[tuple[str, int]]:
    """Every module `name` imports, anywhere in its source, with the line: fieldsync modules
    resolved to the module file (`from fieldsync.x import y` is `fieldsync.x.y` when y is a
    module, else `fieldsync.x`), other modules by their dotted name."""
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[:len(base) - (node.level - 1)]
                module = ".".join(parent + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:
                found.append((f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES else module,
                              node.lineno))
    return found


IMPORTS = {name: _imported(name, path) for name, path in MODULES.items()}


def _room(module: str) -> str:
    """The room of a fieldsync module: its sub-package or top-level module (`fieldsync` for the
    package's own __init__)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fieldsync"


def _file_graph() -> dict[str, dict[str, int]]:
    """module -> {fieldsync module it imports: line}, without self-imports."""
    graph: dict[str, dict[str, int]] = {}
    for name, imports in IMPORTS.items():
        graph[name] = {}
        for target, line in imports:
            if target in MODULES and target != name:
                graph[name].setdefault(target, line)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _loaded_after(code: str, baseline: str = "") -> list[str]:
    """The modules a fresh interpreter holds after running `code`, less those it held after
    `baseline` alone (so what an allowed library loads for itself is not counted)."""
    program = (f"import json, sys\n{baseline}\nbefore = set(sys.modules)\n{code}\n"
               "print(json.dumps(sorted(set(sys.modules) - before)))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SOURCE), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _roots(modules) -> set[str]:
    return {m.split(".")[0] for m in modules}


# -- (1) the SDK is free of the server -----------------------------------------------------------

SERVER_LIBRARIES = {"sqlalchemy", "flask", "werkzeug", "jinja2", "yaml", "jsonschema", "boto3", "botocore",
                    "stomp", "psycopg", "alembic", "waitress", "cheroot"}
SDK_MAY_LOAD = {
    "fieldsync", "fieldsync.ids", "fieldsync.errors", "fieldsync.untrusted", "fieldsync.backoff",
    # the package __init__ is lazy; the value rules the SDK shares with the server (standard library only)
    "fieldsync.defs", "fieldsync.defs.model", "fieldsync.defs.values", "fieldsync.defs.patterns",
    "fieldsync.defs.expr", "fieldsync.transfer", "fieldsync.transfer.chunks",
    # pull pages are read with the same exact-as-json.loads reader the server writes them with
    "fieldsync.json_wire",
}


def test_client_loads_no_server_library_or_module():
    loaded = _loaded_after("import fieldsync.client")
    assert "fieldsync.client" in loaded
    assert sorted(_roots(loaded) & SERVER_LIBRARIES) == []
    server = [m for m in loaded if m.startswith("fieldsync")
              and m not in SDK_MAY_LOAD and not m.startswith("fieldsync.client")]
    assert server == [], "importing fieldsync.client loads server modules"


def test_client_source_imports_no_server_module():
    """The same rule for fieldsync modules read from the source, so a lazy import inside a
    function is caught too. (`WsgiTransport` may import werkzeug when it is handed a WSGI app:
    only an app that has the server does that.)"""
    wrong = [f"{name}:{line} imports {target}" for name, imports in IMPORTS.items()
             if name.startswith("fieldsync.client") for target, line in imports
             if target.startswith("fieldsync") and target not in SDK_MAY_LOAD
             and not target.startswith("fieldsync.client")]
    assert not wrong, "\n".join(wrong)


# -- (2) the core is pure ------------------------------------------------------------------------

IO_LIBRARIES = {"sqlalchemy", "flask", "werkzeug", "cryptography", "boto3", "botocore", "stomp", "psycopg",
                "sqlite3", "sqlcipher3", "socket", "http", "requests", "urllib.request", "alembic"}
PURE_ROOMS = {"defs", "codegen"}
PURE_MAY_IMPORT = PURE_ROOMS | {"errors", "ids", "untrusted", "fieldsync"}


def _is_io(module: str) -> bool:
    return any(module == lib or module.startswith(lib + ".") for lib in IO_LIBRARIES)


def test_pure_core_source_imports_no_io_library_nor_server_room():
    wrong = []
    for name, imports in IMPORTS.items():
        if _room(name) not in PURE_ROOMS:
            continue
        for target, line in imports:
            if _is_io(target) or (target.startswith("fieldsync") and _room(target) not in PURE_MAY_IMPORT):
                wrong.append(f"{name}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_pure_core_loads_no_io_library_nor_server_room():
    """Import every module of defs and codegen; what jinja2, yaml and jsonschema (text and schema
    libraries, allowed) load for themselves is subtracted."""
    pure = sorted(name for name in MODULES if _room(name) in PURE_ROOMS)
    loaded = _loaded_after("\n".join(f"import {name}" for name in pure),
                           baseline="import jinja2, yaml, jsonschema")
    assert sorted(m for m in loaded if _is_io(m)) == []
    assert sorted(m for m in loaded if m.startswith("fieldsync.") and _room(m) not in PURE_MAY_IMPORT) == []


# -- (3) no import cycle ---------------------------------------------------------------------------

def test_no_import_cycle_between_files():
    graph = _file_graph()
    found = []
    for cycle in _cycles({name: set(targets) for name, targets in graph.items()}):
        members = set(cycle)
        found.append(", ".join(f"{a}:{line} -> {b}" for a in cycle
                               for b, line in sorted(graph[a].items()) if b in members))
    assert not found, "import cycles between files:\n" + "\n".join(found)


def test_no_import_cycle_between_rooms():
    """Names each pair of rooms importing each other, with the imports both ways, then each set
    of more than two rooms that reach each other."""
    graph = _file_graph()
    arrows: dict[tuple[str, str], list[str]] = defaultdict(list)
    for name, targets in sorted(graph.items()):
        for target, line in sorted(targets.items()):
            if _room(name) != _room(target) and _room(target) != "fieldsync":
                arrows[_room(name), _room(target)].append(f"{name}:{line} -> {target}")
    found = [f"{a} <-> {b}: " + ", ".join(arrows[a, b] + arrows[b, a])
             for a, b in sorted(arrows) if a < b and (b, a) in arrows]
    rooms: dict[str, set[str]] = defaultdict(set)
    for a, b in arrows:
        rooms[a].add(b)
    found += ["rooms that reach each other: " + ", ".join(cycle) for cycle in _cycles(rooms) if len(cycle) > 2]
    assert not found, "import cycles between rooms:\n" + "\n".join(found)


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# -- (4) modules a reader can hold in mind ---------------------------------------------------------

def test_no_module_over_800_lines():
    long = {name: n for name, path in MODULES.items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
