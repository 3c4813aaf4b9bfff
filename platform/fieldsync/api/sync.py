"""The sync endpoints, `/api/v1/sync/*` (docs/protocol.md, docs/sync-design.md).

Push answers "received" only after the batch is durable in the queue (invariant 1); listeners
apply it later. Pull pages come from `fieldsync.sync.pull`. Bodies may be compressed both ways
(gzip always, zstd when the `zstandard` module is installed); sizes are checked before and after
decompression, so a small bomb cannot inflate past the limit.
"""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import itertools
import json
import re
import zlib
from typing import Any, Mapping

import sqlalchemy as sa
from flask import Blueprint, Response, current_app, g, request, send_file

from fieldsync.api.audit_trail import sync_read_events
from fieldsync.errors import InvalidResume, JsonRefused, NotFound, NotReceived, Problem, ProblemType, SyncReset
from fieldsync.api.auth import audit_event, authenticate_request, record_audit, refuse_device_token
from fieldsync.auth.revocation import REASON_MAX as REVOKE_REASON_MAX, revoke_device
from fieldsync.auth.tokens import Principal, issue_token, new_token_id
from fieldsync.ids import new_id, utc_now
from fieldsync import json_wire
from fieldsync.defs.values import format_datetime
from fieldsync.untrusted import INT32_MAX, INT64_MAX, load_json, parse_int, unstorable_paths
from fieldsync.store.engine import write_transaction
from fieldsync.sync.pull import PullRequest, pull_page, remember_digests, remember_scope, results_for, write_checkpoint
from fieldsync.sync.receive import receive_push
from fieldsync.sync.scope import device_scope
from fieldsync.transfer.snapshots import manifest_keys, subset_hash
from fieldsync.store.sync_tables import DEVICE_TOKENS, DEVICES, note_pull, unsettled
from fieldsync.store.changelog import head_position

try:  # optional: zstd is preferred when both sides have it
    import zstandard
except ImportError:  # pragma: no cover - the package is a dependency; this keeps the server up without it
    zstandard = None

__all__ = ["blueprint", "PROTOCOL_VERSION"]

PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOLS = [1]
COMPRESS_OVER = 1024
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
blueprint = Blueprint("fieldsync_sync", __name__)
NO_PROTOCOL_HEADER = {"fieldsync_sync.capabilities", "fieldsync_sync.schema"}
# admin endpoints (an operator's curl, the admin UI) are not the device protocol: the header is
# optional there, and checked only when sent
PROTOCOL_HEADER_OPTIONAL = {"fieldsync_sync.list_devices", "fieldsync_sync.device_status", "fieldsync_sync.revoke"}
# the audit channel of authentication events (session start, refusals) and device registration:
# `sync` for the device endpoints, `admin` for the administrators' ones. The PHI a push or a pull
# carries is audited on the `push` / `pull` channels (the direction the data went).
AUDIT_CHANNELS = {"fieldsync_sync.list_devices": "admin", "fieldsync_sync.revoke": "admin"}
NOT_AN_ENDPOINT = "fieldsync_sync.not_an_endpoint"
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def _state():
    return current_app.extensions["fieldsync"]


def _encodings() -> list[str]:
    return (["zstd"] if zstandard is not None else []) + ["gzip"]


def _problem(kind: ProblemType, detail: str, **extra: Any) -> Problem:
    return Problem(kind, detail, extra=extra)


def _now():
    clock = _state().clock
    return clock() if clock is not None else utc_now()


# -- request handling --------------------------------------------------------------------------

@blueprint.before_request
def _authenticate() -> None:
    g.snapshot = _state().current()   # one model for the whole request (api/app.py)
    if request.endpoint == NOT_AN_ENDPOINT:
        return   # answered 404/405 from the route table alone: nothing to authenticate
    optional = request.endpoint in PROTOCOL_HEADER_OPTIONAL and "Fieldsync-Protocol" not in request.headers
    if request.endpoint not in NO_PROTOCOL_HEADER and not optional:
        version = request.headers.get("Fieldsync-Protocol", "")
        if version.strip() not in {str(v) for v in SUPPORTED_PROTOCOLS}:
            raise _problem(ProblemType.PROTOCOL_UNSUPPORTED,
                           f"send the header Fieldsync-Protocol with one of {SUPPORTED_PROTOCOLS}",
                           supported=SUPPORTED_PROTOCOLS)
    if request.endpoint == "fieldsync_sync.capabilities":
        return
    # 401 `unauthenticated` (with a `reason`), 429 `too-many-requests`; idle timeout and
    # revocation of user and device tokens (docs/access.md)
    g.principal = authenticate_request(kind=ProblemType.UNAUTHENTICATED,
                                       channel=AUDIT_CHANNELS.get(request.endpoint, "sync"))


@blueprint.after_request
def _compress(response: Response) -> Response:
    response.headers["Fieldsync-Protocol"] = str(PROTOCOL_VERSION)
    # the device measures its clock offset over round trips with this (protocol §8.1)
    response.headers["Fieldsync-Server-Time"] = format_datetime(_now())
    if response.direct_passthrough or response.status_code < 200 or "Content-Encoding" in response.headers:
        return response
    data = response.get_data()
    if len(data) <= COMPRESS_OVER:
        return response
    accepted = {p.split(";")[0].strip().lower() for p in request.headers.get("Accept-Encoding", "").split(",")}
    if "zstd" in accepted and zstandard is not None:
        response.set_data(zstandard.ZstdCompressor(level=3).compress(data))
        response.headers["Content-Encoding"] = "zstd"
    elif "gzip" in accepted:
        response.set_data(gzip.compress(data, compresslevel=6, mtime=0))
        response.headers["Content-Encoding"] = "gzip"
    else:
        return response
    response.headers["Vary"] = "Accept-Encoding"
    return response


@blueprint.errorhandler(413)
def _body_too_large(_exc):
    # Flask refuses a body whose Content-Length is over MAX_CONTENT_LENGTH before we read it;
    # answer it like our own check, with max_bytes, so clients split the batch the same way
    from fieldsync.api.problems import problem_response
    return problem_response(_too_large(_limit_bytes()))


def _limit_bytes() -> int:
    return int(_state().config["MAX_BODY_BYTES"])


def _too_large(limit: int) -> Problem:
    return _problem(ProblemType.PAYLOAD_TOO_LARGE,
                    f"the request body is over {limit} bytes (compressed or decompressed); split the batch",
                    max_bytes=limit)


def _body() -> Any:
    """The JSON body, decompressed within the size limit."""
    limit = _limit_bytes()
    raw = request.get_data(cache=False)
    if len(raw) > limit:
        raise _too_large(limit)
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding == "gzip":
        try:
            d = zlib.decompressobj(wbits=31)
            raw = d.decompress(raw, limit + 1)
        except zlib.error:
            raise _problem(ProblemType.MALFORMED_REQUEST, "the gzip body is corrupt") from None
        if len(raw) > limit:
            raise _too_large(limit)
    elif coding == "zstd" and zstandard is not None:
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(raw)
            raw = reader.read(limit + 1)
        except zstandard.ZstdError:
            raise _problem(ProblemType.MALFORMED_REQUEST, "the zstd body is corrupt") from None
        if len(raw) > limit:
            raise _too_large(limit)
    elif coding not in ("identity", ""):
        raise Problem(ProblemType.UNSUPPORTED_ENCODING,
                      f"Content-Encoding {coding!r} is not supported; use gzip",
                      headers={"Accept-Encoding": ", ".join(_encodings())})
    try:
        body = load_json(raw)   # depth bounded before parsing (fieldsync.untrusted)
    except JsonRefused as exc:
        raise _problem(ProblemType.MALFORMED_REQUEST, f"the body {exc}") from None
    if b"\\u0000" in raw or b"\x00" in raw or _SURROGATE_ESCAPE.search(raw):   # most bodies have none
        # NUL and lone surrogates would reach the database (which cannot store them) as a device
        # id, a scope hash, an entity name...; a mutation's field values are checked with the
        # rest of its values when its batch is applied (a rejection naming the field)
        found = list(itertools.islice(unstorable_paths(body, skip=("mutations[*].fields",)), 5))
        if found:
            raise _malformed([{"field": path, "reason": reason} for path, reason in found])
    return body


def _body_object() -> dict[str, Any]:
    """The body, which every sync POST sends as a JSON object."""
    body = _body()
    if not isinstance(body, dict):
        raise _malformed([{"field": "", "reason": "must be a JSON object"}])
    return body


def _malformed(errors: list[dict[str, str]]) -> Problem:
    return _problem(ProblemType.MALFORMED_REQUEST,
                    "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5]), errors=errors)


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(json_wire.dumps_bytes(body), status=status, mimetype="application/json")
    for k, v in (headers or {}).items():
        response.headers[k] = v
    return response


def _capabilities() -> dict[str, Any]:
    config = _state().config
    return {"protocol": SUPPORTED_PROTOCOLS, "encodings": _encodings(), "max_request_bytes": _limit_bytes(),
            "max_mutations": int(config["SYNC_MAX_MUTATIONS"]), "max_pull_limit": int(config["SYNC_MAX_PULL_LIMIT"]),
            "retention_days": int(config["RETENTION_DAYS"]), "schema_version": g.snapshot.model.schema_version,
            "bundles": _state().bundles is not None and _state().bundles.enabled,
            "manifest_keys": manifest_keys(_state().crypto.keyring),
            "push_bundle": {"max_mutations": int(config["PUSH_BUNDLE_MAX_MUTATIONS"]),
                            "max_bytes": int(config["TRANSFER_MAX_BYTES"])}}


def _iso(value) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return format_datetime(value)


def _device_status(conn: sa.Connection, row: Mapping[str, Any], head: int | None = None) -> dict[str, Any]:
    head = head_position(conn) if head is None else head
    pending = unsettled(conn, row["device_id"])   # on this connection, not a new one per device
    return {"device_id": row["device_id"], "user_id": row["user_id"], "status": row["status"],
            "platform": row["platform"], "app_version": row["app_version"], "schema_version": row["schema_version"],
            "registered_at": _iso(row["registered_at"]), "last_contact_at": _iso(row["last_contact_at"]),
            "scope_hash": row["scope_hash"], "acked_cursor": row["acked_cursor"], "head": head,
            "behind": max(head - row["acked_cursor"], 0), "last_received_seq": row["last_received_seq"],
            "results_through": row["results_through"], "unsettled": pending, "rejected_permanent": row["rejected"],
            "device_reported": json.loads(row["reported"]) if row["reported"] else None,
            "write_checkpoint": write_checkpoint(conn, row["device_id"])}


def _device(conn: sa.Connection, device_id: Any) -> Mapping[str, Any]:
    """The caller's device row; problems for unknown, foreign or revoked devices."""
    if not isinstance(device_id, str) or not device_id:
        raise _malformed([{"field": "device_id", "reason": "is required"}])
    row = conn.execute(sa.select(DEVICES).where(DEVICES.c.device_id == device_id)).mappings().first()
    if row is None:
        raise _problem(ProblemType.UNKNOWN_DEVICE, f"no device {device_id}; register again")
    principal: Principal = g.principal
    if row["user_id"] != principal.user_id:
        raise _problem(ProblemType.DEVICE_USER_MISMATCH, "this device is registered to another user")
    if principal.device_id is not None and principal.device_id != device_id:
        raise _problem(ProblemType.DEVICE_TOKEN_MISMATCH, "a device token speaks for its own device only")
    if row["status"] == "revoked":
        raise _problem(ProblemType.DEVICE_REVOKED, "an administrator revoked this device")
    return row


def _schema_version(body: Mapping[str, Any], *, pull: bool) -> int:
    version = body.get("schema_version")
    server = g.snapshot.model.schema_version
    try:
        if not isinstance(version, int):   # a JSON integer, not a string of digits
            raise ValueError
        version = parse_int(version, low=1, high=INT32_MAX)
    except ValueError:
        raise _malformed([{"field": "schema_version", "reason": f"must be an integer from 1 to {INT32_MAX}"}]) from None
    if version > server:
        raise _problem(ProblemType.SCHEMA_TOO_NEW,
                       f"the device speaks schema version {version}; this server has {server}",
                       schema_version=server)
    if pull and version < server:
        raise _problem(ProblemType.SCHEMA_UPGRADE_REQUIRED,
                       f"the device has schema version {version}; the server has {server}",
                       schema_version=server, schema_url=f"{request.script_root}/api/v1/sync/schema?from={version}")
    return version


def _synced_versions(body: Mapping[str, Any], schema_version: int) -> dict[str, Any]:
    """The device row's `schema_version` and `app_version` as of this push or pull: what admins
    see is the version a device last synced with, not the one it registered with."""
    values: dict[str, Any] = {"schema_version": schema_version}
    app_version = body.get("app_version")
    if app_version is not None:
        if not isinstance(app_version, str) or len(app_version) > 64:
            raise _malformed([{"field": "app_version", "reason": "must be a string of at most 64 characters"}])
        values["app_version"] = app_version
    return values


def _int_arg(body: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    """An integer member or query parameter: a JSON integer or a string of ASCII digits."""
    value = body.get(name, default)
    if value is None:
        value = default
    try:
        return parse_int(value, low=low, high=high)
    except ValueError:
        raise _malformed([{"field": name, "reason": f"must be an integer from {low} to {high}"}]) from None


# -- endpoints ---------------------------------------------------------------------------------

@blueprint.route("/", methods=ANY_METHOD, endpoint="not_an_endpoint", defaults={"rest": ""})
@blueprint.route("/<path:rest>", methods=ANY_METHOD, endpoint="not_an_endpoint")
def not_an_endpoint(rest: str):
    """§2.5: every other path under /api/v1/sync/ is a 404, and a sync endpoint asked with a
    method it does not take a 405 with `Allow`; without this, the entity routes would take the
    path for an entity (`/<name>/<id>`) and answer with REST's problems (a device token's 403)."""
    allowed = _sync_routes().allowed_methods(request.path)
    if allowed:
        raise Problem(ProblemType.METHOD_NOT_ALLOWED,
                      f"{request.method} is not allowed here", headers={"Allow": ", ".join(sorted(allowed))})
    raise Problem(ProblemType.NOT_FOUND, f"no sync endpoint {request.path} (docs/protocol.md §2.6)")


def _sync_routes():
    """The sync endpoints' own rules, without this fallback, bound for matching paths."""
    from werkzeug.routing import Map, Rule
    cached = current_app.extensions.get("fieldsync_sync_routes")
    if cached is None:
        rules = [Rule(r.rule, methods=r.methods, endpoint=r.endpoint) for r in current_app.url_map.iter_rules()
                 if r.endpoint.startswith(blueprint.name + ".") and r.endpoint != NOT_AN_ENDPOINT]
        cached = current_app.extensions["fieldsync_sync_routes"] = Map(rules).bind("localhost")
    return cached


@blueprint.get("/capabilities")
def capabilities():
    return _json(_capabilities())


@blueprint.get("/schema")
def schema():
    """§7.2: the generated `device/schema.json` of the current model, byte for byte (its header
    names the definitions by their directory's name, as `fieldsync generate` does)."""
    model = g.snapshot.model
    cached = current_app.extensions.get("fieldsync_device_schema")
    if cached is None or cached[0] is not model:
        from pathlib import Path
        from fieldsync.codegen.render import device_schema_file
        label = Path(str(_state().config["DEFS_DIR"])).resolve().name
        cached = current_app.extensions["fieldsync_device_schema"] = (model, device_schema_file(model, label))
    return Response(cached[1], mimetype="application/json")


@blueprint.post("/devices")
def register():
    body = _body_object()
    install_id = body.get("install_id")
    errors = []
    if not isinstance(install_id, str) or not 0 < len(install_id) <= 64:
        errors.append({"field": "install_id", "reason": "must be a string of 1 to 64 characters"})
    for name in ("platform", "app_version"):
        if body.get(name) is not None and (not isinstance(body[name], str) or len(body[name]) > 64):
            errors.append({"field": name, "reason": "must be a string of at most 64 characters"})
    issue_secret = body.get("issue_secret", False)
    if not isinstance(issue_secret, bool):
        errors.append({"field": "issue_secret", "reason": "must be a boolean"})
    if errors:
        raise _malformed(errors)
    version = _schema_version(body, pull=False)
    principal: Principal = g.principal
    refuse_device_token(principal, "register a device")   # the user authenticates a device, not itself
    now = _now()
    state = _state()
    wanted_id = body.get("device_id")
    token_id = new_token_id()
    with write_transaction(state.engine) as conn:
        row = conn.execute(sa.select(DEVICES).where(DEVICES.c.user_id == principal.user_id,
                                                    DEVICES.c.install_id == install_id)).mappings().first()
        status = 200
        if row is None:
            if wanted_id is not None:
                # a device whose registration the server lost re-creates it under its old id
                # (docs/protocol.md §3.2): its outbox seqs stay valid
                if not isinstance(wanted_id, str) or len(wanted_id) > 36:
                    raise _malformed([{"field": "device_id", "reason": "must be a device id"}])
                other = conn.execute(sa.select(DEVICES.c.user_id).where(DEVICES.c.device_id == wanted_id)).first()
                if other is not None:
                    raise _problem(ProblemType.DEVICE_USER_MISMATCH,
                                   "this device id is registered to another user or install")
            device_id = wanted_id or new_id(now)
            conn.execute(DEVICES.insert().values(
                device_id=device_id, user_id=principal.user_id, install_id=install_id, platform=body.get("platform"),
                app_version=body.get("app_version"), schema_version=version, status="active", role=principal.role,
                registered_at=now, last_contact_at=now))
            status = 201
            row = conn.execute(sa.select(DEVICES).where(DEVICES.c.device_id == device_id)).mappings().one()
        else:
            if row["status"] == "revoked":   # a revoked device gets no new token (docs/access.md)
                raise _problem(ProblemType.DEVICE_REVOKED, "an administrator revoked this device")
            conn.execute(DEVICES.update().where(DEVICES.c.device_id == row["device_id"]).values(
                last_contact_at=now, schema_version=version, app_version=body.get("app_version", row["app_version"])))
        _supersede_device_tokens(conn, row["device_id"], token_id, now)
        record_audit(audit_event(action="auth", channel="sync", actor=principal.user_id, role=principal.role,
                                 device=row["device_id"], detail={"event": "device_token_issued", "token_id": token_id,
                                                                  "source_ip": request.remote_addr or "unknown"}),
                     conn)   # in the registration's transaction: no token without its audit entry
        secret = _issue_device_secret(conn, row, principal, now) if issue_secret else None
    out = {"device_id": row["device_id"], "user_id": row["user_id"], "registered_at": _iso(row["registered_at"]),
           "schema_version": g.snapshot.model.schema_version, "capabilities": _capabilities()}
    if secret is not None:
        out["device_secret"] = base64.b64encode(secret).decode("ascii")
    ttl = int(state.config["DEVICE_TOKEN_TTL_SECONDS"])
    issued = int(state.auth_clock())
    out["device_token"] = issue_token(state.secret, principal.user_id, principal.role, principal.attributes, ttl=ttl,
                                      now=issued, device_id=row["device_id"], token_id=token_id)
    out["device_token_expires_at"] = format_datetime(dt.datetime.fromtimestamp(issued + ttl, dt.timezone.utc))
    return _json(out, status, {"Location": f"{request.script_root}/api/v1/sync/devices/{row['device_id']}"})


def _supersede_device_tokens(conn: sa.Connection, device_id: str, token_id: str, now) -> None:
    """Make `token_id` the device's only valid device token (§3.1): the session check refuses
    the earlier ones with reason `superseded`."""
    updated = conn.execute(DEVICE_TOKENS.update().where(DEVICE_TOKENS.c.device_id == device_id)
                           .values(token_id=token_id, issued_at=now)).rowcount
    if not updated:
        conn.execute(DEVICE_TOKENS.insert().values(device_id=device_id, token_id=token_id, issued_at=now))


def _issue_device_secret(conn: sa.Connection, row: Mapping[str, Any], principal: Principal, now) -> bytes:
    """The device's store secret (docs/device-store.md), audited as a key operation in the
    registration's transaction. Never for a revoked device."""
    from fieldsync.crypto.providers import key_provider_from_config
    from fieldsync.sync.device_secrets import DeviceSecrets

    if row["status"] == "revoked":
        raise _problem(ProblemType.DEVICE_REVOKED, "an administrator revoked this device")
    device_id = row["device_id"]
    extensions = current_app.extensions
    if "fieldsync_device_secrets" not in extensions:
        extensions["fieldsync_device_secrets"] = DeviceSecrets(key_provider_from_config(_state().config))
    secret, first = extensions["fieldsync_device_secrets"].issue(conn, device_id, now)
    record_audit(audit_event(action="key", channel="sync", actor=principal.user_id, role=principal.role,
                             device=device_id, detail={"event": "device_secret_issued" if first
                                                       else "device_secret_reissued"}), conn)
    return secret


@blueprint.get("/devices")
def list_devices():
    refuse_device_token(g.principal, "list devices")
    if g.principal.role != "admin":
        raise Problem(ProblemType.FORBIDDEN, "only an admin may list devices")
    state = _state()
    with state.engine.connect() as conn:
        rows = list(conn.execute(sa.select(DEVICES).order_by(DEVICES.c.user_id, DEVICES.c.registered_at)).mappings())
        head = head_position(conn)   # once for the list, not once per device
        return _json({"items": [_device_status(conn, r, head) for r in rows]})


@blueprint.get("/devices/<device_id>")
def device_status(device_id: str):
    state = _state()
    with state.engine.connect() as conn:
        row = conn.execute(sa.select(DEVICES).where(DEVICES.c.device_id == device_id)).mappings().first()
        principal: Principal = g.principal
        mine = row is not None and row["user_id"] == principal.user_id \
            and principal.device_id in (None, device_id)   # a device token sees its own device only
        if row is None or not (mine or (principal.role == "admin" and principal.device_id is None)):
            raise _problem(ProblemType.UNKNOWN_DEVICE, f"no device {device_id}")
        return _json(_device_status(conn, row))


@blueprint.post("/devices/<device_id>/revoke")
def revoke(device_id: str):
    """An admin revokes a device: every token of it is refused from now on (401 `revoked`),
    its syncs with a user token are 403 `device-revoked`; audited with the reason."""
    principal: Principal = g.principal
    refuse_device_token(principal, "revoke a device")
    if principal.role != "admin":
        raise Problem(ProblemType.FORBIDDEN, "only an admin may revoke devices")
    body = _body_object()
    reason = body.get("reason")
    if not isinstance(reason, str) or not reason.strip() or len(reason) > REVOKE_REASON_MAX:
        raise _malformed([{"field": "reason", "reason": f"is required: why the device is revoked "
                                                        f"(1 to {REVOKE_REASON_MAX} characters)"}])
    state = _state()
    try:
        before = revoke_device(state.engine, state.audit, device_id, reason=reason, actor=principal.user_id,
                               role=principal.role, detail={"source_ip": request.remote_addr or "unknown"})
    except NotFound:
        raise _problem(ProblemType.UNKNOWN_DEVICE, f"no device {device_id}") from None
    with state.engine.connect() as conn:
        row = conn.execute(sa.select(DEVICES).where(DEVICES.c.device_id == device_id)).mappings().one()
        return _json({**_device_status(conn, row), "already_revoked": before["status"] == "revoked"})


def _check_mutations(mutations: Any, limit: int) -> None:
    if not isinstance(mutations, list):
        raise _malformed([{"field": "mutations", "reason": "must be a list"}])
    if len(mutations) > limit:
        raise _problem(ProblemType.PAYLOAD_TOO_LARGE,
                       f"{len(mutations)} mutations in one push; at most {limit}", max_mutations=limit)
    errors = []
    last = 0
    for i, m in enumerate(mutations):
        if not isinstance(m, dict):
            errors.append({"field": f"mutations[{i}]", "reason": "must be an object"})
            continue
        seq = m.get("seq")
        try:   # a JSON integer (not a string of digits) that fits the ledger's 64-bit column
            seq = parse_int(seq, low=1, high=INT64_MAX) if isinstance(seq, int) else None
        except ValueError:
            seq = None
        if seq is None:
            errors.append({"field": f"mutations[{i}].seq", "reason": f"must be an integer from 1 to {INT64_MAX}"})
        elif seq <= last:
            errors.append({"field": f"mutations[{i}].seq", "reason": "seqs must be strictly ascending"})
        else:
            last = seq
    if errors:
        raise _malformed(errors)


@blueprint.post("/push")
def push():
    """§4: the seqs made durable and the duplicates' stored results, from `receive_push`."""
    body = _body_object()
    state = _state()
    mutations = body.get("mutations")
    _check_mutations(mutations, int(state.config["SYNC_MAX_MUTATIONS"]))
    version = _schema_version(body, pull=False)
    principal: Principal = g.principal
    try:
        receipt = receive_push(
            state.sync, g.snapshot.store, state.audit, principal, body, mutations=mutations, schema_version=version,
            device_values=_synced_versions(body, version), now=_now(), authorize=_device,
            disclosed=lambda conn, device_id, results: sync_read_events(conn, g.snapshot.store, principal, device_id,
                                                                        results=results, channel="push"))
    except NotReceived as exc:
        current_app.logger.error("the push queue refused a batch", exc_info=exc.__cause__)
        raise _problem(ProblemType.UNAVAILABLE, str(exc)) from None
    return _json(receipt.to_wire(), 202)


def _check_bundle_mutations(mutations: list) -> None:
    """A push's checks over a whole bundle (its size was checked already); a refusal names its
    first hundred problems, not one per mutation of a bundle of thousands."""
    try:
        _check_mutations(mutations, len(mutations))
    except Problem as problem:
        if isinstance(problem.extra.get("errors"), list):
            problem.extra["errors"] = problem.extra["errors"][:100]
        raise


@blueprint.post("/push-bundle")
def push_bundle():
    """§4.7: commit an outbox bundle uploaded over tus; answered as a push (§4.2)."""
    from fieldsync.transfer.outbox_bundle import receive_bundle
    body = _body_object()
    state = _state()
    version = _schema_version(body, pull=False)
    principal: Principal = g.principal
    now = _now()

    def receive(mutations):
        return receive_push(
            state.sync, g.snapshot.store, state.audit, principal, body, mutations=mutations, schema_version=version,
            device_values=_synced_versions(body, version), now=now, authorize=_device,
            disclosed=lambda conn, device_id, results: sync_read_events(conn, g.snapshot.store, principal, device_id,
                                                                        results=results, channel="push"))
    try:
        answer = receive_bundle(state.transfer, principal, body,
                                max_mutations=int(state.config["PUSH_BUNDLE_MAX_MUTATIONS"]),
                                batch=int(state.config["SYNC_MAX_MUTATIONS"]),
                                check=_check_bundle_mutations, receive=receive)
    except NotReceived as exc:
        current_app.logger.error("the push queue refused a bundle's batch", exc_info=exc.__cause__)
        raise _problem(ProblemType.UNAVAILABLE, str(exc)) from None
    return _json(answer, 202)


@blueprint.get("/results")
def results():
    args = request.args
    state = _state()
    after = _int_arg(args, "after_seq", 0, 0, 2 ** 53)
    limit = _int_arg(args, "limit", 1000, 1, 1000)
    now = _now()
    with state.engine.connect() as conn:
        device = _device(conn, args.get("device_id"))
        scope = device_scope(g.snapshot.model, g.principal, now, g.snapshot.store.codec)
        items, has_more = results_for(conn, g.snapshot.store, scope, device["device_id"], after, limit)
        state.audit.record_all(sync_read_events(conn, g.snapshot.store, g.principal, device["device_id"],
                                                results=items))   # invariant 8: before PHI leaves
        return _json({"results": items, "has_more": has_more,
                      "write_checkpoint": write_checkpoint(conn, device["device_id"]),
                      "unsettled": unsettled(conn, device["device_id"]),
                      "last_received_seq": device["last_received_seq"]})


@blueprint.post("/pull")
def pull():
    body = _body_object()
    state = _state()
    synced = _synced_versions(body, _schema_version(body, pull=True))
    max_limit = int(state.config["SYNC_MAX_PULL_LIMIT"])
    req = PullRequest(device_id=body.get("device_id"), cursor=_int_arg(body, "cursor", 0, 0, 2 ** 53),
                      resume=body.get("resume") if isinstance(body.get("resume"), str) else None,
                      scope_hash=body.get("scope_hash") if isinstance(body.get("scope_hash"), str) else None,
                      limit=_int_arg(body, "limit", 1000, 1, max_limit),
                      results_after=_int_arg(body, "results_after", 0, 0, 2 ** 53),
                      refetch=body.get("refetch") if isinstance(body.get("refetch"), list) else [])
    if len(req.refetch) > 1000:
        raise _malformed([{"field": "refetch", "reason": "at most 1000 records"}])
    now = _now()
    principal: Principal = g.principal
    snapshot = g.snapshot
    scope = device_scope(snapshot.model, principal, now, snapshot.store.codec)
    # read the page in one transaction, then write the bookkeeping in a short write transaction:
    # on SQLite a read transaction cannot be upgraded to a write while listeners commit
    with state.engine.connect() as conn, conn.begin():
        device = _device(conn, req.device_id)
        try:
            page = pull_page(conn, snapshot.store, scope, req, secret=state.secret_bytes, now=now,
                             offer_bundle=_bundle_offerer(body, snapshot.store, scope),
                             own_device=device["device_id"])
        except SyncReset as reset:
            raise _problem(ProblemType.SYNC_RESET, reset.detail, horizon=reset.horizon,
                           reason=reset.reason) from None
        except InvalidResume as exc:
            raise _problem(ProblemType.INVALID_RESUME, str(exc)) from None
        items, more_results = results_for(conn, snapshot.store, scope, device["device_id"], req.results_after)
        checkpoint = write_checkpoint(conn, device["device_id"])
        bundle_phi = page.pop("_disclosed", [])   # the PHI a bundle hands out, audited like a page's
        partial = page.pop("_partial", None)      # the device's digests after the bundle, the phase going on
        disclosed = sync_read_events(conn, snapshot.store, principal, device["device_id"],
                                     changes=page["changes"] + bundle_phi, results=items)
    with write_transaction(state.engine) as conn:
        state.audit.append_all(conn, disclosed)   # invariant 8: the page's PHI, before it is sent
        remember_scope(conn, scope, now)
        if partial is not None:
            remember_digests(conn, page["bundle"]["scope_hash"], partial, now)
        values: dict[str, Any] = {"last_contact_at": now, "role": principal.role, **synced}
        if page["resume"] is None:
            values["scope_hash"] = page["scope_hash"]
        note_pull(conn, device["device_id"], values, served=page["cursor"], acked=req.cursor)
    out = {"device_id": device["device_id"], "schema_version": snapshot.model.schema_version, **page,
           "results": items, "more_results": more_results, "write_checkpoint": checkpoint,
           "unsettled": state.sync.unsettled(device["device_id"])}
    return _json(out)


def _bundle_offerer(body: Mapping[str, Any], store, scope):
    """The snapshot-bundle offer of a pull whose device reads bundles (`"bundles": true`)."""
    bundles = _state().bundles
    if body.get("bundles") is not True or bundles is None:
        return None
    return lambda changed, gone, cursor, old: bundles.offer(store, scope, changed, cursor, clear=gone, old_digests=old)


@blueprint.route("/bundles/<bundle_id>", methods=["GET", "HEAD"])
def bundle(bundle_id: str):
    """A snapshot bundle's sealed bytes, with Range (a cut download resumes at its next chunk).
    Only to a principal whose scope is the bundle's: anyone else gets the 404 of a bundle that
    does not exist."""
    state = _state()
    row = state.bundles.find(bundle_id) if state.bundles is not None else None
    if row is not None:
        scope = device_scope(g.snapshot.model, g.principal, _now(), g.snapshot.store.codec)
        if (subset_hash(scope, json.loads(row["entities"])) != row["scope_hash"]
                or row["schema_version"] != g.snapshot.model.schema_version):
            row = None
    if row is None:
        raise _problem(ProblemType.NOT_FOUND, "no such bundle (it may have been replaced: pull again for a new one)")
    response = send_file(state.bundles.path(bundle_id), mimetype="application/octet-stream", conditional=True,
                         etag=bundle_id, max_age=0)
    response.headers["Cache-Control"] = "private, no-store"
    return response


@blueprint.post("/ack")
def ack():
    body = _body_object()
    state = _state()
    cursor = _int_arg(body, "cursor", 0, 0, 2 ** 53)
    through = _int_arg(body, "results_through", 0, 0, 2 ** 53)
    reported = {k: body[k] for k in ("outbox", "quarantined") if k in body}
    now = _now()
    with write_transaction(state.engine) as conn:
        device = _device(conn, body.get("device_id"))
        if cursor > device["served_cursor"]:
            raise _malformed([{"field": "cursor", "reason": f"is above any cursor served to this device "
                                                           f"({device['served_cursor']})"}])
        values = {"acked_cursor": max(cursor, device["acked_cursor"]),
                  "results_through": max(through, device["results_through"]), "last_contact_at": now}
        if reported:
            values["reported"] = json.dumps({**reported, "at": format_datetime(now)})
        conn.execute(DEVICES.update().where(DEVICES.c.device_id == device["device_id"]).values(**values))
        head = head_position(conn)
    return _json({"device_id": device["device_id"], "acked_cursor": values["acked_cursor"],
                  "results_through": values["results_through"], "head": head})
