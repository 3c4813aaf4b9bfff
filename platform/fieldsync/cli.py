"""The `fieldsync` command. Each subcommand parses its flags and calls one library function;
the work lives in the package, so everything here is also reachable from Python."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from fieldsync.config import load_config
from fieldsync.errors import Error

COMMANDS: dict[str, str] = {}   # name -> one-line help; tests check each is documented in docs/cli.md


def _command(sub, name: str, help_text: str, handler: Callable) -> argparse.ArgumentParser:
    COMMANDS[name] = help_text
    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=handler)
    return parser


def _config(args):
    overrides = {}
    if getattr(args, "defs", None):
        overrides["DEFS_DIR"] = args.defs
    if getattr(args, "database_url", None):
        overrides["DATABASE_URL"] = args.database_url
    if getattr(args, "data_dir", None):
        overrides["DATA_DIR"] = args.data_dir
    return load_config(file=args.config, overrides=overrides)


def _load_model_or_report(defs_dir) -> object | None:
    from fieldsync.defs import DefinitionErrors, load_model
    try:
        return load_model(defs_dir)
    except DefinitionErrors as exc:
        _report_definition_errors(exc, defs_dir)
        return None


def _report_definition_errors(exc, defs_dir) -> None:
    """What `fieldsync validate` prints: one `file:line:column: key: message` per error, then the count."""
    for err in exc.errors:
        print(err, file=sys.stderr)
    print(f"{len(exc.errors)} error(s) in {defs_dir}", file=sys.stderr)


def _unraised_in_database(config, model) -> str | None:
    """The schema_version refusal against the model last applied to the database, if any
    (defs/schema_version.py); None for a database that does not exist yet."""
    from fieldsync.defs.schema_version import unraised_version
    from fieldsync.store.engine import make_engine
    from fieldsync.store.migrate import read_schema_record
    if not config.get("DATABASE_URL") and not (config.data_dir / "fieldsync.db").exists():
        return None
    engine = make_engine(config.database_url)
    try:
        with engine.connect() as conn:
            record = read_schema_record(conn) or {}
    finally:
        engine.dispose()
    return unraised_version(model, record.get("schema_version"), record.get("fingerprint"),
                            "the model last applied to the database")


def _model_for_database(config, command: str):
    """The definitions' model, when valid and allowed to follow what the database holds; else
    None after printing why (every command that migrates at start checks this first)."""
    model = _load_model_or_report(config["DEFS_DIR"])
    if model is None:
        return None
    problem = _unraised_in_database(config, model)
    if problem is not None:
        print(f"fieldsync {command}: {problem}", file=sys.stderr)
        return None
    return model


# -- commands ------------------------------------------------------------------------------------

def cmd_validate(args) -> int:
    defs_dir = args.dir or _config(args)["DEFS_DIR"]
    model = _load_model_or_report(defs_dir)
    if model is None:
        return 1
    print(f"{defs_dir}: valid — {len(model.entities)} entities, {len(model.roles)} roles, "
          f"schema version {model.schema_version}, fingerprint {model.fingerprint()}")
    return 0


def cmd_generate(args) -> int:
    import json as _json
    from fieldsync.codegen import generate
    from fieldsync.store.ddl import server_ddl
    from fieldsync.defs import DefinitionErrors
    from fieldsync.defs.schema_version import unraised_version
    config = _config(args)
    model = _load_model_or_report(config["DEFS_DIR"])
    if model is None:
        return 1
    previous = Path(args.out) / "device" / "schema.json"   # what devices were last built with
    if previous.is_file():
        try:
            recorded = _json.loads(previous.read_text("utf-8"))
        except ValueError:
            recorded = {}
        problem = unraised_version(model, recorded.get("schema_version"), recorded.get("fingerprint"),
                                   f"{previous}") if isinstance(recorded, dict) else None
        if problem is not None:
            print(f"fieldsync generate: {problem}", file=sys.stderr)
            return 1
    start = time.perf_counter()
    try:
        paths = generate(config["DEFS_DIR"], args.out, check=args.check, server_ddl=server_ddl)
    except DefinitionErrors as exc:
        for err in exc.errors:
            print(err, file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    if args.check:
        if paths:
            print(f"{args.out} is stale; run `fieldsync generate` (or `make generate`):", file=sys.stderr)
            for path in paths:
                print(f"  {path}", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date ({elapsed * 1000:.0f} ms)")
        return 0
    print(f"generated {len(paths)} changed file(s) in {args.out} ({elapsed * 1000:.0f} ms)")
    for path in paths:
        print(f"  {path}")
    return 0


def cmd_migrate(args) -> int:
    from fieldsync.store.engine import make_engine
    from fieldsync.store.migrate import apply_migration, format_plan, plan_migration
    config = _config(args)
    model = _load_model_or_report(config["DEFS_DIR"])
    if model is None:
        return 1
    unraised = _unraised_in_database(config, model)
    if not config.get("DATABASE_URL"):
        config.data_dir.mkdir(parents=True, exist_ok=True)   # the embedded SQLite file lives there
    engine = make_engine(config.database_url)
    try:
        plan = plan_migration(engine, model)
        print(format_plan(plan))
        if unraised is not None:   # the plan is shown, nothing is applied (--dry-run exits 1 too)
            print(f"fieldsync migrate: {unraised}", file=sys.stderr)
            return 1
        if args.dry_run or not plan.steps:
            return 0
        apply_migration(engine, plan, allow_destructive=args.allow_destructive)
        print(f"applied {len(plan.steps)} step(s)")
        return 0
    finally:
        engine.dispose()


def cmd_serve(args) -> int:
    from fieldsync.api import create_app
    config = _config(args)
    host = args.host or config["HOST"]
    port = args.port if args.port is not None else int(config["PORT"])
    tls = _tls_files(args, config)  # a certificate that does not load stops here, before anything starts
    behind_tls_proxy = bool(args.behind_tls_proxy or config.get("BEHIND_TLS_PROXY"))
    if tls is None:
        from fieldsync.api.https_server import check_plain_http_allowed
        check_plain_http_allowed(host, behind_tls_proxy=behind_tls_proxy)
    model = _model_for_database(config, "serve")   # before the start migrates anything
    if model is None:
        return 1
    app = create_app(config, model=model)
    _serve(app, host, port, tls=tls, behind_tls_proxy=behind_tls_proxy)
    return 0


def _tls_files(args, config) -> tuple[str, str] | None:
    """(certificate, key) from --tls-cert/--tls-key or TLS_CERT/TLS_KEY, checked to load; None: plain HTTP."""
    from fieldsync.api.https_server import server_tls_context
    from fieldsync.errors import ConfigError
    cert = getattr(args, "tls_cert", None) or config.get("TLS_CERT")
    key = getattr(args, "tls_key", None) or config.get("TLS_KEY")
    if bool(cert) != bool(key):
        raise ConfigError("TLS needs a certificate and its key together: --tls-cert FILE --tls-key FILE "
                          f"(TLS_CERT, TLS_KEY); only the {'certificate' if cert else 'key'} was given")
    if not cert:
        return None
    server_tls_context(cert, key)
    return str(cert), str(key)


def _serve_until_signalled(server) -> None:
    """Run a prepared cheroot server in a thread until SIGINT or SIGTERM, then stop it and
    return (exit 0, as waitress does on Ctrl-C). cheroot's own loop in the main thread could
    swallow the KeyboardInterrupt of a Ctrl-C arriving while it handled a failed TLS handshake,
    and then never stop; a signal handler setting an event cannot be lost that way."""
    import signal
    import threading
    stopping = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stopping.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve, name="fieldsync-https", daemon=True)
    thread.start()
    try:
        while thread.is_alive() and not stopping.wait(1.0):
            pass
    finally:
        server.stop()
        thread.join(30)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(app, host: str, port: int, *, tls: tuple[str, str] | None = None, behind_tls_proxy: bool = False) -> None:
    from fieldsync.api.https_server import check_plain_http_allowed, is_loopback_address, make_https_server
    if tls is None:
        check_plain_http_allowed(host, behind_tls_proxy=behind_tls_proxy)
    # bind first, then say so: whoever reads "serving on" may connect at once
    state = app.extensions["fieldsync"]
    state.sync.start()  # apply batches received before a restart
    if state.sync.listeners > 0:
        state.workers.start()  # heartbeat and follow the desired pool size (docs/workers.md)
    state.sync.start_maintenance(state.engine, int(state.config["RETENTION_DAYS"]))
    from fieldsync.crypto.rotation import KeyMaintenance, audit_pass
    KeyMaintenance(lambda: state.store, state.crypto,   # finishes re-encryption after `keys rotate`
                   interval=float(state.config.get("KEY_MAINTENANCE_SECONDS", 300)),
                   on_pass=lambda report: audit_pass(state.audit, report)).start()
    if tls is not None:
        server = make_https_server(app, host, port, *tls, threads=8)
        server.prepare()
        print(f"fieldsync serving on https://{host}:{server.bind_addr[1]}/api/v1  (TLS; Ctrl-C stops)", flush=True)
        _serve_until_signalled(server)
        return
    from fieldsync.api.body_limit import make_http_server   # refuses an oversized body on its header
    server = make_http_server(app, host, port, int(state.config["MAX_BODY_BYTES"]), threads=8)
    if not is_loopback_address(host):
        print(f"WARNING: plain HTTP on {host or 'every interface'}:{port}; only the TLS proxy in front "
              "(--behind-tls-proxy) may reach this port", file=sys.stderr, flush=True)
    print(f"fieldsync serving on http://{host}:{port}/api/v1  (Ctrl-C stops)", flush=True)
    server.run()


def cmd_seed(args) -> int:
    from fieldsync.seed import load_seed
    config = _config(args)
    if _model_for_database(config, "seed") is None:   # seeding migrates a database that is behind
        return 1
    counts = load_seed(config, Path(args.dir))
    for entity, n in counts.items():
        print(f"{entity}: {n} record(s) new")
    return 0


def cmd_run(args) -> int:
    """make run: the embedded defaults, the example definitions and seed data, demo tokens."""
    from fieldsync.api import create_app
    from fieldsync.api.https_server import check_plain_http_allowed
    from fieldsync.seed import DEMO_USERS, load_seed
    config = _config(args)
    host = args.host or config["HOST"]
    port = args.port or int(config["PORT"])
    check_plain_http_allowed(host, behind_tls_proxy=bool(config.get("BEHIND_TLS_PROXY")))  # before anything starts
    config.data_dir.mkdir(parents=True, exist_ok=True)
    model = _model_for_database(config, "run")
    if model is None:
        return 1
    app = create_app(config, model=model)          # creates/migrates the tables
    counts = load_seed(config, Path(args.seed))
    base = f"http://{host}:{port}/api/v1"
    print(f"database: {config.database_url}")
    print(f"seed data: {sum(counts.values())} new record(s) from {args.seed}")
    print(f"demo tokens (valid for 12 hours; refused after {int(config['TOKEN_IDLE_SECONDS']) // 60} minutes unused):")
    tokens = {}
    for user in DEMO_USERS:
        tokens[user["role"]] = _issue(config, user["user"], user["role"], user["attributes"], 12 * 3600)
        print(f"  {user['role']:<11} ({user['user']}): {tokens[user['role']]}")
    print("try:")
    print(f"  curl -H 'Authorization: Bearer {tokens['field_rep']}' {base}/retailer")
    print(f"  curl {base}/openapi.json")
    _serve(app, host, port, behind_tls_proxy=bool(config.get("BEHIND_TLS_PROXY")))  # development: plain HTTP
    return 0


def _issue(config, user: str, role: str, attributes: dict, ttl: int) -> str:
    from fieldsync.auth import issue_token
    return issue_token(config.secret_key(), user=user, role=role, attributes=attributes, ttl=ttl)


def cmd_tls_dev_cert(args) -> int:
    from fieldsync.crypto.devcert import DEFAULT_HOSTS, make_dev_certificates
    directory = Path(args.dir) if args.dir else _config(args).data_dir / "tls"
    made = make_dev_certificates(directory, args.hosts or DEFAULT_HOSTS, force=args.force)
    pins = ", ".join(f'"{pin}"' for pin in made.pins)
    print(f"development CA        {made.ca_file}   (the SDK trusts it: ca_file=)")
    print(f"server certificate    {made.cert_file}   for {', '.join(made.hosts)} (90 days)")
    print(f"server key            {made.key_file}   (mode 0600)")
    print(f"backup key            {made.backup_key_file}   (mode 0600; in no certificate yet)")
    print("pins (SPKI SHA-256 of the public keys; give the app both):")
    print(f"  {made.server_pin}   server.key (in use)")
    print(f"  {made.backup_pin}   backup.key (the next certificate's key: rotate without breaking devices)")
    print("serve:")
    print(f"  fieldsync serve --tls-cert {made.cert_file} --tls-key {made.key_file}")
    print("SDK:")
    host = f"[{made.hosts[0]}]" if ":" in made.hosts[0] else made.hosts[0]
    print(f'  HttpTransport("https://{host}:8000", ca_file="{made.ca_file}",')
    print(f"                pins=[{pins}])")
    print("for development only: production certificates come from your CA, its keys from your own process")
    return 0


def cmd_token_create(args) -> int:
    config = _config(args)
    model = _load_model_or_report(config["DEFS_DIR"])
    if model is None:
        return 1
    if args.role not in model.role_names:
        print(f"unknown role {args.role!r}; roles: {', '.join(model.role_names)}", file=sys.stderr)
        return 2
    attributes = {}
    for item in args.attr or ():
        key, sep, raw = item.partition("=")
        attr = model.attribute(key)
        if not sep or attr is None or key in ("id", "role"):
            declared = ", ".join(a.name for a in model.attributes)
            print(f"--attr {item!r}: expected key=value with a declared attribute ({declared})", file=sys.stderr)
            return 2
        attributes[key] = _attribute_value(attr, raw)
    ttl = args.ttl or int(config["TOKEN_TTL_SECONDS"])
    from fieldsync.auth.tokens import issue_token, new_token_id
    token_id = new_token_id()
    print(issue_token(config.secret_key(), user=args.user, role=args.role, attributes=attributes, ttl=ttl,
                      token_id=token_id))
    idle = int(config["TOKEN_IDLE_SECONDS"])
    print(f"token id {token_id} (fieldsync token revoke {token_id}); refused after {idle} s unused, "
          "counted from now", file=sys.stderr)
    return 0


def _attribute_value(attr, raw: str):
    def one(kind: str, text: str):
        if kind == "integer":
            return int(text)
        if kind == "boolean":
            return text.lower() in ("1", "true", "yes")
        return text
    if attr.type == "list":
        return [one(attr.items, part.strip()) for part in raw.split(",") if part.strip()]
    return one(attr.type, raw)


def cmd_devices(args) -> int:
    """The registered devices and where each stands (what GET /api/v1/sync/devices returns)."""
    import json as _json
    import sqlalchemy as sa
    from fieldsync.store.changelog import create_changelog_tables, head_position
    from fieldsync.store.engine import make_engine
    from fieldsync.sync.tables import DEVICES, LEDGER, RECEIVED, create_sync_tables
    config = _config(args)
    engine = make_engine(config.database_url)
    try:
        create_changelog_tables(engine)
        create_sync_tables(engine)
        with engine.connect() as conn:
            head = head_position(conn)
            rows = list(conn.execute(sa.select(DEVICES).order_by(DEVICES.c.user_id, DEVICES.c.registered_at))
                        .mappings())
            checkpoints = dict(conn.execute(sa.select(LEDGER.c.device_id, sa.func.max(LEDGER.c.position))
                                            .group_by(LEDGER.c.device_id)).all())
            unsettled_by = dict(conn.execute(sa.select(RECEIVED.c.device_id, sa.func.count())
                                             .group_by(RECEIVED.c.device_id)).all())
        items = []
        for r in rows:
            reported = _json.loads(r["reported"]) if r["reported"] else {}
            items.append({"device_id": r["device_id"], "user_id": r["user_id"], "status": r["status"],
                          # as of its latest push or pull (registration until then)
                          "schema_version": r["schema_version"], "app_version": r["app_version"],
                          "last_contact_at": str(r["last_contact_at"])[:19], "acked_cursor": r["acked_cursor"],
                          "behind": max(head - r["acked_cursor"], 0), "last_received_seq": r["last_received_seq"],
                          "unsettled": unsettled_by.get(r["device_id"], 0), "rejected": r["rejected"],
                          "pending": (reported.get("outbox") or {}).get("pending"),
                          "quarantined": reported.get("quarantined"),
                          "write_checkpoint": checkpoints.get(r["device_id"]) or 0})
    finally:
        engine.dispose()
    if args.json:
        print(_json.dumps({"head": head, "items": items}, indent=2))
        return 0
    columns = ("device_id", "user_id", "status", "schema_version", "app_version", "last_contact_at",
               "acked_cursor", "behind",
               "last_received_seq", "unsettled", "rejected", "pending", "quarantined")
    widths = {c: max([len(c)] + [len(str(i[c])) for i in items]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for i in items:
        print("  ".join(str(i[c] if i[c] is not None else "-").ljust(widths[c]) for c in columns))
    print(f"{len(items)} device(s); head position {head}")
    return 0


def cmd_compact(args) -> int:
    """Retention: drop change-log entries and tombstones older than RETENTION_DAYS."""
    from fieldsync.api import create_app
    from fieldsync.sync.service import compact_history
    config = _config(args)
    days = args.retention_days if args.retention_days is not None else int(config["RETENTION_DAYS"])
    app = create_app(config)
    state = app.extensions["fieldsync"]
    done = compact_history(state.engine, state.store, days)
    print(f"kept positions from {done['horizon']}: {done['changes_deleted']} change(s) and "
          f"{done['tombstones_purged']} tombstone(s) older than {days} day(s) removed")
    return 0


def cmd_demo(args) -> int:
    """Two devices offline, syncing through the server and converging."""
    from fieldsync.demo import run_demo
    config = _config(args)
    return 0 if run_demo(config, url=args.url, workdir=args.workdir) else 1


# -- the listener pool, workers and dead letters (docs/workers.md) -------------------------------

def _table(items: list[dict], columns: Sequence[str]) -> None:
    """Print `items` as aligned columns (None as "-")."""
    cells = [[str(item[c]) if item[c] is not None else "-" for c in columns] for item in items]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _worker_logging() -> None:
    """Log to standard error: the processing log as bare JSON lines (one per message, for a
    log shipper), everything else at INFO with a timestamp."""
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    processing = logging.getLogger("fieldsync.sync.processing")
    if not processing.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        processing.addHandler(handler)
        processing.propagate = False


def cmd_worker(args) -> int:
    """A process that only applies the push queue (no HTTP), until SIGTERM or SIGINT."""
    import signal
    import threading
    from fieldsync.api import create_app
    from fieldsync.workers.fleet import check_pool_size, desired_size
    from fieldsync.errors import InvalidPoolSize
    config = _config(args)
    if args.threads is not None:
        try:
            check_pool_size("push", args.threads)
        except InvalidPoolSize as exc:
            print(f"fieldsync worker: {exc}", file=sys.stderr)
            return 2
    _worker_logging()
    model = _model_for_database(config, "worker")
    if model is None:
        return 1
    app = create_app(config, model=model)
    state = app.extensions["fieldsync"]
    sync, control = state.sync, state.workers
    if args.heartbeat is not None:
        control.interval = args.heartbeat
    with state.engine.connect() as conn:
        desired = desired_size(conn, control.queue)
    threads = args.threads or (desired.threads if desired else max(int(config["SYNC_LISTENERS"]), 1))
    stopping = threading.Event()

    def on_signal(signum, _frame) -> None:
        stopping.set()
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        sync.listeners = threads
        sync.start()
        control.start(adopt=args.threads is None)
        print(f"fieldsync worker {control.worker_id}: applying the push queue with {threads} thread(s); "
              "SIGTERM or Ctrl-C drains and stops", flush=True)
        while not stopping.wait(1.0):
            pass
        print(f"fieldsync worker {control.worker_id}: draining what is in flight", flush=True)
        sync.stop(timeout=args.drain_timeout)   # running handlers finish, unstarted messages go back
        control.stop()
        sync.close()
        state.engine.dispose()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"fieldsync worker {control.worker_id}: stopped", flush=True)
    return 0


def cmd_workers_set(args) -> int:
    import getpass
    import socket
    from fieldsync.store.engine import make_engine
    from fieldsync.workers.fleet import create_worker_tables, set_desired_size
    from fieldsync.errors import InvalidPoolSize
    config = _config(args)
    engine = make_engine(config.database_url)
    try:
        create_worker_tables(engine)
        done = set_desired_size(engine, args.queue, args.threads, f"{getpass.getuser()}@{socket.gethostname()} (cli)")
    except InvalidPoolSize as exc:
        print(f"fieldsync workers set: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"queue {done.queue}: {done.threads} thread(s) per process from now on; each process resizes "
          "at its next heartbeat")
    return 0


def cmd_workers_status(args) -> int:
    import json as _json
    from fieldsync.store.engine import make_engine
    from fieldsync.workers.fleet import create_worker_tables, open_push_queue, workers_status
    config = _config(args)
    engine = make_engine(config.database_url)
    queue = open_push_queue(config)
    try:
        create_worker_tables(engine)
        status = workers_status(engine, queue)
    finally:
        queue.close()
        engine.dispose()
    if args.json:
        print(_json.dumps(status, indent=2))
        return 0
    depth = status["depth"]
    desired = status["desired_threads"]
    print(f"queue {status['queue']}: desired size "
          + (f"{desired} thread(s) per process (set {status['updated_at']} by {status['updated_by']})"
             if desired is not None else "not set (each process keeps its own)"))
    print(f"depth: {depth['visible']} waiting, {depth['in_flight']} in flight, {depth['dead']} dead letter(s)")
    items = [dict(p, state="stale" if p["stale"] else "live") for p in status["workers"]]
    if items:
        _table(items, ("worker_id", "host", "pid", "threads", "in_flight", "processed", "failed",
                       "started_at", "last_seen", "state"))
    stale = sum(p["stale"] for p in status["workers"])
    print(f"{len(items) - stale} live process(es) with {status['threads']} thread(s) and {status['in_flight']} "
          f"message(s) in flight" + (f"; {stale} stale" if stale else ""))
    return 0


def cmd_dlq_list(args) -> int:
    import json as _json
    from fieldsync.workers.fleet import dead_letter_summaries, open_push_queue
    queue = open_push_queue(_config(args))
    try:
        items = dead_letter_summaries(queue, args.limit)
    finally:
        queue.close()
    if args.json:
        print(_json.dumps({"items": items}, indent=2))
        return 0
    if items:
        _table(items, ("message_id", "device_id", "mutations", "receive_count", "enqueued_at"))
    print(f"{len(items)} dead letter(s)")
    return 0


def cmd_dlq_replay(args) -> int:
    from fieldsync.workers.fleet import open_push_queue
    if bool(args.ids) == bool(args.all):
        print("fieldsync dlq replay: name messages with --id ID (repeatable) or pass --all", file=sys.stderr)
        return 2
    queue = open_push_queue(_config(args))
    try:
        moved = queue.replay_dead(None if args.all else args.ids)
    finally:
        queue.close()
    print(f"replayed {moved} dead letter(s) onto the push queue")
    if args.ids and moved < len(set(args.ids)):
        print(f"{len(set(args.ids)) - moved} of the ids named are not dead letters", file=sys.stderr)
        return 1
    return 0


# -- parser --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fieldsync", description="Offline-first sync platform.")
    parser.add_argument("--config", help="configuration file (YAML); FIELDSYNC_* variables override it")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "validate", "check the entity definitions and report every error", cmd_validate)
    p.add_argument("dir", nargs="?", help="definitions directory (default: DEFS_DIR, entity_defs)")

    p = _command(sub, "generate", "render generated/ from the definitions", cmd_generate)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming stale files")
    p.add_argument("--defs", help="definitions directory")
    p.add_argument("--out", default="generated", help="output directory (default: generated)")

    p = _command(sub, "migrate", "bring the server tables up to date with the definitions", cmd_migrate)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--allow-destructive", action="store_true", help="also drop or narrow columns/tables")
    p.add_argument("--defs", help="definitions directory")
    p.add_argument("--database-url", help="database URL (default: SQLite in the data directory)")
    p.add_argument("--data-dir", help="data directory (default var/)")

    for name, help_text, handler in (
            ("serve", "start the REST server", cmd_serve),
            ("run", "start the platform on the embedded defaults with the example data (make run)", cmd_run)):
        p = _command(sub, name, help_text, handler)
        p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
        p.add_argument("--port", type=int, help="port (default 8000)")
        p.add_argument("--defs", help="definitions directory")
        p.add_argument("--database-url", help="database URL")
        p.add_argument("--data-dir", help="data directory (default var/)")
        if name == "run":
            p.add_argument("--seed", default="examples/seed", help="seed data directory")
        else:
            p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate chain "
                                                               "(default TLS_CERT)")
            p.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key (default TLS_KEY)")
            p.add_argument("--behind-tls-proxy", action="store_true",
                           help="plain HTTP on a non-loopback address, because a proxy in front terminates TLS")

    p = _command(sub, "seed", "load the master seed data (records already present are kept)", cmd_seed)
    p.add_argument("dir", nargs="?", default="examples/seed", help="seed directory")
    p.add_argument("--defs", help="definitions directory")
    p.add_argument("--database-url", help="database URL")
    p.add_argument("--data-dir", help="data directory (default var/)")

    p = _command(sub, "devices", "list registered devices: last contact, cursor, pending and quarantined counts",
                 cmd_devices)
    from fieldsync.auth.revoke_cli import add_device_revoke_command, add_token_revoke_command
    add_device_revoke_command(p, _config, COMMANDS)   # fieldsync devices revoke <id> --reason
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--database-url", help="database URL")
    p.add_argument("--data-dir", help="data directory (default var/)")

    p = _command(sub, "compact", "drop change-log entries and tombstones older than the retention window",
                 cmd_compact)
    p.add_argument("--retention-days", type=int, help="override RETENTION_DAYS")
    p.add_argument("--database-url", help="database URL")
    p.add_argument("--data-dir", help="data directory (default var/)")

    p = _command(sub, "demo", "two devices work offline, sync through the server and converge", cmd_demo)
    p.add_argument("--url", help="a running server (make run); default: a server in this process")
    p.add_argument("--workdir", help="where the device stores go (default: a temporary directory)")
    p.add_argument("--data-dir", help="the server's data directory, for its token key (default var/)")

    p = _command(sub, "worker", "apply the push queue in this process (no HTTP) until SIGTERM, then drain",
                 cmd_worker)
    p.add_argument("--threads", type=int, help="listener threads (1-64; default: the desired size, "
                                               "else SYNC_LISTENERS)")
    p.add_argument("--heartbeat", type=float, help="seconds between heartbeats (default 5)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds to wait for running batches on SIGTERM (default 30)")
    p.add_argument("--defs", help="definitions directory")
    p.add_argument("--database-url", help="database URL")
    p.add_argument("--data-dir", help="data directory (default var/)")

    workers = _command(sub, "workers", "show or change the listener pool of every process",
                       lambda args: workers.print_help() or 2)
    workers_sub = workers.add_subparsers(dest="workers_command", metavar="ACTION")
    for name, help_text, handler in (
            ("set", "set the desired listener threads per process for a queue", cmd_workers_set),
            ("status", "desired size, queue depth, in-flight and dead letters, and every process", cmd_workers_status)):
        COMMANDS["workers " + name] = help_text
        p = workers_sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if name == "set":
            p.add_argument("--queue", default="push", help="the queue (default push)")
            p.add_argument("--threads", type=int, required=True, help="threads per process, 1-64")
        else:
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.add_argument("--database-url", help="database URL")
        p.add_argument("--data-dir", help="data directory (default var/)")

    dlq = _command(sub, "dlq", "show and re-drive the push queue's dead letters", lambda args: dlq.print_help() or 2)
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="ACTION")
    for name, help_text, handler in (
            ("list", "list dead letters: message id, device, mutations, deliveries, enqueue time", cmd_dlq_list),
            ("replay", "move dead letters back onto the push queue", cmd_dlq_replay)):
        COMMANDS["dlq " + name] = help_text
        p = dlq_sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if name == "list":
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
            p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
        else:
            p.add_argument("--id", dest="ids", action="append", metavar="ID", help="a message id (repeatable)")
            p.add_argument("--all", action="store_true", help="every dead letter")
        p.add_argument("--data-dir", help="data directory (default var/)")

    tls = _command(sub, "tls", "TLS for development: certificates and pins", lambda args: tls.print_help() or 2)
    tls_sub = tls.add_subparsers(dest="tls_command", metavar="ACTION")
    help_text = "write a development CA, a server certificate and a backup key; print their pins"
    COMMANDS["tls dev-cert"] = help_text
    p = tls_sub.add_parser("dev-cert", help=help_text, description=help_text)
    p.set_defaults(handler=cmd_tls_dev_cert)
    p.add_argument("--dir", help="where the files go (default <DATA_DIR>/tls, var/tls)")
    p.add_argument("--host", dest="hosts", action="append", metavar="NAME",
                   help="a DNS name or IP address of the server (repeatable; default localhost, 127.0.0.1, ::1)")
    p.add_argument("--force", action="store_true", help="replace the files of an earlier run")
    p.add_argument("--data-dir", help="data directory (default var/)")

    token = _command(sub, "token", "issue signed bearer tokens", lambda args: token.print_help() or 2)
    token_sub = token.add_subparsers(dest="token_command", metavar="ACTION")
    p = token_sub.add_parser("create", help="print a token for a user with a role and attributes")
    COMMANDS["token create"] = "print a token for a user with a role and attributes"
    p.set_defaults(handler=cmd_token_create)
    p.add_argument("--user", required=True, help="user id")
    p.add_argument("--role", required=True, help="a role from entity_defs/roles.yaml")
    p.add_argument("--attr", action="append", metavar="KEY=VALUE",
                   help="a user attribute; lists are comma-separated (repeatable)")
    p.add_argument("--ttl", type=int, help="lifetime in seconds (default TOKEN_TTL_SECONDS)")
    add_token_revoke_command(token_sub, _config, COMMANDS)   # fieldsync token revoke <token id>

    from fieldsync.audit.cli import add_audit_commands
    add_audit_commands(sub, _command, _config, COMMANDS)   # fieldsync audit verify|export|checkpoint|purge|public-key
    from fieldsync.crypto.keys_cli import add_keys_commands
    add_keys_commands(sub, _command, _config, COMMANDS)    # fieldsync keys list|rotate|reencrypt|shred
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from fieldsync.defs import DefinitionErrors
    try:
        status = int(args.handler(args) or 0)
        sys.stdout.flush()    # inside the try: a reader gone by now is a broken pipe like any other
        return status
    except BrokenPipeError:
        return _reader_gone()
    except DefinitionErrors as exc:
        # any command that loads the model (serve, run, seed, worker...) reports invalid
        # definitions as validate does, not as a traceback
        try:
            defs_dir = _config(args)["DEFS_DIR"]
        except Error:
            defs_dir = "the definitions"
        _report_definition_errors(exc, defs_dir)
        return 1
    except Error as exc:
        print(f"fieldsync {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _reader_gone() -> int:
    """The reader of standard output went away (`fieldsync audit export | head`): stop quietly,
    with the status of a process killed by SIGPIPE, as other Unix tools do. Standard output is
    pointed at /dev/null, so the interpreter's last flush cannot fail again with a traceback."""
    import os
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13


if __name__ == "__main__":
    sys.exit(main())
