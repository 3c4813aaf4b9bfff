"""`pattern` is the subset of regular expressions Python's `re` and ECMA-262 read the same way
(devices validate with ECMA-262): anything outside it is refused by the loader with file, line,
key and a reason, and what is inside means the same on both sides."""

from __future__ import annotations

import textwrap

import pytest

from fieldsync.defs import DefinitionErrors, build_model
from fieldsync.defs.patterns import compile_pattern, subset_problem

APP = "app: demo\nschema_version: 1\n"
ROLES = "roles:\n  rep: {}\n"


def _files(pattern: str) -> dict[str, str]:
    quoted = pattern.replace("\\", "\\\\").replace('"', '\\"')
    shop = textwrap.dedent(f"""\
        entity: shop
        kind: master
        fields:
          code:
            type: string
            pattern: "{quoted}"
        permissions:
          rep: {{actions: [read]}}
        """)
    return {"app.yaml": APP, "roles.yaml": ROLES, "masters/shop.yaml": shop}


REFUSED = {
    r"(?P<code>[A-Z]+)": "named group",
    r"(?P<a>x)(?P=a)": "named group",
    r"(?<code>[A-Z]+)": "named group",
    r"(?>ab|a)c": "atomic group",
    r"a++": "possessive",
    r"a*+": "possessive",
    r"a{2}+": "possessive",
    r"\Aabc": r"\A",
    r"abc\Z": r"\Z",
    r"(?i)abc": "inline flag",
    r"(?i:abc)": "inline flag",
    r"(?#note)abc": "comment",
    r"(a)\1": "backreference",
    r"(?<=a)b": "lookbehind",
    r"(?<!a)b": "lookbehind",
    r"a{,3}": "{,n}",
    r"a{": "{",
    r"a}": "}",
    r"a]": "]",
    r"[]a]": "]",
    r"[[a]": "[",
    r"[a--b]": "set operation",
    r"\s+": r"\s",
    r"\S": r"\s",
    r"\N{DIGIT ONE}": r"\N",
    r"\p{L}": r"\p",
    r"\u{41}": r"\u{",
    r"\cJ": r"\c",
    r"a\-b": r"\-",
    r"(?=a)*": "lookahead",
    r"\e": r"\e",
    r"a\B": r"\B",
}

ACCEPTED = [
    r"^[A-Z0-9-]+$", r"^\+?[0-9 -]{6,20}$", r"[a-z]{2,}", r"(?:ab|cd)*?x", r"a(?=b)", r"a(?!b)",
    r"\d{3}-\d{4}", r"\w+\b", r"\.\*\+\?\(\)\[\]\{\}\|\\\/\^\$", r"[\]\[\-\\^]", r"[^a-z]", r"\x41\u00e9\t\n",
    r"é+", r"a|b|", r"(a)(b)", r".", r"[\d\w.]", r"\0", r"[\b]",
]


@pytest.mark.parametrize("pattern,reason", REFUSED.items())
def test_patterns_outside_the_subset_are_refused_with_file_line_and_reason(pattern, reason):
    with pytest.raises(DefinitionErrors) as info:
        build_model(_files(pattern))
    err, = info.value.errors
    text = str(err)
    assert "masters/shop.yaml:6:" in text and "fields.code.pattern" in text, text
    assert "ECMA-262" in text and reason in text, text


@pytest.mark.parametrize("pattern", ACCEPTED)
def test_patterns_inside_the_subset_load(pattern):
    model = build_model(_files(pattern))
    assert model.entity("shop").field("code").pattern == pattern
    assert subset_problem(pattern) is None


def test_class_escapes_mean_ascii_as_in_ecma():
    # ECMA-262: \d is [0-9], \w is [A-Za-z0-9_]; Python's default would also take other scripts' digits
    assert compile_pattern(r"\d+").fullmatch("0123456789")
    assert not compile_pattern(r"\d+").fullmatch("١٢٣")          # Arabic-Indic digits
    assert not compile_pattern(r"\w+").fullmatch("é")
    assert compile_pattern(r"é+").fullmatch("éé")
    # ECMA-262's `.` takes no line terminator; Python's own would take all but \n
    assert compile_pattern("a.b").fullmatch("a-b") and compile_pattern(r"[.]").fullmatch(".")
    assert not any(compile_pattern("a.b").fullmatch(f"a{c}b") for c in "\n\r\u2028\u2029")


def test_the_value_check_uses_the_same_meaning(example_model):
    import dataclasses
    from fieldsync.defs.values import normalize_value
    from fieldsync.errors import ValueProblem
    field = dataclasses.replace(example_model.entity("territory").field("code"), pattern=r"\d+")
    with pytest.raises(ValueProblem):
        normalize_value(field, "١٢٣")


# -- the subset means the same in both engines --------------------------------------------------

ALPHABET = "ab01-. é\t\n\r\u2028٣_Z"


def _random_pattern(rng, depth: int = 0) -> str:
    def atom() -> str:
        roll = rng.random()
        if roll < 0.35 or depth > 2:
            return rng.choice(["a", "b", "0", "1", "é", "-", "_", "Z", r"\.", r"\\", r"\n", r"\t", r"\x61",
                               r"\u00e9"])
        if roll < 0.55:
            return rng.choice([".", r"\d", r"\D", r"\w", r"\W"])
        if roll < 0.75:
            return rng.choice(["[a-c0]", "[^a]", r"[\d.]", r"[\w-]", "[é_ ]", r"[^\n]", r"[\]a]", "[a-]", r"[a\-z]"])
        opener = rng.choice(["(", "(?:", "(?=", "(?!"])
        return opener + _random_pattern(rng, depth + 1) + ")"

    def quantifier() -> str:
        q = rng.choice(["", "", "", "*", "+", "?", "{2}", "{1,2}", "{0,}"])
        return q + ("?" if q and rng.random() < 0.3 else "")

    def term() -> str:
        parts = []
        for _ in range(rng.randint(1, 3)):
            a = atom()
            parts.append(a if a.startswith(("(?=", "(?!")) else a + quantifier())   # lookaheads unquantified
        if rng.random() < 0.15:
            parts.insert(rng.randint(0, len(parts)), rng.choice([r"\b", "^", "$"]))
        return "".join(parts)

    return "|".join(term() for _ in range(rng.randint(1, 2)))


def test_the_subset_means_the_same_in_python_and_ecma262():
    """Random patterns of the subset against random values: Python's verdict (the server's)
    equals ECMA-262's (node's RegExp, with and without the `u` flag) for every pair."""
    import json
    import random
    import shutil
    import subprocess
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("node is not installed: the ECMA-262 side cannot be run here")
    rng = random.Random(20261202)
    cases = []
    for _ in range(400):
        pattern = _random_pattern(rng)
        assert subset_problem(pattern) is None, pattern
        compiled = compile_pattern(pattern)
        for _ in range(8):
            value = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 4)))
            cases.append([pattern, value, compiled.fullmatch(value) is not None])
    script = ("const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "const out = cases.map(([p, v]) => ['u', ''].map(f => new RegExp('^(?:' + p + ')$', f).test(v)));"
              "process.stdout.write(JSON.stringify(out));")
    done = subprocess.run([node, "-e", script], input=json.dumps(cases), capture_output=True, text=True, timeout=60,
                          check=True)
    verdicts = json.loads(done.stdout)
    differ = [(p, v, py, js) for (p, v, py), js in zip(cases, verdicts) if js != [py, py]]
    assert not differ, differ[:10]
