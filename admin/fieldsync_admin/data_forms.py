"""WTForms forms of the data views, built from an entity's fields, and the conversion of what a
form posts into the wire values `RecordStore` validates.

The forms only render and carry text: every value is judged by the record store
(`fieldsync.defs.values.validate_record`, references, uniqueness), exactly as on REST, and its
problems are put back on the form's fields (`show_problems`). Each form class carries the
session's CSRF token as the hidden field `csrf_token` (security.py refuses a POST without it).
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Mapping

from flask_admin.form import BaseForm
from wtforms import fields as wtf
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Optional

from fieldsync.defs.model import Entity, Field
from fieldsync.defs.values import FieldProblem
from fieldsync.errors import JsonRefused
from fieldsync.untrusted import load_json, text_problem

from fieldsync_admin import security

__all__ = ["CsrfForm", "entity_form", "form_values", "prefill", "show_problems", "to_text"]

_INTEGER = re.compile(r"[+-]?[0-9]+")
MAX_INTEGER_DIGITS = 40   # past this no 64-bit number is meant; int() of it is never tried


class CsrfForm(BaseForm):
    """Flask-Admin's form base for every data form (the delete form too): the session's CSRF
    token as a hidden field."""

    csrf_token = wtf.HiddenField(default=lambda: security.csrf_token())


def label_of(field: Field) -> str:
    return field.label or field.name.replace("_", " ").capitalize()


def _form_field(field: Field, *, create: bool) -> wtf.Field:
    """The WTForms field for one entity field. Required is checked by the browser (the
    `required` attribute) and by the store; the form itself only checks presence on create."""
    kw: dict[str, Any] = {"label": label_of(field), "description": field.description or ""}
    required = field.required and not field.has_default and create and field.type != "boolean"
    kw["validators"] = [InputRequired(message="is required")] if required else [Optional()]
    render: dict[str, Any] = {}
    if field.max_length:
        render["maxlength"] = field.max_length
    t = field.type
    if t == "enum" or t == "boolean":
        values = field.values if t == "enum" else ("true", "false")
        choices = [SelectChoice(v, v) for v in values]
        if not (field.required or field.has_default) or not create:
            choices.insert(0, SelectChoice("", "—"))
        if create and field.has_default and field.default is not None:
            kw["default"] = str(field.default).lower() if t == "boolean" else str(field.default)
        return wtf.SelectField(choices=choices, validate_choice=False, render_kw=render, **kw)
    if t in ("text", "json"):
        render["rows"] = 4
        return wtf.TextAreaField(render_kw=render, **kw)
    placeholders = {"date": "YYYY-MM-DD", "datetime": "2026-03-01T09:30:00Z", "uuid": "a UUID",
                    "ref": "the id (UUID) of a record", "geopoint": "lat, lon", "decimal": "e.g. 12.50",
                    "integer": "a whole number"}
    if t in placeholders:
        render["placeholder"] = placeholders[t]
    if t == "integer":
        render["inputmode"] = "numeric"
    if create and field.has_default and field.default is not None and t not in ("json", "geopoint"):
        kw["default"] = str(field.default)
    return wtf.StringField(render_kw=render, **kw)


def entity_form(entity: Entity, names: Iterable[str], *, create: bool) -> type[CsrfForm]:
    """A form class with a field per name of `names` (in the entity's order); an edit form also
    carries the record's version as seen when the form was opened (optimistic concurrency)."""
    wanted = set(names)
    attrs: dict[str, Any] = {f.name: _form_field(f, create=create) for f in entity.fields if f.name in wanted}
    if not create:
        attrs["version"] = wtf.HiddenField()
    return type(f"{entity.name}_{'create' if create else 'edit'}_form", (CsrfForm,), attrs)


def to_text(field: Field, value: Any) -> str:
    """A wire value as the text a form field shows."""
    if value is None:
        return ""
    if field.type == "boolean":
        return "true" if value else "false"
    if field.type == "geopoint" and isinstance(value, Mapping):
        return f"{value.get('lat')}, {value.get('lon')}"
    if field.type == "json":
        return json.dumps(value, ensure_ascii=False, indent=1)
    return str(value)


def prefill(entity: Entity, record: Mapping[str, Any], names: Iterable[str]) -> dict[str, str]:
    """The edit form's initial texts: the record's values of `names` (fields the role sees)."""
    wanted = set(names)
    return {f.name: to_text(f, record.get(f.name)) for f in entity.fields if f.name in wanted}


def _value(field: Field, text: str) -> Any:
    """The wire value of a form text (None for empty); FieldProblem's reason as ValueError."""
    reason = text_problem(text)
    if reason is not None:
        raise ValueError(reason)
    t = field.type
    stripped = text.strip()
    if stripped == "" and t not in ("string", "text"):
        return None
    if text == "":
        return None
    if t == "integer":
        if not _INTEGER.fullmatch(stripped):
            raise ValueError("must be a whole number")
        if len(stripped.lstrip("+-")) > MAX_INTEGER_DIGITS:
            raise ValueError("must fit in 64 bits")
        return int(stripped)
    if t == "boolean":
        if stripped not in ("true", "false"):
            raise ValueError("must be true or false")
        return stripped == "true"
    if t == "json":
        try:
            return load_json(text)
        except JsonRefused as exc:
            raise ValueError(str(exc)) from None
    if t == "geopoint":
        if stripped.startswith("{"):
            try:
                return load_json(stripped)
            except JsonRefused as exc:
                raise ValueError(str(exc)) from None
        parts = [p.strip() for p in stripped.split(",")]
        if len(parts) != 2:
            raise ValueError("must be two numbers: lat, lon")
        try:
            return {"lat": float(parts[0]), "lon": float(parts[1])}
        except ValueError:
            raise ValueError("must be two numbers: lat, lon") from None
    if t in ("decimal", "date", "datetime", "uuid", "ref", "enum", "media"):
        return stripped
    return text


def form_values(entity: Entity, form: CsrfForm, names: Iterable[str], *,
                skip_empty: Iterable[str] = ()) -> tuple[dict[str, Any], list[FieldProblem]]:
    """The posted values of `names` as wire values, and the problems of texts that are no value
    of their field's type. Empty fields are left out when named in `skip_empty` (a create: the
    field's default applies, or the store says it is required)."""
    skip = set(skip_empty)
    names = set(names)
    values: dict[str, Any] = {}
    problems: list[FieldProblem] = []
    for f in entity.fields:
        if f.name not in names or f.name not in form:
            continue
        raw = form[f.name].data
        text = "" if raw is None else str(raw)
        if text.strip() == "" and f.name in skip:
            continue
        try:
            values[f.name] = _value(f, text)
        except ValueError as exc:
            problems.append(FieldProblem(f.name, str(exc)))
    return values, problems


def show_problems(form: CsrfForm, problems: Iterable[FieldProblem]) -> list[str]:
    """Put each problem on its form field; the problems no field shows, as "field: reason"."""
    rest = []
    for p in problems:
        name = p.field.split(".")[0].split("[")[0]
        if name and name in form and name != "csrf_token":
            errors = form[name].errors
            if isinstance(errors, tuple):
                errors = form[name].errors = list(errors)
            errors.append(p.reason)
        else:
            rest.append(f"{p.field}: {p.reason}" if p.field else p.reason)
    return rest
