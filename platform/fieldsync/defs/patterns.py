"""The regular expressions of `pattern`: the subset Python's `re` and ECMA-262 read the same way.

The server validates values with Python (`compile_pattern`, whole value: `fullmatch`); devices
and generated JSON Schemas validate with ECMA-262 (`^(?:pattern)$`). A pattern is only useful if
both sides accept and refuse the same values, so the loader refuses anything outside this subset
(`subset_problem`), naming what it found and what to write instead:

- literals, `.`, `^`, `$`, `|`, groups `(…)` and `(?:…)`, lookaheads `(?=…)` and `(?!…)`;
- quantifiers `*`, `+`, `?`, `{n}`, `{n,}`, `{n,m}`, each optionally lazy (`*?`);
- classes `[…]` and `[^…]` with ranges;
- escapes `\\d \\D \\w \\W \\b` (ASCII meaning, as in ECMA-262: `\\d` is `[0-9]`), `\\t \\n \\r \\f \\v`,
  `\\0`, `\\xhh`, `\\uhhhh`, and a backslash before any of `^ $ \\ . * + ? ( ) [ ] { } | /`
  (and `-` inside a class).

Refused: Python-only syntax (`(?P<name>…)`, `(?P=name)`, atomic groups `(?>…)`, possessive
quantifiers `a++`, `\\A`, `\\Z`, inline flags `(?i)`, comments `(?#…)`, conditionals, `\\N{…}`,
`{,n}`), ECMA-only syntax (`(?<name>…)`, `\\p{…}`, `\\u{…}`, `\\cX`), and what both accept with
different meanings: backreferences, lookbehinds, `\\B` (on an empty value), `\\s`/`\\S` (different whitespace sets), a
literal `{`, `}` or `]` left unescaped, `[` inside a class, and `--`, `&&`, `||`, `~~` inside a
class. `.` means ECMA-262's "any character but a line terminator" on the server too (Python's
own `.` would also take a carriage return, U+2028 and U+2029).
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["compile_pattern", "subset_problem"]

_SYNTAX = set("^$\\.*+?()[]{}|/")
_HEX = set("0123456789abcdefABCDEF")
_QUANTIFIER = re.compile(r"\{(\d+)(,(\d*))?\}")


_ECMA_DOT = "[^\\n\\r\\u2028\\u2029]"   # ECMA-262's `.`: anything but a line terminator


@lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern:
    """The pattern as the server matches it, with the ECMA-262 meaning: ASCII class escapes,
    and `.` excluding every ECMA-262 line terminator. Raises re.error when invalid."""
    scanner = _Scanner(pattern)
    try:
        scanner.scan()
    except _Refused:
        return re.compile(pattern, re.ASCII)    # outside the subset: the loader refuses it anyway
    text = pattern
    for at in reversed(scanner.dots):
        text = text[:at] + _ECMA_DOT + text[at + 1:]
    return re.compile(text, re.ASCII)


class _Refused(Exception):
    pass


def subset_problem(pattern: str) -> str | None:
    """Why `pattern` is outside the Python/ECMA-262 subset, or None when it is inside (it may
    still be invalid in both: compile it too)."""
    try:
        _Scanner(pattern).scan()
    except _Refused as exc:
        return f"{exc} (patterns are the subset of regular expressions Python and ECMA-262 read the same way)"
    return None


class _Scanner:
    def __init__(self, pattern: str):
        self.p = pattern
        self.i = 0
        self.groups: list[str] = []   # the kind of each open group
        self.dots: list[int] = []     # where `.` (any character) stands, outside classes

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.p[j] if j < len(self.p) else ""

    def scan(self) -> None:
        quantifiable = False
        while self.i < len(self.p):
            c = self.p[self.i]
            if c == "\\":
                quantifiable = self.escape(in_class=False)
            elif c == "[":
                self.char_class()
                quantifiable = True
            elif c == "(":
                self.open_group()
                quantifiable = False
            elif c == ")":
                kind = self.groups.pop() if self.groups else "group"
                self.i += 1
                quantifiable = kind != "lookahead"
                if kind == "lookahead" and self.peek() in ("*", "+", "?", "{"):
                    raise _Refused("a lookahead cannot be quantified in ECMA-262")
            elif c in "*+?":
                self.i += 1
                self.after_quantifier()
                quantifiable = False
            elif c == "{":
                m = _QUANTIFIER.match(self.p, self.i)
                if m is None:
                    if self.p.startswith("{,", self.i):
                        raise _Refused("the quantifier {,n} is Python only: write {0,n}")
                    raise _Refused("a literal { must be escaped as \\{ (ECMA-262 reads it as a quantifier)")
                if not quantifiable:
                    raise _Refused("a quantifier {n,m} needs something to repeat")
                self.i = m.end()
                self.after_quantifier()
                quantifiable = False
            elif c == "}":
                raise _Refused("a literal } must be escaped as \\}")
            elif c == "]":
                raise _Refused("a literal ] must be escaped as \\]")
            else:   # a literal, ., ^, $ or |
                if c == ".":
                    self.dots.append(self.i)
                self.i += 1
                quantifiable = c not in "^$|"

    def after_quantifier(self) -> None:
        if self.peek() == "?":
            self.i += 1                      # lazy: both
        elif self.peek() == "+":
            raise _Refused("possessive quantifiers (a++, a*+, a{2}+) are Python only")

    def open_group(self) -> None:
        if self.peek(1) != "?":
            self.groups.append("group")
            self.i += 1
            return
        head = self.p[self.i + 2:self.i + 4]
        if head[:1] == ":":
            kind, width = "group", 3
        elif head[:1] in ("=", "!"):
            kind, width = "lookahead", 3
        elif head in ("<=", "<!"):
            raise _Refused("lookbehinds (?<=…) and (?<!…) are refused: ECMA-262 and Python differ on "
                           "what they may hold, and not every device engine has them")
        elif head[:1] == "P" or head[:1] == "<":
            raise _Refused("named groups (?P<name>…), (?P=name) and (?<name>…) are not read by both: "
                           "use (…) or (?:…)")
        elif head[:1] == ">":
            raise _Refused("atomic groups (?>…) are Python only: use (?:…)")
        elif head[:1] == "#":
            raise _Refused("comments (?#…) are Python only")
        elif head[:1] == "(":
            raise _Refused("conditional groups (?(…)…) are Python only")
        else:
            raise _Refused("inline flags such as (?i) or (?i:…) are not in ECMA-262 patterns: "
                           "spell the cases out, e.g. [Aa]")
        self.groups.append(kind)
        self.i += width

    def escape(self, *, in_class: bool) -> bool:
        """Consume one escape; whether it can be quantified."""
        e = self.peek(1)
        self.i += 2
        if not e:
            raise _Refused("a pattern cannot end in a lone backslash")
        if e in "dDwW":
            return True
        if e == "b":
            return in_class                   # \b in a class is a backspace in both
        if e == "B":
            if in_class:
                raise _Refused("\\B inside a class is not an escape Python and ECMA-262 read the same way")
            raise _Refused("\\B is refused: on an empty value Python (before 3.14) and ECMA-262 disagree")
        if e in "tnrfv":
            return True
        if e == "0":
            if self.peek().isdigit():
                raise _Refused("octal escapes are not read the same way: write \\xhh")
            return True
        if e in "123456789":
            raise _Refused("backreferences (\\1) are refused: ECMA-262 and Python differ when the group "
                           "did not take part in the match")
        if e == "x":
            if not (self.peek() in _HEX and self.peek(1) in _HEX):
                raise _Refused("\\x takes two hex digits")
            self.i += 2
            return True
        if e == "u":
            if self.peek() == "{":
                raise _Refused("\\u{…} is ECMA-262 only: write \\uhhhh")
            if not all(self.peek(k) in _HEX for k in range(4)):
                raise _Refused("\\u takes four hex digits")
            self.i += 4
            return True
        if e in _SYNTAX:
            return True
        if e == "-":
            if in_class:
                return True
            raise _Refused("\\- outside a class is refused by ECMA-262 (unicode mode): write -")
        if e in "sS":
            raise _Refused("\\s and \\S mean different whitespace in Python and ECMA-262: list the characters, "
                           "e.g. [ \\t]")
        if e in "AZzG":
            raise _Refused(f"\\{e} is Python only: use ^ and $ (the whole value is matched anyway)")
        if e in "pP":
            raise _Refused(f"\\{e}{{…}} property classes are ECMA-262 only")
        if e in "ck":
            raise _Refused(f"\\{e} escapes are ECMA-262 only")
        if e == "N":
            raise _Refused("\\N{name} is Python only: write the character or \\uhhhh")
        raise _Refused(f"\\{e} is not an escape Python and ECMA-262 read the same way")

    def char_class(self) -> None:
        self.i += 1
        if self.peek() == "^":
            self.i += 1
        if self.peek() == "]":
            raise _Refused("a ] first in a class is a literal in Python and ends an empty class in "
                           "ECMA-262: escape it as \\]")
        while self.i < len(self.p):
            c = self.peek()
            if c == "]":
                self.i += 1
                return
            if c == "\\":
                self.escape(in_class=True)
                continue
            if c == "[":
                raise _Refused("a [ inside a class must be escaped as \\[ (nested classes differ)")
            if c in "-&|~" and self.peek(1) == c:
                raise _Refused(f"{c}{c} inside a class is a set operation in ECMA-262 (and reserved in Python): "
                               f"escape one of them")
            self.i += 1
