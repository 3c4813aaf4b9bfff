"""fieldsync.errors is the whole error tree and the one registry of problem types (issue 11,
property 5): every exception class defined in the package is reachable from fieldsync.errors and
derives from its Error, and docs/rest.md lists every problem type of the registry, with its
status and titles, and no other.

The exceptions are found by importing every module of the package and looking for classes
defined there, so a new exception class added to any module without going through errors.py
fails here. Exceptions private to a module (a name starting with `_`: control flow that never
leaves it) are the only ones exempt.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fieldsync
import fieldsync.errors as errors
from fieldsync.errors import ProblemType

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "rest.md"
ROW = re.compile(r"^\| `(?P<slug>[a-z-]+)` \| (?P<status>[^|]+) \| (?P<title>[^|]+) \| (?P<rejection>[^|]+) \|")


def _modules():
    for info in pkgutil.walk_packages(fieldsync.__path__, "fieldsync."):
        if not info.name.endswith(".__main__"):   # `python -m fieldsync.cli`: importing it runs the command
            yield importlib.import_module(info.name)


def exception_classes() -> dict[str, type]:
    """`module.Name` -> class, for every exception class defined in a module of the package."""
    found = {}
    for module in _modules():
        for name, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = value
    return found


def documented_types(text: str) -> dict[str, tuple[str, str, str]]:
    """slug -> (status, title, push result title) from the "Problem types" table."""
    section = text.split("\n## Problem types\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match:
            assert match["slug"] not in rows, f"{match['slug']} is listed twice"
            rows[match["slug"]] = (match["status"].strip(), match["title"].strip(), match["rejection"].strip())
    return rows


def registry_rows() -> dict[str, tuple[str, str, str]]:
    """The registry as the doc writes it: `–` for none, `any` for ERROR's status."""
    dash = "–"
    return {t.slug: (str(t.status) if t.status is not None else ("any" if t.title else dash),
                     t.title or dash, t.rejection or dash) for t in ProblemType}


# -- the checkers can fail -----------------------------------------------------------------------

def test_the_checkers_find_what_they_look_for():
    # if the walk or the table parsing broke and returned nothing, the tests below would pass vacuously
    classes = exception_classes()
    assert {"fieldsync.errors.Error", "fieldsync.errors.Problem", "fieldsync.errors.ClientError"} <= set(classes)
    rows = documented_types(DOC.read_text(encoding="utf-8"))
    assert rows["sync-reset"] == ("410", "Device must resync", "–")
    table = "\n## Problem types\n| `sync-reset` | 410 | Device must resync | – | when |\n"
    assert documented_types(table) == {"sync-reset": ("410", "Device must resync", "–")}


# -- the error tree ------------------------------------------------------------------------------

def test_every_exception_of_the_package_is_reachable_from_fieldsync_errors():
    outside = sorted(name for name, cls in exception_classes().items()
                     if not cls.__name__.startswith("_") and getattr(errors, cls.__name__, None) is not cls)
    assert outside == [], f"define these in fieldsync/errors.py (and import them where they are raised): {outside}"


def test_every_exception_of_the_tree_is_a_fieldsync_error():
    public = [cls for cls in exception_classes().values() if not cls.__name__.startswith("_")]
    assert sorted(cls.__name__ for cls in public if not issubclass(cls, errors.Error)) == []


def test_the_tree_in_the_docstring_names_every_exception():
    tree = errors.__doc__
    names = [name for name, cls in vars(errors).items() if inspect.isclass(cls) and issubclass(cls, BaseException)]
    assert sorted(n for n in names if not re.search(rf"\b{n}\b", tree)) == []


def test_errors_stays_standard_library_only():
    # the SDK imports it: importing fieldsync.errors may load no other fieldsync module or package
    code = ("import sys, fieldsync.errors; "
            "print(sorted(m for m in sys.modules if m.startswith('fieldsync') and m not in ('fieldsync', 'fieldsync.errors')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# -- the problem-type registry -------------------------------------------------------------------

def test_an_unknown_slug_is_refused():
    with pytest.raises(ValueError):
        ProblemType("no-such-problem")
    with pytest.raises(ValueError):
        errors.Problem(ProblemType.STALE, "a rejection type is no HTTP answer")


def test_every_problem_type_is_documented_with_its_status_and_titles():
    documented = documented_types(DOC.read_text(encoding="utf-8"))
    registry = registry_rows()
    assert sorted(set(registry) - set(documented)) == [], "problem types missing from docs/rest.md"
    assert sorted(set(documented) - set(registry)) == [], "docs/rest.md lists problem types the registry does not have"
    assert {s: documented[s] for s in registry if documented[s] != registry[s]} == {}
