"""Checking and normalising record values against a model's fields (pure, no I/O).

Every write path (REST, device pushes, seed data, field defaults) goes through
`validate_record`, so a value means the same thing wherever it enters. Values are
normalised to their JSON wire form: decimals as strings with exactly `scale` places,
datetimes as UTC ISO 8601 with `Z`, dates as `YYYY-MM-DD`, uuids lower-case.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from fieldsync.defs.model import Entity, Field
from fieldsync.defs.patterns import compile_pattern
from fieldsync.untrusted import NUL_REASON, text_problem
from fieldsync.errors import ValueProblem

DEFAULT_STRING_MAX = 255
MEDIA_MAX = 512
# a decimal's string form: ASCII digits, an optional sign and point, nothing else (Decimal()
# also takes "１２", " 12", "1_000" and "1e3", which the published schema refuses)
DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
# a media field holds where its object is: an http(s) URL with a host, or the key of an object
# in the platform's file store (a relative path of plain segments). Nothing else: `javascript:`,
# `data:`, `file:` and `//host` references would be followed by whatever renders them
# (docs/rest.md). The JSON Schema publishes the same pattern.
MEDIA_SCHEMES = ("https", "http")
# the reference a device puts in a media field: minted on the device (offline), bound by the
# server to the record that first names it (media/references.py, docs/decisions.md). The only
# media value a device may send.
MEDIA_REF_PREFIX = "fsmedia:"
_MEDIA_REF = r"fsmedia:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
MEDIA_REF_PATTERN = f"^{_MEDIA_REF}$"
DEFAULT_MEDIA_MAX_BYTES = 25 * 1024 * 1024   # a media field without max_bytes
_MEDIA_URL = r"[Hh][Tt][Tt][Pp][Ss]?://[^\s/?#@\x00-\x1f\x7f]+(?:[/?#][^\s\x00-\x1f\x7f]*)?"
_MEDIA_KEY = r"[A-Za-z0-9_~-][A-Za-z0-9._~-]*(?:/[A-Za-z0-9_~-][A-Za-z0-9._~-]*)*"
MEDIA_PATTERN = f"^(?:{_MEDIA_REF}|{_MEDIA_URL}|{_MEDIA_KEY})$"


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """One reason a value was refused: the field's name and a sentence a person can act on."""

    field: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


def _compiled(pattern: str) -> re.Pattern:
    return compile_pattern(pattern)   # the ECMA-262 meaning devices check with (defs/patterns.py)


def _check_text(value: str) -> None:
    # PostgreSQL refuses NUL in text, no encoder takes a lone surrogate; SQLite would store the
    # first and fail on the second: both refused on both databases alike
    reason = text_problem(value)
    if reason is not None:
        raise ValueProblem(reason)


def _check_length(f: Field, value: str) -> None:
    limit = f.max_length if f.max_length is not None else (DEFAULT_STRING_MAX if f.type == "string" else None)
    if limit is not None and len(value) > limit:
        raise ValueProblem(f"must be at most {limit} characters (got {len(value)})")
    if f.min_length is not None and len(value) < f.min_length:
        raise ValueProblem(f"must be at least {f.min_length} characters (got {len(value)})")
    if f.pattern is not None and not _compiled(f.pattern).fullmatch(value):
        raise ValueProblem(f"must match the pattern {f.pattern}")


def _check_range(f: Field, value: Any) -> None:
    if f.minimum is not None and value < f.minimum:
        raise ValueProblem(f"must be at least {f.minimum}")
    if f.maximum is not None and value > f.maximum:
        raise ValueProblem(f"must be at most {f.maximum}")


def to_decimal(value: Any) -> Decimal:
    if isinstance(value, bool):
        raise ValueProblem("must be a decimal number")
    if isinstance(value, str) and not DECIMAL_TEXT.fullmatch(value):
        raise ValueProblem("must be a decimal number: ASCII digits with an optional sign and point, "
                           "such as \"12.50\"")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueProblem("must be a finite decimal number")
        value = repr(value)
    try:
        d = Decimal(str(value)) if isinstance(value, (int, str, Decimal)) else None
    except (InvalidOperation, ValueError):   # ValueError: an int past Python's digit limit
        d = None
    if d is None or not d.is_finite():
        raise ValueProblem("must be a decimal number (a number or a string such as \"12.50\")")
    return d


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def decimal_pattern(field: Field) -> str:
    """The regular expression a decimal field's string form matches: at most `scale` places and
    `precision - scale` digits before the point (published in the JSON Schema; the parser
    refuses every string it refuses)."""
    scale = field.scale or 0
    whole = (field.precision or 38) - scale
    integer = f"[0-9]{{1,{max(whole, 1)}}}"
    if scale == 0:
        return f"^-?{integer}$"
    return f"^-?{integer}(\\.[0-9]{{1,{scale}}})?$"


# a UTC date-time exactly as `format_datetime` writes it (years 1000 to 9999)
_CANONICAL_TIME = re.compile(r"[1-9][0-9]{3}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_UUID_TEXT = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def uuid_text(value: str) -> str:
    """`value` as a canonical UUID string (lower case, hyphenated); ValueError when it is not
    the hyphenated form the schema's `format: uuid` means (uuid.UUID() would also take braces,
    `urn:uuid:` and 32 bare hex digits). Text already canonical is returned as it is."""
    if _CANONICAL_UUID.fullmatch(value):
        return value
    if not _UUID_TEXT.fullmatch(value):
        raise ValueError(f"{value!r} is not a hyphenated UUID")
    return value.lower()


def normalize_value(f: Field, value: Any) -> Any:
    """Return `value` in its canonical wire form, or raise ValueProblem saying why not."""
    if value is None:
        return None
    t = f.type
    if t in ("uuid", "ref"):  # first: ids are the most common values pushed
        if not isinstance(value, str):
            raise ValueProblem("must be a UUID string")
        try:
            return uuid_text(value)
        except ValueError:
            raise ValueProblem("must be a UUID (e.g. 0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d)") from None
    if t in ("string", "text"):
        if not isinstance(value, str):
            raise ValueProblem("must be a string")
        _check_text(value)
        _check_length(f, value)
        return value
    if t == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ValueProblem("must be a whole number")
        if abs(value) > 2**63 - 1:
            raise ValueProblem("must fit in 64 bits")
        _check_range(f, value)
        return value
    if t == "decimal":
        if isinstance(value, str) and not _compiled(decimal_pattern(f)).fullmatch(value):
            to_decimal(value)   # a reason for text that is no decimal at all
            raise ValueProblem(f"must have at most {(f.precision or 38) - (f.scale or 0)} digits before the point "
                               f"and {f.scale or 0} after it (pattern {decimal_pattern(f)})")
        d = to_decimal(value)
        scale, precision = f.scale or 0, f.precision or 38
        exponent = d.as_tuple().exponent
        if d != 0 and d.adjusted() + 1 > precision - scale:
            # checked before quantize(), which raises InvalidOperation past the context precision
            raise ValueProblem(f"must have at most {precision - scale} digits before the decimal point")
        if isinstance(exponent, int) and -exponent > scale and d != d.quantize(Decimal(1).scaleb(-scale)):
            raise ValueProblem(f"must have at most {scale} decimal places")
        q = d.quantize(Decimal(1).scaleb(-scale))
        if len(q.as_tuple().digits) - scale > precision - scale and q != 0:
            raise ValueProblem(f"must have at most {precision - scale} digits before the decimal point")
        _check_range(f, q)
        return f"{q:.{scale}f}"
    if t == "boolean":
        if not isinstance(value, bool):
            raise ValueProblem("must be true or false")
        return value
    if t == "date":
        if isinstance(value, dt.datetime):
            raise ValueProblem("must be a date (YYYY-MM-DD)")
        if isinstance(value, dt.date):
            return value.isoformat()
        if not isinstance(value, str):
            raise ValueProblem("must be a date (YYYY-MM-DD)")
        try:
            return dt.date.fromisoformat(value).isoformat() if len(value) == 10 else _bad_date()
        except ValueError:
            raise ValueProblem("must be a date (YYYY-MM-DD)") from None
    if t == "datetime":
        if isinstance(value, str) and _CANONICAL_TIME.fullmatch(value):
            try:   # already in wire form (what devices send): checked, not parsed and formatted again
                dt.datetime.fromisoformat(value[:-1])
                return value
            except ValueError:
                pass   # the full path below says why
        return format_datetime(parse_datetime(value))
    if t == "enum":
        if not isinstance(value, str) or value not in f.values:
            if isinstance(value, str):
                _check_text(value)
            raise ValueProblem(f"must be one of: {', '.join(f.values)}")
        return value
    if t == "json":
        _check_json(value, depth=0)
        return value
    if t == "media":
        if not isinstance(value, str) or not value or len(value) > MEDIA_MAX:
            raise ValueProblem(f"must be a media reference (a non-empty string of at most {MEDIA_MAX} characters)")
        _check_text(value)
        _check_media(value)
        return value
    if t == "geopoint":
        if not isinstance(value, dict) or set(value) != {"lat", "lon"}:
            raise ValueProblem("must be an object with exactly lat and lon")
        lat, lon = value["lat"], value["lon"]
        for name, v, limit in (("lat", lat, 90), ("lon", lon, 180)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > limit:
                raise ValueProblem(f"{name} must be a number between -{limit} and {limit}")
        return {"lat": float(lat), "lon": float(lon)}
    raise ValueProblem(f"unknown type {t}")  # unreachable for a validated model


def is_media_ref(value: Any) -> bool:
    """Whether `value` is a platform media reference, `fsmedia:<uuid>` (lower-case hex)."""
    return isinstance(value, str) and _compiled(MEDIA_REF_PATTERN).fullmatch(value) is not None


def media_max_bytes(f: Field) -> int:
    """The largest upload media field `f` takes."""
    return f.max_bytes if f.max_bytes is not None else DEFAULT_MEDIA_MAX_BYTES


def content_type_allowed(f: Field, content_type: str) -> bool:
    """Whether media field `f` accepts a file of `content_type` (its parameters ignored,
    `image/*` in content_types matching any image type)."""
    kind = content_type.split(";", 1)[0].strip().lower()
    if not f.content_types:
        return "/" in kind
    return any(kind == allowed or (allowed.endswith("/*") and kind.startswith(allowed[:-1]) and kind != allowed[:-1])
               for allowed in f.content_types)


def _check_media(value: str) -> None:
    """A media value is a platform reference, an http(s) URL with a host or a file-store
    object key (MEDIA_PATTERN)."""
    if _compiled(MEDIA_PATTERN).fullmatch(value):
        return
    scheme = value.split(":", 1)[0].strip().lower() if ":" in value else ""
    if scheme == MEDIA_REF_PREFIX[:-1]:
        raise ValueProblem("must be a media reference fsmedia:<uuid> (lower-case hexadecimal)")
    if scheme and scheme not in MEDIA_SCHEMES:
        raise ValueProblem(f"must be a media reference, an http(s) URL or a file-store object key, not a {scheme}: URI")
    raise ValueProblem("must be an http(s) URL with a host, or a file-store object key (segments of letters, "
                       "digits and ._~- separated by /, none starting with a dot); no spaces or control characters")


def _bad_date():
    raise ValueError


def parse_datetime(value: Any) -> dt.datetime:
    """An aware datetime from an ISO 8601 string (a time zone is required)."""
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, str) and _CANONICAL_TIME.fullmatch(value):
        try:   # the wire form (UTC, "Z"), which fromisoformat reads as it is
            return dt.datetime.fromisoformat(value)
        except ValueError:
            raise ValueProblem("must be an ISO 8601 date-time, e.g. 2026-03-01T09:30:00Z") from None
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise ValueProblem("must be an ISO 8601 date-time, e.g. 2026-03-01T09:30:00Z") from None
    else:
        raise ValueProblem("must be an ISO 8601 date-time string")
    if parsed.tzinfo is None:
        raise ValueProblem("must include a time zone (e.g. Z or +05:30)")
    try:
        return parsed.astimezone(dt.timezone.utc)
    except OverflowError:   # 9999-12-31T23:59:59-14:00 is in year 10000 in UTC
        raise ValueProblem("is outside the representable range (years 1 to 9999) once converted to UTC") from None


def format_datetime(value: dt.datetime) -> str:
    """`value` in UTC as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (every write's time: `%` formatting of
    the fields is a third of `replace(tzinfo=None).isoformat(...)`, the same text)."""
    if value.tzinfo is not dt.timezone.utc:
        value = value.astimezone(dt.timezone.utc)
    if value.year >= 1000:  # isoformat pads years to 4 digits where strftime does not
        return "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ" % (value.year, value.month, value.day, value.hour,
                                                        value.minute, value.second, value.microsecond)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}Z"


def _check_json(value: Any, depth: int) -> None:
    if depth > 32:
        raise ValueProblem("is nested too deeply (more than 32 levels)")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueProblem("object keys must be strings")
            reason = text_problem(k)
            if reason is not None:
                raise ValueProblem(f"object keys {reason}")
            _check_json(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            _check_json(v, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueProblem("must not contain NaN or infinity")
    elif isinstance(value, str) and text_problem(value) is not None:
        raise ValueProblem(f"strings {text_problem(value)}")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ValueProblem("must be a JSON value")


_FIELD_MAPS: dict[int, tuple[Entity, dict[str, Field]]] = {}


def field_map(entity: Entity) -> dict[str, Field]:
    """`entity`'s fields by name, built once per entity object (do not modify it)."""
    cached = _FIELD_MAPS.get(id(entity))
    if cached is not None and cached[0] is entity:
        return cached[1]
    if len(_FIELD_MAPS) > 4096:  # many models loaded over a long run: start again
        _FIELD_MAPS.clear()
    known = {f.name: f for f in entity.fields}
    _FIELD_MAPS[id(entity)] = (entity, known)
    return known


def validate_record(entity: Entity, data: Any, *, partial: bool,
                    writable: tuple[str, ...] | None = None,
                    server_set: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[FieldProblem]]:
    """Check a create (`partial=False`) or update (`partial=True`) body against `entity`.

    Returns the normalised values and every problem found (not just the first). Defaults fill
    omitted fields on create. `writable` limits which fields the caller may set; `server_set`
    names fields the server fills (the owner), which the caller may omit even when required.
    """
    if not isinstance(data, dict):
        return {}, [FieldProblem("", "the body must be a JSON object")]
    clean: dict[str, Any] = {}
    problems: list[FieldProblem] = []
    known, plan = _record_plan(entity)
    for name in data:
        if name not in known:
            problems.append(FieldProblem(name, f"is not a field of {entity.name}"))
        elif writable is not None and name not in writable:
            problems.append(FieldProblem(name, "may not be set by your role"))
    for name, required, has_default, default, normalize in plan:
        if name in data:
            value = data[name]
            if value is None:
                if required:
                    problems.append(FieldProblem(name, "is required and may not be null"))
                else:
                    clean[name] = None
                continue
            try:
                clean[name] = normalize(value)
            except ValueProblem as exc:
                problems.append(FieldProblem(name, str(exc)))
        elif not partial:
            if has_default:
                clean[name] = default
            elif required and name not in server_set:
                problems.append(FieldProblem(name, "is required"))
    return clean, problems


_RECORD_PLANS: dict[int, tuple[Entity, dict[str, Field], tuple]] = {}


def _record_plan(entity: Entity) -> tuple[dict[str, Field], tuple]:
    """`entity`'s fields by name, and per field in order what `validate_record` needs (name,
    required, has_default, default, the function normalising a non-null value), built once per
    entity object: a push validates every field of every mutation."""
    cached = _RECORD_PLANS.get(id(entity))
    if cached is not None and cached[0] is entity:
        return cached[1], cached[2]
    if len(_RECORD_PLANS) > 4096:  # many models loaded over a long run: start again
        _RECORD_PLANS.clear()
    plan = tuple((f.name, f.required, f.has_default, f.default, _normalizer(f)) for f in entity.fields)
    known = field_map(entity)
    _RECORD_PLANS[id(entity)] = (entity, known, plan)
    return known, plan


def _normalizer(f: Field):
    """`normalize_value(f, value)` for non-null values, with the commonest types' checks inlined."""
    if f.type in ("uuid", "ref"):
        def ident(value: Any) -> Any:
            if isinstance(value, str) and _CANONICAL_UUID.fullmatch(value):
                return value
            return normalize_value(f, value)
        return ident
    if f.type in ("string", "text") and f.pattern is None and f.min_length is None:
        limit = f.max_length if f.max_length is not None else (DEFAULT_STRING_MAX if f.type == "string" else None)

        def text(value: Any) -> Any:
            if isinstance(value, str) and value.isascii() and "\x00" not in value \
                    and (limit is None or len(value) <= limit):
                return value
            return normalize_value(f, value)
        return text
    if f.type == "enum":
        values = frozenset(f.values)

        def enum(value: Any) -> Any:
            if isinstance(value, str) and value in values:
                return value
            return normalize_value(f, value)
        return enum
    return lambda value: normalize_value(f, value)
