"""The generated REST API: one collection and item resource per entity, under /api/v1.

Views are thin: parse the request, check the role's permission, call the record store, render.
Entities are looked up per request from the live model (definitions can change at run time).

Decisions (recorded here; the REST reference in docs/ is generated from the OpenAPI document):
- Setting a field the role may not edit is a 422 validation problem naming the field (listed
  with every other problem in the body), not a 403: the request as a whole is allowed.
- The owner field is never taken from the body: sending it is a 422 for that field.
- A filter `?x__ne=v` also matches rows whose x is null.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from fieldsync.api.audit_trail import audit_rest_read
from fieldsync.errors import (BadQuery, Conflict, JsonRefused, NotFound, PermissionDenied, Problem, ProblemType,
                              ValidationFailed)
from fieldsync.api.auth import authenticate_request, refuse_device_token
from fieldsync.api.break_glass import audit_break_glass, break_glass_reason, widen_for_break_glass
from fieldsync.auth.tokens import Principal
from fieldsync.codegen.openapi import API_PREFIX
from fieldsync.defs.query import CONTROL_PARAMETERS, FILTER_OPERATORS, operators_for, query_fields
from fieldsync.defs.access import AccessRule, access_rule
from fieldsync.defs.model import Entity, Model, Permission
from fieldsync.defs.values import FieldProblem, validate_record
from fieldsync.store.records import RowFilter
from fieldsync.defs.query import Filter, filter_from_query
from fieldsync.untrusted import INT32_MAX, load_json, parse_int

blueprint = Blueprint("fieldsync_api", __name__)

PUBLIC_ENDPOINTS = ("fieldsync_api.health", "fieldsync_api.ready", "fieldsync_api.openapi")
RESERVED_SEGMENTS = ("health", "ready", "openapi.json")
# answered without reading the database, not even for a model change (docs/operations.md "Outages")
PROBE_ENDPOINTS = ("fieldsync_api.health", "fieldsync_api.ready")
# Flask answers HEAD with the GET view; a view must never take HEAD (or any method it does not
# name) for a write (docs/rest.md: HEAD is GET without a body, audited the same)
READ_METHODS = ("GET", "HEAD")


def _state():
    return current_app.extensions["fieldsync"]


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


# -- authentication ----------------------------------------------------------------------------

@blueprint.before_request
def authenticate() -> None:
    if request.endpoint in PROBE_ENDPOINTS:
        return
    g.snapshot = _state().current()  # one model for the whole request, even if it is swapped meanwhile
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    g.principal = authenticate_request(channel="rest")   # 401/429; idle timeout, revocation (docs/access.md)
    refuse_device_token(g.principal, "use the entity API")
    g.break_glass = break_glass_reason(g.principal)   # None unless X-Fieldsync-Break-Glass was sent


# -- helpers -----------------------------------------------------------------------------------

def _model() -> Model:
    return g.snapshot.model


def _entity(name: str) -> Entity:
    if name in RESERVED_SEGMENTS:
        raise Problem(ProblemType.METHOD_NOT_ALLOWED, f"{request.method} is not allowed here")
    try:
        return _model().entity(name)
    except KeyError:
        raise Problem(ProblemType.UNKNOWN_ENTITY, f"no entity {name!r}") from None


def _permission(entity: Entity, action: str) -> Permission:
    """The role's effective permission on `entity` (a child's from its parent; defs/access.py),
    403 when it may not take `action`."""
    principal: Principal = g.principal
    rule = access_rule(_model(), entity, principal.role)
    if rule is None or not rule.can(action):
        raise Problem(ProblemType.FORBIDDEN, f"role {principal.role!r} may not {action} {entity.name} records")
    perm = rule.permission
    if action == "read" and g.get("break_glass") is not None:
        perm = widen_for_break_glass(entity, perm, g.break_glass)   # every field visible, audited
    return perm


def _row_filter(entity: Entity) -> RowFilter | None:
    """The rows of `entity` the role reaches: its row filter and, for a child, a live parent the
    role reaches (call after `_permission`, which refuses a role without a rule)."""
    rule = access_rule(_model(), entity, g.principal.role)
    return RowFilter.for_rule(rule, g.principal.expression_user()) if rule is not None else None


def _reach(target: Entity) -> tuple[bool, RowFilter | None]:
    """Whether the caller reads `target` at all, and which rows: a reference to any other
    record is the same 422 as a reference to a missing one (no existence oracle)."""
    rule = access_rule(_model(), target, g.principal.role)
    if rule is None or not rule.can("read"):
        return False, None
    return True, RowFilter.for_rule(rule, g.principal.expression_user())


def _visible(entity: Entity, perm: Permission, record: dict[str, Any]) -> dict[str, Any]:
    """`record` without the fields the role may not see (absent, not null)."""
    if perm.visible is None:
        return record
    hidden = set(entity.field_names) - set(perm.visible)
    return {k: v for k, v in record.items() if k not in hidden}


def _writable(entity: Entity, perm: Permission, *, create: bool = False) -> tuple[str, ...]:
    return AccessRule(entity, perm).writable(create=create)


def _etag(record: dict[str, Any]) -> str:
    return f'"{record["version"]}"'


def _etag_versions(header: str, name: str) -> list[int | str]:
    """The versions an If-Match / If-None-Match header (`name`) lists ("*" for any): strong or
    weak entity tags each holding a version, as ETag gives them. Anything else is a 400 naming
    the header (an unparsable precondition must not be taken as a failed or a met one)."""
    out: list[int | str] = []
    for part in header.split(","):
        tag = part.strip()
        if tag == "*":
            out.append("*")
            continue
        if tag.startswith("W/"):
            tag = tag[2:]
        if len(tag) < 2 or tag[0] != '"' or tag[-1] != '"':
            raise _bad_header(name, f"{name} must list entity tags such as \"3\" (got {header!r})")
        try:
            out.append(parse_int(tag[1:-1], low=1, high=INT32_MAX))   # versions are 32-bit
        except ValueError as exc:
            raise _bad_header(name, f"{name}: the entity tag {tag} is not a version: it {exc}") from None
    return out


def _bad_header(name: str, detail: str) -> Problem:
    return Problem(ProblemType.BAD_REQUEST, detail, errors=[FieldProblem(name, detail)])


def _expected_version(required: bool) -> int | None:
    header = request.headers.get("If-Match")
    if header is None:
        if required:
            raise Problem(ProblemType.PRECONDITION_REQUIRED,
                          "send If-Match with the record's ETag (its version) to change it")
        return None
    versions = _etag_versions(header, "If-Match")
    if "*" in versions:
        return None
    if len(versions) != 1:
        # nothing we issued can match it, which RFC 9110 answers with 412
        raise Problem(ProblemType.PRECONDITION_FAILED,
                      f"If-Match {header!r} does not name the record's current version")
    return int(versions[0])


def _body() -> Any:
    if request.content_length is not None and request.content_length > current_app.config["MAX_CONTENT_LENGTH"]:
        raise Problem(ProblemType.PAYLOAD_TOO_LARGE, "the request body is larger than this server accepts")
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise Problem(ProblemType.UNSUPPORTED_MEDIA_TYPE,
                      f"send the body as application/json (got {mimetype or 'no content type'})")
    raw = request.get_data(cache=True)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(ProblemType.MALFORMED_JSON, "the body is not valid JSON: it is not UTF-8") from None
    try:
        return load_json(text)   # depth bounded before parsing (fieldsync.untrusted)
    except JsonRefused as exc:
        raise Problem(ProblemType.MALFORMED_JSON, f"the body {exc}") from None


def _record_response(entity: Entity, perm: Permission, record: dict[str, Any], status: int = 200,
                     headers: dict[str, str] | None = None) -> Response:
    audit_rest_read(entity, perm, [record])   # invariant 8: recorded before any PHI leaves
    body = _visible(entity, perm, record)
    for child_name in entity.children:
        child = _model().entity(child_name)
        if child.collection in record:
            child_perm = child.permission(g.principal.role)
            body[child.collection] = [_visible(child, child_perm, c) for c in record[child.collection]] \
                if child_perm is not None and child_perm.can("read") else []
    all_headers = {"ETag": _etag(record)}
    all_headers.update(headers or {})
    return _json(body, status, all_headers)


def _reject_unknown_params(allowed: tuple[str, ...]) -> None:
    for key in request.args:
        if key not in allowed:
            raise Problem(ProblemType.BAD_QUERY, f"unknown query parameter {key!r}")


def _refuse_owner(entity: Entity, perm: Permission, body: Any, *, partial: bool,
                  server_set: tuple[str, ...]) -> None:
    """A body naming the owner field is refused before anything is written, with every other
    problem of the body listed too."""
    if not (entity.owner and isinstance(body, dict) and entity.owner in body):
        return
    rest = {k: v for k, v in body.items() if k != entity.owner}
    _, others = validate_record(entity, rest, partial=partial, writable=_writable(entity, perm),
                                server_set=server_set)
    _raise_validation([FieldProblem(entity.owner, "is set by the server from your token; leave it out")]
                      + others)


def _require_method(*writes: str) -> None:
    """A write branch runs only for the write methods it names: any other method reaching it
    (HEAD, or one a later route change adds) is refused before anything is read or written."""
    if request.method not in writes:
        raise Problem(ProblemType.METHOD_NOT_ALLOWED, f"{request.method} is not allowed here")


def _raise_validation(problems: list[FieldProblem]) -> None:
    raise Problem(ProblemType.VALIDATION, f"{len(problems)} field(s) are invalid", errors=problems)


def _store_call(fn, *args, **kwargs):
    """Run a store operation, translating its errors into problems."""
    try:
        return fn(*args, **kwargs)
    except ValidationFailed as exc:
        _raise_validation(exc.problems)
    except NotFound as exc:
        raise Problem(ProblemType.NOT_FOUND, str(exc)) from None
    except PermissionDenied as exc:
        raise Problem(ProblemType.FORBIDDEN, str(exc)) from None
    except BadQuery as exc:
        raise Problem(ProblemType.BAD_QUERY, str(exc)) from None


# -- meta --------------------------------------------------------------------------------------

@blueprint.get("/health")
def health():
    """Liveness: no authentication, no dependency touched (not even for a model change)."""
    return _json({"status": "ok"})


@blueprint.get("/ready")
def ready():
    """Readiness: 200 while the database answers, 503 when not; each dependency's state."""
    from fieldsync.api.readiness import readiness
    body, status = readiness(_state())
    return _json(body, status, {"Cache-Control": "no-store"})


@blueprint.get("/openapi.json")
def openapi():
    return _json(g.snapshot.openapi)


# -- collections -------------------------------------------------------------------------------

def _list(entity: Entity, perm: Permission, extra_filters: list = ()) -> Response:
    state = _state()
    allowed = query_fields(entity)
    if perm.visible is not None:
        visible = set(perm.visible)
        allowed = {k: v for k, v in allowed.items() if k not in entity.field_names or k in visible}
    filters = list(extra_filters)
    for key in request.args:
        values = request.args.getlist(key)
        if len(values) > 1:
            raise Problem(ProblemType.BAD_QUERY, f"query parameter {key!r} is given more than once")
        if key in CONTROL_PARAMETERS[:4]:
            continue
        name, sep, op = key.partition("__")
        op = op or "eq"
        f = allowed.get(name)
        if f is None or op not in FILTER_OPERATORS or op not in operators_for(f) \
                or (not sep and name in CONTROL_PARAMETERS):
            raise Problem(ProblemType.BAD_QUERY, f"cannot filter with {key!r}")
        try:
            filters.append(filter_from_query(f, op, values[0]))
        except BadQuery as exc:
            raise Problem(ProblemType.BAD_QUERY, str(exc)) from None
    page_max = int(state.config["PAGE_SIZE_MAX"])
    limit_raw = request.args.get("limit")
    limit = int(state.config["PAGE_SIZE_DEFAULT"])
    if limit_raw is not None:
        try:
            limit = parse_int(limit_raw, low=1, high=page_max)
        except ValueError:
            raise Problem(ProblemType.BAD_QUERY, f"limit must be a whole number from 1 to {page_max}") from None
    total_raw = request.args.get("total", "false")
    if total_raw not in ("true", "false"):
        raise Problem(ProblemType.BAD_QUERY, "total must be true or false")
    page = _store_call(g.snapshot.store.list, entity, filters=filters, sort=request.args.get("sort", "id"),
                       limit=limit, cursor=request.args.get("cursor"), total=total_raw == "true",
                       row_filter=_row_filter(entity), columns=allowed.keys())
    if g.get("break_glass") is not None:
        audit_break_glass(entity, page.items, g.break_glass)   # before any PHI leaves (invariant 8)
    audit_rest_read(entity, perm, page.items)   # invariant 8: recorded before any PHI leaves
    body: dict[str, Any] = {"items": [_visible(entity, perm, r) for r in page.items],
                            "next_cursor": page.next_cursor}
    if page.total is not None:
        body["total"] = page.total
    return _json(body)


@blueprint.route("/<name>", methods=["GET", "POST"])
def collection(name: str):
    entity = _entity(name)
    if request.method in READ_METHODS:
        return _list(entity, _permission(entity, "read"))
    _require_method("POST")
    perm = _permission(entity, "create")
    _reject_unknown_params(())
    body = _body()
    children: dict[str, list] = {}
    children_writable: dict[str, tuple[str, ...]] = {}
    if isinstance(body, dict):
        for child_name in entity.children:
            child = _model().entity(child_name)
            if child.collection in body:
                children_writable[child.collection] = _writable(child, _permission(child, "create"))
                children[child.collection] = body.pop(child.collection)
    return _create(entity, perm, body, children=children, children_writable=children_writable)


def _create(entity: Entity, perm: Permission, body: Any, *, children=None, server_values=None,
            children_writable=None) -> Response:
    values = dict(server_values or {})
    if entity.owner:
        values[entity.owner] = g.principal.user_id
    _refuse_owner(entity, perm, body, partial=False, server_set=tuple(values))
    media = _state().media
    problems = media.rest_problems(entity, body.get("id") if isinstance(body, dict) else None, body, g.principal)
    if problems:   # a platform media reference bound to another user or record (docs/protocol.md §16)
        _raise_validation(problems)
    try:
        record = _store_call(g.snapshot.store.create, entity, body, writable=_writable(entity, perm, create=True),
                             server_values=values, children=children, row_filter=_row_filter(entity),
                             reach=_reach, children_writable=children_writable)
    except Conflict as exc:
        raise Problem(ProblemType.CONFLICT, str(exc)) from None
    media.bind_rest_write(entity, record, g.principal)
    location = f"{API_PREFIX}/{entity.name}/{record['id']}"
    return _record_response(entity, perm, record, 201, {"Location": location})


# -- items -------------------------------------------------------------------------------------

@blueprint.route("/<name>/<record_id>", methods=["GET", "PATCH", "PUT", "DELETE"])
def item(name: str, record_id: str):
    entity = _entity(name)
    store = g.snapshot.store
    if request.method in READ_METHODS:
        perm = _permission(entity, "read")
        _reject_unknown_params(("expand",))
        collections = {_model().entity(c).collection: _model().entity(c) for c in entity.children}
        expand = [c for c in request.args.get("expand", "").split(",") if c]
        for c in expand:
            if c not in collections:
                raise Problem(ProblemType.BAD_QUERY, f"cannot expand {c!r}")
        record = _store_call(store.get, entity, record_id, row_filter=_row_filter(entity))
        if g.get("break_glass") is not None:
            audit_break_glass(entity, [record], g.break_glass)   # before any PHI leaves (invariant 8)
        if_none = request.headers.get("If-None-Match")
        if if_none is not None:
            versions = _etag_versions(if_none, "If-None-Match")
            if "*" in versions or record["version"] in versions:
                return Response(status=304, headers={"ETag": _etag(record)})
        for c in expand:
            child = collections[c]
            _permission(child, "read")
            record[c] = store.children_of(entity, record_id, c, row_filter=_row_filter(child))
        return _record_response(entity, perm, record)
    if request.method == "DELETE":
        perm = _permission(entity, "delete")
        _reject_unknown_params(())
        expected = _expected_version(required=False)
        try:
            _store_call(store.delete, entity, record_id, expected_version=expected, row_filter=_row_filter(entity))
        except Conflict as exc:
            raise Problem(ProblemType.PRECONDITION_FAILED, str(exc)) from None
        return Response(status=204)
    _require_method("PATCH", "PUT")
    perm = _permission(entity, "update")
    _reject_unknown_params(())
    body = _body()
    expected = _expected_version(required=True)
    _refuse_owner(entity, perm, body, partial=True, server_set=())
    media = _state().media
    problems = media.rest_problems(entity, record_id, body, g.principal)
    if problems:
        _raise_validation(problems)
    try:
        record = _store_call(store.update, entity, record_id, body, expected_version=expected,
                             writable=_writable(entity, perm), replace=request.method == "PUT",
                             row_filter=_row_filter(entity), reach=_reach)
    except Conflict as exc:
        raise Problem(ProblemType.PRECONDITION_FAILED, str(exc)) from None
    media.bind_rest_write(entity, record, g.principal)
    return _record_response(entity, perm, record)


# -- nested child collections ------------------------------------------------------------------

@blueprint.route("/<name>/<record_id>/<collection_name>", methods=["GET", "POST"])
def nested(name: str, record_id: str, collection_name: str):
    parent = _entity(name)
    child = next((_model().entity(c) for c in parent.children
                  if _model().entity(c).collection == collection_name), None)
    if child is None:
        raise Problem(ProblemType.NOT_FOUND, f"{parent.name} has no collection {collection_name!r}")
    _permission(parent, "read")
    _store_call(g.snapshot.store.get, parent, record_id, row_filter=_row_filter(parent))
    if request.method in READ_METHODS:
        perm = _permission(child, "read")
        return _list(child, perm, [Filter(child.parent_field, "eq", record_id)])
    _require_method("POST")
    perm = _permission(child, "create")
    _reject_unknown_params(())
    body = _body()
    if isinstance(body, dict) and child.parent_field in body:
        _raise_validation([FieldProblem(child.parent_field, "is taken from the URL; leave it out")])
    return _create(child, perm, body, server_values={child.parent_field: record_id})
