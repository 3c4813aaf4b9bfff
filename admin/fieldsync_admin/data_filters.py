"""List filters of the data views: Flask-Admin `BaseFilter`s that become the record store's
`Filter`s, with the operators `fieldsync.defs.query` allows for each field (the same as REST's
`?field__op=value`), so the admin list and the REST list agree on what can be filtered."""

from __future__ import annotations

from typing import Any

from flask_admin.babel import lazy_gettext
from flask_admin.model.filters import BaseFilter

from fieldsync.defs.model import Field
from fieldsync.defs.query import Filter, filter_from_query, operators_for
from fieldsync.errors import BadQuery
from fieldsync.untrusted import text_problem

__all__ = ["StoreFilter", "filters_for"]

OPERATION_LABELS = {"eq": "equals", "ne": "not equal", "gt": "greater than", "gte": "at least",
                    "lt": "less than", "lte": "at most", "in": "one of (comma-separated)"}
MAX_FILTER_VALUE = 2000   # characters: a filter value is typed, never a document


class StoreFilter(BaseFilter):
    """`column op value` on one field; `apply` appends a `fieldsync.defs.query.Filter` to the
    list the view hands to `RecordStore.list`."""

    def __init__(self, field: Field, op: str, label: str):
        options = None
        if field.type == "enum" and op in ("eq", "ne"):
            options = tuple((v, v) for v in field.values)
        elif field.type == "boolean":
            options = (("true", "yes"), ("false", "no"))
        super().__init__(label, options)
        self.field = field
        self.column = field.name
        self.op = op

    def operation(self) -> Any:
        return lazy_gettext(OPERATION_LABELS[self.op])

    def problem(self, value: str) -> str | None:
        """Why `value` is no value of this filter (None when it is one)."""
        if len(value) > MAX_FILTER_VALUE:
            return f"is longer than {MAX_FILTER_VALUE} characters"
        reason = text_problem(value)
        if reason is not None:
            return reason
        try:
            filter_from_query(self.field, self.op, value)
        except BadQuery as exc:
            return str(exc)
        return None

    def validate(self, value: str) -> bool:
        return self.problem(value) is None

    def clean(self, value: str) -> Filter:
        return filter_from_query(self.field, self.op, value)

    def apply(self, query: list, value: Filter) -> list:
        query.append(value)
        return query


def filters_for(field: Field, label: str) -> list[StoreFilter]:
    """One filter per operator the field supports, equality first."""
    return [StoreFilter(field, op, label) for op in operators_for(field)]
