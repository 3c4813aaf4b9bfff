"""The Definitions view's changes: the applied texts, drafts, validation, plans and applying them.

A draft is the set of files an edit changes ({relative path: new text, or None to remove}),
laid over the texts of the applied model version it was made from (its `base`, the version
number, and those files' texts then). The plan page carries the draft in a hidden field, so any
process can apply it (nothing is kept between requests). Applying re-reads the newest version;
a draft made on an older one (another change was applied meanwhile) is merged into the newer
texts (a three-way merge per file) and shown as a plan again, never applied unseen, so nobody's
change is undone without a diff showing it. The work itself is fieldsync.live's, the same
functions `fieldsync apply` and `rollback` call.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field as dc_field
from typing import Any, Mapping

from fieldsync.defs import DefinitionErrors, build_model, read_sources
from fieldsync.live import (Applied, Change, apply_change, artifact_diffs, definitions_diff, generated_dir,
                            plan_change, with_raised_version)
from fieldsync.store.migrate import read_schema_record
from fieldsync.store.versions import latest_version_id, read_version
from fieldsync.untrusted import load_json

from fieldsync_admin.security import state

__all__ = ["Applied", "Base", "Draft", "PlanView", "apply_draft", "applied_base", "check_texts", "error_lines",
           "merge3", "plan_draft"]

LABEL = "entity_defs"   # how file names read in messages: as `fieldsync validate entity_defs` prints them


@dataclass(frozen=True)
class Base:
    """The texts of the applied model version (`version`; None before any was recorded)."""

    version: int | None
    sources: dict[str, str]
    recorded: bool          # False: read from DEFS_DIR (the version was recorded without texts)


@dataclass
class Draft:
    """Changed files over a base: {relative path: text, or None for a removed file}, with those
    files' texts in the base (`before`, None: the file did not exist)."""

    base: int | None
    files: dict[str, str | None]
    before: dict[str, str | None] = dc_field(default_factory=dict)
    rollback_of: int | None = None

    @classmethod
    def edit(cls, base: Base, files: Mapping[str, str | None], rollback_of: int | None = None) -> "Draft":
        return cls(base.version, dict(files), {rel: base.sources.get(rel) for rel in files}, rollback_of)

    @classmethod
    def between(cls, base: Base, sources: Mapping[str, str], rollback_of: int | None = None) -> "Draft":
        files: dict[str, str | None] = {rel: text for rel, text in sources.items() if base.sources.get(rel) != text}
        files.update({rel: None for rel in base.sources if rel not in sources})
        return cls.edit(base, files, rollback_of)

    def sources(self, base: Mapping[str, str]) -> dict[str, str]:
        merged = dict(base)
        for rel, text in self.files.items():
            if text is None:
                merged.pop(rel, None)
            else:
                merged[rel] = text
        return merged

    def rebase(self, base: Base) -> tuple["Draft", list[str]]:
        """This draft's changes made over `base` (a newer version): per file a three-way merge of
        the text it was made from, its text and `base`'s. Returns the new draft and the files that
        did not merge (there this draft's text replaces base's)."""
        files: dict[str, str | None] = {}
        clashes = []
        for rel, mine in self.files.items():
            old, theirs = self.before.get(rel), base.sources.get(rel)
            if theirs == old or mine == theirs:
                files[rel] = mine
                continue
            if None not in (old, mine, theirs) and rel in ("app.yaml", "app.yml"):
                mine = _same_version(mine, theirs)
            merged = merge3(old, mine, theirs) if None not in (old, mine, theirs) else None
            if merged is None:
                clashes.append(rel)
                merged = mine
            files[rel] = merged
        return Draft.edit(base, files, self.rollback_of), clashes

    def encode(self) -> str:
        return json.dumps({"base": self.base, "files": self.files, "before": self.before,
                           "rollback_of": self.rollback_of}, sort_keys=True)

    @classmethod
    def decode(cls, raw: str) -> "Draft":
        """A draft from the plan page's hidden field; ValueError when it is not one."""
        data = load_json(raw)   # JsonRefused (a ValueError) for deep nesting too
        if not isinstance(data, dict) or not isinstance(data.get("files"), dict) \
                or not isinstance(data.get("before", {}), dict):
            raise ValueError("not a draft")
        files, before = data["files"], data.get("before", {})
        for mapping in (files, before):
            if not all(isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in mapping.items()):
                raise ValueError("not a draft")
            try:
                json.dumps(mapping, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("not a draft: a lone surrogate") from None
        base, rollback_of = data.get("base"), data.get("rollback_of")
        if not all(v is None or isinstance(v, int) and not isinstance(v, bool) for v in (base, rollback_of)):
            raise ValueError("not a draft")
        return cls(base, dict(files), dict(before), rollback_of)


_VERSION_LINE = re.compile(r"^(schema_version:[ \t]*)(\d+)", re.MULTILINE)


def _same_version(mine: str, theirs: str) -> str:
    """`mine` (an app.yaml) with the higher of both schema_versions, so that two changes which
    each raised it merge (the plan raises it again when the storage shape needs it)."""
    a, b = _VERSION_LINE.search(mine), _VERSION_LINE.search(theirs)
    if a is None or b is None:
        return mine
    top = max(int(a.group(2)), int(b.group(2)))
    return _VERSION_LINE.sub(lambda m: f"{m.group(1)}{top}", mine, count=1)


def merge3(old: str, mine: str, theirs: str) -> str | None:
    """A line-based three-way merge: the changes from `old` to `mine` and to `theirs` together,
    or None when they touch the same lines differently. Two insertions at the same place are
    both kept, theirs first (two fields added to one entity: both belong in the file)."""
    base = old.splitlines(True)

    def hunks(other: str) -> list[tuple[int, int, list[str]]]:
        lines = other.splitlines(True)
        matcher = difflib.SequenceMatcher(None, base, lines, autojunk=False)
        return [(i1, i2, lines[j1:j2]) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]

    ordered = sorted([(h, 0) for h in hunks(theirs)] + [(h, 1) for h in hunks(mine)],
                     key=lambda item: (item[0][0], item[0][1], item[1]))
    kept: list[tuple[int, int, list[str]]] = []
    for hunk, _side in ordered:
        if kept:
            a1, a2, a_lines = kept[-1]
            h1, h2, h_lines = hunk
            if (a1, a2, a_lines) == hunk:
                continue                                  # the same change on both sides
            if a1 == a2 == h1 == h2:                      # two insertions at one place
                kept[-1] = (a1, a2, a_lines + h_lines)
                continue
            if h1 < a2:
                return None
        kept.append(hunk)
    out: list[str] = []
    position = 0
    for i1, i2, lines in kept:
        out.extend(base[position:i1])
        out.extend(lines)
        position = i2
    out.extend(base[position:])
    return "".join(out)


@dataclass
class PlanView:
    """Everything the plan page shows."""

    draft: Draft
    sources: dict[str, str] = dc_field(default_factory=dict)
    errors: list[str] = dc_field(default_factory=list)       # `fieldsync validate` lines
    change: Change | None = None
    raised: tuple[int, int] | None = None                    # schema_version raised (from, to)
    yaml_diff: list[str] = dc_field(default_factory=list)
    artifacts: dict[str, list[str]] = dc_field(default_factory=dict)

    @property
    def destructive(self) -> tuple:
        return self.change.plan.destructive if self.change else ()

    @property
    def applicable(self) -> bool:
        return self.change is not None and self.change.refused is None and not self.errors


def applied_base() -> Base:
    """The texts of the newest applied version: recorded in fs_schema, or (a version recorded by
    a server's start, without texts) DEFS_DIR's files. DefinitionErrors when neither exists."""
    st = state()
    with st.engine.connect() as conn:
        version = latest_version_id(conn)
        row = read_version(conn, version) if version is not None else None
    if row is not None and row["definitions"]:
        return Base(version, dict(row["definitions"]), True)
    return Base(version, read_sources(st.config["DEFS_DIR"]), False)


def error_lines(exc: DefinitionErrors) -> list[str]:
    """The messages as `fieldsync validate` prints them: `file:line:column: key: message`."""
    return [str(err) for err in exc.errors]


def check_texts(sources: Mapping[str, str]) -> tuple[list[str], Any]:
    """Validate definitions: (error lines, model or None)."""
    try:
        return [], build_model(sources, label=LABEL)
    except DefinitionErrors as exc:
        return error_lines(exc), None


def plan_draft(draft: Draft, base: Base, *, raise_version: bool = True) -> PlanView:
    """Validate the draft over `base`, raise schema_version when its storage shape changed and
    the analyst did not (devices must migrate), plan it and diff it; changes nothing."""
    st = state()
    sources = draft.sources(base.sources)
    view = PlanView(draft=draft, sources=sources)
    view.errors, model = check_texts(sources)
    if model is None:
        return view
    if raise_version:
        with st.engine.connect() as conn:
            record = read_schema_record(conn)
        raised = with_raised_version(sources, record)
        if raised != sources:
            view.raised = (model.schema_version, build_model(raised, label=LABEL).schema_version)
            sources = view.sources = raised
            view.draft = Draft.between(base, sources, draft.rollback_of)
    try:
        view.change = plan_change(st.engine, sources, LABEL)
    except DefinitionErrors as exc:   # not expected after check_texts; shown, never a 500
        view.errors = error_lines(exc)
        return view
    view.yaml_diff = definitions_diff(base.sources, sources)
    current = state().current().model
    view.artifacts = artifact_diffs(current, view.change.model, page_size_max=int(st.config["PAGE_SIZE_MAX"]))
    return view


def apply_draft(view: PlanView, *, allow_destructive: bool, applied_by: str) -> Applied:
    """Write, regenerate, migrate and record the planned change (fieldsync.live.apply_change).
    MigrationRefused, GenerationError and OSError propagate (nothing migrated)."""
    st = state()
    assert view.change is not None
    defs_dir = st.config["DEFS_DIR"]
    return apply_change(st.engine, view.change, defs_dir, generated_dir(defs_dir),
                        allow_destructive=allow_destructive, applied_by=applied_by)

