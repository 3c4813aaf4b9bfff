"""`fieldsync serve`, `run`, `worker` and `demo`: processes that start the platform — the REST
server, the same on the embedded defaults with the example data (`make run`), a process that
only applies the push queue, and the two-device walkthrough (docs/cli.md, docs/workers.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from fieldsync.cli.common import (Invocation, command, data_dir_option, database_url_option, defs_option,
                                  model_for_database, pass_invocation)


def _listen_options(f):
    f = data_dir_option(f)
    f = click.option("--database-url", help="database URL")(f)
    f = defs_option(f)
    f = click.option("--port", type=int, help="port (default 8000)")(f)
    return click.option("--host", help="address to listen on (default 127.0.0.1)")(f)


@command("serve", "start the REST server")
@_listen_options
@click.option("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate chain (default TLS_CERT)")
@click.option("--tls-key", metavar="FILE", help="the certificate's PEM private key (default TLS_KEY)")
@click.option("--behind-tls-proxy", is_flag=True,
              help="plain HTTP on a non-loopback address, because a proxy in front terminates TLS")
@pass_invocation
def serve(invocation: Invocation, host: str | None, port: int | None, defs: str | None, database_url: str | None,
          data_dir: str | None, tls_cert: str | None, tls_key: str | None, behind_tls_proxy: bool) -> int:
    from fieldsync.api import create_app
    from fieldsync.api.https_server import check_plain_http_allowed, serve as serve_app, tls_files
    config = invocation.config(defs=defs, database_url=database_url, data_dir=data_dir)
    host = host or config["HOST"]
    port = port if port is not None else int(config["PORT"])
    tls = tls_files(tls_cert or config.get("TLS_CERT"), tls_key or config.get("TLS_KEY"))
    behind_tls_proxy = bool(behind_tls_proxy or config.get("BEHIND_TLS_PROXY"))
    if tls is None:
        check_plain_http_allowed(host, behind_tls_proxy=behind_tls_proxy)
    model = model_for_database(config, "serve")   # before the start migrates anything
    if model is None:
        return 1
    app = create_app(config, model=model)
    _freeze_start_up()
    serve_app(app, host, port, tls=tls, behind_tls_proxy=behind_tls_proxy)
    return 0


@command("run", "start the platform on the embedded defaults with the example data (make run)")
@_listen_options
@click.option("--seed", default="examples/seed", help="seed data directory")
@pass_invocation
def run(invocation: Invocation, host: str | None, port: int | None, defs: str | None, database_url: str | None,
        data_dir: str | None, seed: str) -> int:
    """make run: the embedded defaults, the example definitions and seed data, demo users with
    printed passwords, demo tokens."""
    from fieldsync.api import create_app
    from fieldsync.api.https_server import check_plain_http_allowed, serve as serve_app
    from fieldsync.auth import issue_token
    from fieldsync.seed import DEMO_USERS, demo_logins, load_seed
    config = invocation.config(defs=defs, database_url=database_url, data_dir=data_dir)
    host = host or config["HOST"]
    port = port or int(config["PORT"])
    behind_tls_proxy = bool(config.get("BEHIND_TLS_PROXY"))
    check_plain_http_allowed(host, behind_tls_proxy=behind_tls_proxy)  # before anything starts
    config.data_dir.mkdir(parents=True, exist_ok=True)
    model = model_for_database(config, "run")
    if model is None:
        return 1
    app = create_app(config, model=model)          # creates/migrates the tables and the token secret
    counts = load_seed(config, Path(seed))
    base = f"http://{host}:{port}/api/v1"
    print(f"database: {config.database_url}")
    print(f"seed data: {sum(counts.values())} new record(s) from {seed}")
    state = app.extensions["fieldsync"]
    passwords = demo_logins(state.engine, state.audit, model, keyring=state.crypto.keyring)
    print("demo users (new passwords each run; POST /api/v1/auth/login for a token):")
    for user in DEMO_USERS:
        print(f"  login {user['user']} with password {passwords[user['user']]} ({user['role']})")
    print(f"demo tokens (valid for 12 hours; refused after {int(config['TOKEN_IDLE_SECONDS']) // 60} minutes unused):")
    secret = state.secret_bytes
    tokens = {}
    for user in DEMO_USERS:
        tokens[user["role"]] = issue_token(secret, user=user["user"], role=user["role"],
                                           attributes=user["attributes"], ttl=12 * 3600)
        print(f"  {user['role']:<11} ({user['user']}): {tokens[user['role']]}")
    print("try:")
    print(f"  curl -H 'Authorization: Bearer {tokens['field_rep']}' {base}/retailer")
    print(f"  curl -H 'Content-Type: application/json' -d '{{\"user\": \"rep-asha\", \"password\": "
          f"\"{passwords['rep-asha']}\"}}' {base}/auth/login")
    print(f"  curl {base}/openapi.json")
    if config.get("ADMIN_UI", True):
        print(f"admin UI: http://{host}:{port}/admin/  (log in as admin-meera, analyst-joe or compliance-lin "
              "with the password printed above)")
    _freeze_start_up()
    serve_app(app, host, port, behind_tls_proxy=behind_tls_proxy)  # development: plain HTTP
    return 0


def _freeze_start_up() -> None:
    """Once the app is built, move what start-up made (the model, compiled plans and rows,
    SQLAlchemy's metadata, imported modules) to the garbage collector's permanent generation:
    a server applying pushes allocates dicts per mutation, which sets off full collections that
    walked all of it each time. Objects made later are collected as before, the youngest
    generation after 20,000 allocations instead of 700 (a push of 1,000 mutations makes tens of
    thousands of short-lived dicts; cycles among them wait a little longer)."""
    import gc
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


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


@command("worker", "apply the push queue in this process (no HTTP) until SIGTERM, then drain")
@click.option("--threads", type=int, help="listener threads (1-64; default: the desired size, else SYNC_LISTENERS)")
@click.option("--heartbeat", type=float, help="seconds between heartbeats (default 5)")
@click.option("--drain-timeout", type=float, default=30.0,
              help="seconds to wait for running batches on SIGTERM (default 30)")
@defs_option
@database_url_option
@data_dir_option
@pass_invocation
def worker(invocation: Invocation, threads: int | None, heartbeat: float | None, drain_timeout: float,
           defs: str | None, database_url: str | None, data_dir: str | None) -> int:
    """A process that only applies the push queue (no HTTP), until SIGTERM or SIGINT."""
    import signal
    import threading
    from fieldsync.api import create_app
    from fieldsync.workers.fleet import check_pool_size, desired_size
    from fieldsync.errors import InvalidPoolSize
    config = invocation.config(defs=defs, database_url=database_url, data_dir=data_dir)
    if threads is not None:
        try:
            check_pool_size("push", threads)
        except InvalidPoolSize as exc:
            print(f"fieldsync worker: {exc}", file=sys.stderr)
            return 2
    _worker_logging()
    model = model_for_database(config, "worker")
    if model is None:
        return 1
    app = create_app(config, model=model)
    state = app.extensions["fieldsync"]
    sync, control = state.sync, state.workers
    if heartbeat is not None:
        control.interval = heartbeat
    with state.engine.connect() as conn:
        desired = desired_size(conn, control.queue)
    size = threads or (desired.threads if desired else max(int(config["SYNC_LISTENERS"]), 1))
    stopping = threading.Event()

    def on_signal(signum, _frame) -> None:
        stopping.set()
    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGTERM, signal.SIGINT)}
    _freeze_start_up()
    try:
        sync.listeners = size
        sync.start()
        sync.start_relay()   # pushes a server spooled during a queue outage (docs/operations.md)
        control.start(adopt=threads is None)
        print(f"fieldsync worker {control.worker_id}: applying the push queue with {size} thread(s); "
              "SIGTERM or Ctrl-C drains and stops", flush=True)
        while not stopping.wait(1.0):
            pass
        print(f"fieldsync worker {control.worker_id}: draining what is in flight", flush=True)
        sync.stop(timeout=drain_timeout)   # running handlers finish, unstarted messages go back
        control.stop()
        sync.close()
        state.engine.dispose()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print(f"fieldsync worker {control.worker_id}: stopped", flush=True)
    return 0


@command("demo", "two devices work offline, sync through the server and converge")
@click.option("--url", help="a running server (make run); default: a server in this process")
@click.option("--workdir", help="where the device stores go (default: a temporary directory)")
@click.option("--data-dir", help="the server's data directory, for its token key (default var/)")
@pass_invocation
def demo(invocation: Invocation, url: str | None, workdir: str | None, data_dir: str | None) -> int:
    """Two devices offline, syncing through the server and converging."""
    from fieldsync.demo import run_demo
    config = invocation.config(data_dir=data_dir)
    return 0 if run_demo(config, url=url, workdir=workdir) else 1
