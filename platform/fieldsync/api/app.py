"""The Flask application factory and the live state every request reads.

`create_app(config)` builds everything; importing this module does no work. The model is held
by `FieldsyncState` (on `app.extensions["fieldsync"]`) and looked up per request, so
`state.swap_model(new_model)` changes entities, tables and the OpenAPI document of a running
server without a restart.

Live definitions (docs/decisions.md, "Live definitions"): every applied model version is a row
of `fs_schema` (store/migrate.py). Each request, and each push batch a listener applies, starts
with `state.current()`, which reads the newest version number (one primary-key read) and, when
another process applied a newer one, builds that version's model from its recorded YAML texts
and swaps to it. A request keeps the snapshot it started with; one that meets a table change
made under it (a renamed column) fails inside its rolled-back transaction and is dispatched
once more on the new snapshot, so a change never answers 500.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Mapping

import sqlalchemy as sa
from flask import Flask, g, request

from fieldsync.dependencies import Dependencies
from fieldsync.errors import Problem, ProblemType
from fieldsync.codegen.openapi import API_PREFIX, openapi_document
from fieldsync.config import Config, load_config
from fieldsync.defs.model import Model
from fieldsync.defs.values import FieldProblem
from fieldsync.untrusted import NUL_REASON
from fieldsync.crypto.keyring import crypto_from_config, prepare_keys
from fieldsync.store.engine import database_unavailable, describe_unavailable, engine_options, make_engine, watch_engine
from fieldsync.store.changelog import ChangeLog, create_changelog_tables
from fieldsync.store.records import RecordStore
from fieldsync.ids import utc_now
from fieldsync.store.tables import build_metadata
from fieldsync.store.versions import latest_version_id, read_version

log = logging.getLogger("fieldsync.api")


@dataclass(frozen=True)
class Snapshot:
    """One consistent view: a model with its record store and OpenAPI document."""

    model: Model
    store: RecordStore
    openapi: dict[str, Any]


def migrate_tables(engine: sa.Engine, model: Model) -> sa.MetaData:
    """Bring the database up to `model`: the teammate-owned additive migrator when it exists,
    otherwise `create_all` (creates missing tables, never alters existing ones)."""
    try:
        from fieldsync.store.migrate import auto_migrate
    except ImportError:
        auto_migrate = None
    metadata = build_metadata(model)
    if auto_migrate is not None:
        auto_migrate(engine, model)
    else:
        metadata.create_all(engine)
    return metadata


class FieldsyncState:
    """The live model, database engine and token secret of one app."""

    def __init__(self, config: Config, engine: sa.Engine, model: Model, *, clock=None):
        self.config = config
        self.engine = engine
        self.secret = config.secret_key()
        self.clock = clock
        # field-level encryption (docs/encryption.md): one codec for the record store and the
        # change log, so PHI is ciphertext in both
        self.crypto = crypto_from_config(config, engine)
        self.changelog = ChangeLog(codec=self.crypto, clock=clock or utc_now)
        self.sync = None  # the SyncService, set by create_app
        self.bundles = None  # the BundleService (transfer/snapshots.py), set by create_app
        self.audit = None  # the AuditLog (fieldsync.audit.trail), set by create_app
        # how the database, push queue, key provider and object store last answered (readiness)
        self.dependencies = Dependencies()
        _report_outcomes(self)
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self.version: int | None = None   # the applied version (fs_schema id) the snapshot follows
        self.swap_model(model)

    @property
    def secret_bytes(self) -> bytes:
        return self.secret.encode() if isinstance(self.secret, str) else self.secret

    @property
    def snapshot(self) -> Snapshot:
        """The current model, store and document (read once per request, then used throughout)."""
        assert self._snapshot is not None
        return self._snapshot

    @property
    def model(self) -> Model:
        return self.snapshot.model

    @property
    def store(self) -> RecordStore:
        return self.snapshot.store

    def current(self) -> Snapshot:
        """The snapshot for one request or push batch, after following the applied version."""
        self.refresh()
        return self.snapshot

    def refresh(self) -> bool:
        """Swap to the newest applied model version if it is not the one served; True if swapped.
        Cheap when nothing changed: one read of fs_schema's largest id."""
        with self.engine.connect() as conn:
            latest = latest_version_id(conn)
            if latest is None or latest == self.version:
                return False
            with self._lock:
                if latest == self.version:
                    return False   # another thread of this process swapped meanwhile
                row = read_version(conn, latest)
                model = self._model_of(row) if row is not None else None
                if model is not None:
                    self._install(model, build_metadata(model))   # already migrated by whoever applied it
                    log.info("swapped to model version %s (schema_version %s, fingerprint %s)",
                             latest, model.schema_version, model.fingerprint())
                self.version = latest
                return model is not None

    def _model_of(self, row: Mapping[str, Any]) -> Model | None:
        """The model of an applied version: its recorded texts, or (recorded by a server's start,
        without texts) DEFS_DIR when that has the recorded fingerprint; None to keep the current."""
        from fieldsync.defs import DefinitionErrors, build_model, load_model
        current = self.snapshot.model
        try:
            if row.get("definitions"):
                return build_model(row["definitions"], label=f"model version {row['id']}")
            if row["fingerprint"] == current.fingerprint():
                return None
            candidate = load_model(self.config["DEFS_DIR"])
        except DefinitionErrors:
            log.exception("model version %s does not build; keeping the current model", row["id"])
            return None
        if candidate.fingerprint() != row["fingerprint"]:
            log.warning("model version %s was recorded without definitions and DEFS_DIR does not match it; "
                        "keeping the current model", row["id"])
            return None
        return candidate

    def swap_model(self, model: Model) -> None:
        """Migrate the database (when AUTO_MIGRATE) and make `model` the one requests see."""
        with self._lock:
            if self.config.get("AUTO_MIGRATE", True):
                metadata = migrate_tables(self.engine, model)
            else:
                metadata = build_metadata(model)
            self._install(model, metadata)
            with self.engine.connect() as conn:
                self.version = latest_version_id(conn)   # the version it recorded, if any

    def _install(self, model: Model, metadata: sa.MetaData) -> None:
        """Make `model` (with its tables' metadata) the one the next requests see; under _lock."""
        prepare_keys(self.crypto.keyring, model)
        kwargs = {"clock": self.clock} if self.clock is not None else {}
        hooks = list(self._snapshot.store.write_hooks) if self._snapshot else []
        store = RecordStore(self.engine, model, metadata=metadata, changelog=self.changelog, write_hooks=hooks,
                            codec=self.crypto, **kwargs)
        document = openapi_document(model, page_size_max=int(self.config["PAGE_SIZE_MAX"]))
        self._snapshot = Snapshot(model, store, document)  # one assignment: atomic for readers


def _report_outcomes(state: FieldsyncState) -> None:
    """Let the database engine and the key provider tell the dependency registry how each call
    went (readiness, `fieldsync workers status`): no probe, only what the server met anyway."""
    from fieldsync.dependencies import DATABASE, DEGRADED, KEYS
    deps = state.dependencies
    watch_engine(state.engine, lambda: deps.succeeded(DATABASE),
                 lambda exc: deps.failed(DATABASE, describe_unavailable(exc)))
    observers = getattr(state.crypto.keyring.provider, "observers", None)
    if observers is not None:
        # cached data keys keep serving while the provider fails: degraded, not down
        observers.append(lambda ok, exc: deps.succeeded(KEYS) if ok else deps.failed(KEYS, exc, state=DEGRADED))


def _probe(engine: sa.Engine, provider) -> bool:
    """True when the database answers and the key provider is not known to be out (the listener
    pool's check before it claims again after an outage)."""
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception:
        return False
    available = getattr(provider, "available", None)
    return available() if available is not None else True


class _LiveApp(Flask):
    """The fieldsync app: a request that failed in the database because the tables changed under
    its snapshot (another process applied a model version) runs once more on the new snapshot.
    Its failed transaction was rolled back, so it had no effect; pushes are exact-once anyway."""

    def dispatch_request(self):
        try:
            return super().dispatch_request()
        except sa.exc.DBAPIError as exc:
            if database_unavailable(exc):
                raise   # an outage, not a model change: answered 503 at once (api/problems.py)
            state = self.extensions["fieldsync"]
            started = g.get("snapshot")
            if started is None or not state.refresh() and state.snapshot is started:
                raise
            g.snapshot = state.snapshot
            log.info("%s %s met a model change in flight; dispatched again on the new model",
                     request.method, request.path)
            return super().dispatch_request()


def _refuse_nul_in_url() -> None:
    """A NUL character in the path or a query parameter is a 400 naming where it is: PostgreSQL
    refuses NUL in text, so it would fail the first lookup it reaches (SQLite would miss)."""
    where = "path" if "\x00" in request.path else next(
        (key for key, value in request.args.items(multi=True) if "\x00" in key or "\x00" in value), None)
    if where is not None:
        shown = where.replace("\x00", "\\x00")
        raise Problem(ProblemType.BAD_REQUEST,
                      f"the {'request path' if where == 'path' else f'query parameter {shown!r}'} {NUL_REASON}",
                      errors=[FieldProblem(shown, NUL_REASON)])


def create_app(config: Mapping[str, Any] | None = None, *, model: Model | None = None, clock=None,
               auth_clock=None) -> Flask:
    """Build the fieldsync API app.

    `config` overrides the layered configuration (see fieldsync.config). `model` skips loading
    DEFS_DIR (tests, the admin preview); `clock` injects the record store's time source;
    `auth_clock` (seconds since the epoch) the time token expiry, idle timeouts and the
    authentication rate limit are measured with.
    """
    from fieldsync.api.entities import blueprint
    from fieldsync.api.problems import register_error_handlers
    from fieldsync.defs import load_model

    settings = load_config(overrides=config)
    app = _LiveApp("fieldsync")
    app.config["MAX_CONTENT_LENGTH"] = int(settings["MAX_BODY_BYTES"])
    if not settings.get("DATABASE_URL"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)  # the embedded SQLite file lives there
    settings.create_secret_key()   # setting up a server: the token-signing secret, made once per data directory
    engine = make_engine(settings.database_url, **engine_options(settings))
    if model is None:
        model = load_model(settings["DEFS_DIR"])
    from fieldsync.api.sync import blueprint as sync_blueprint
    from fieldsync.sync.service import SyncService
    from fieldsync.store.sync_tables import create_sync_tables

    create_changelog_tables(engine)
    create_sync_tables(engine)
    state = FieldsyncState(settings, engine, model, clock=clock)
    from fieldsync.api.audit_trail import register_audit
    from fieldsync.audit.trail import AuditLog
    state.audit = AuditLog.from_config(settings, engine, clock=clock)
    try:   # tables, data key and signing key, before any request; refused when the trail was wiped
        state.audit.prepare()
    except BaseException:
        engine.dispose()
        raise
    # pushed PHI is audited in the batch's own transaction (invariant 8)
    state.sync = SyncService.from_config(settings, lambda: state.current().store, audit=state.audit, clock=clock,
                                         dependencies=state.dependencies)
    # after a batch failed on an outage, the listener pool claims again only once this answers
    state.sync.outage_probe = lambda: _probe(engine, state.crypto.keyring.provider)
    from fieldsync.transfer.snapshots import BundleService
    state.bundles = BundleService(engine, settings, state.crypto.keyring, clock=clock)
    register_audit(app, state)              # REST write hook; AuditUnavailable answers 503
    app.extensions["fieldsync"] = state
    register_error_handlers(app)
    app.before_request(_refuse_nul_in_url)   # before any blueprint's hooks: no lookup sees a NUL
    app.register_blueprint(sync_blueprint, url_prefix=API_PREFIX + "/sync")
    from fieldsync.api.transfer import register_transfer
    register_transfer(app)   # /api/v1/transfer/: resumable uploads over tus 1.0 (docs/protocol.md "Transfer")
    from fieldsync.transfer.outbox_bundle import register_outbox_purpose
    register_outbox_purpose()   # tus uploads of purpose `outbox`, committed by POST /sync/push-bundle
    from fieldsync.api.media import register_media
    register_media(app)      # /api/v1/media/: media references, uploads and signed downloads (§16)
    app.register_blueprint(blueprint, url_prefix=API_PREFIX)
    from fieldsync.api.workers import register_workers
    register_workers(app)  # /api/v1/admin/workers; processing log observer and WorkerControl (state.workers)
    from fieldsync.api.auth import install_auth
    install_auth(app, clock=auth_clock)  # sessions (idle timeout, revocation) and the failure limiter
    from fieldsync.auth.totp_secrets import seal_plaintext_secrets
    seal_plaintext_secrets(engine, state.crypto.keyring)   # TOTP secrets of a database of before (docs/access.md)
    from fieldsync.api.login import register_login
    register_login(app)   # POST /api/v1/auth/login: the user directory's passwords for tokens
    if settings["ADMIN_UI"]:
        # the admin UI is its own package (admin/fieldsync_admin), mounted at /admin when installed
        try:
            from fieldsync_admin import mount as mount_admin
        except ImportError:
            log.warning("ADMIN_UI is on but the fieldsync_admin package is not installed: /admin is not served")
        else:
            mount_admin(app)
    from fieldsync.api.body_limit import BodyLimit
    # protocol §2.4: a Content-Length over the limit is refused before anything reads the body
    app.wsgi_app = BodyLimit(app.wsgi_app, int(settings["MAX_BODY_BYTES"]),
                             transfer_limit=int(settings["TRANSFER_MAX_BYTES"]))   # tus PATCH bodies
    return app
