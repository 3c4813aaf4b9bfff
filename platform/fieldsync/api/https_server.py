"""Serving the app: over HTTPS with cheroot's threaded WSGI server and its TLS adapter
(waitress, the plain-HTTP server, has no TLS), or over plain HTTP (api/body_limit.py).
`fieldsync serve --tls-cert FILE --tls-key FILE` and the settings TLS_CERT / TLS_KEY choose
HTTPS; `serve` starts the app's background work and then the server, until a signal.

TLS 1.2 is the minimum (1.3 preferred when both ends have it); the certificate and key are
read, and checked to belong together, before anything else starts. Without TLS, serving plain
HTTP beyond this machine is refused unless a proxy in front terminates TLS (`--behind-tls-proxy`):
tokens and PHI are never sent over a network in clear (45 CFR 164.312(e), transmission security).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import ssl
import sys

from fieldsync.errors import ConfigError

__all__ = ["check_plain_http_allowed", "is_loopback_address", "make_https_server", "serve", "server_tls_context",
           "tls_files"]


def is_loopback_address(host: str) -> bool:
    """True when every address `host` names is a loopback address (127.0.0.0/8, ::1); `""`,
    `0.0.0.0` and `::` (every interface) are not."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    if not name:
        return False
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def check_plain_http_allowed(host: str, *, behind_tls_proxy: bool) -> None:
    """ConfigError unless plain HTTP on `host` stays on this machine or a TLS proxy fronts it."""
    if behind_tls_proxy or is_loopback_address(host):
        return
    raise ConfigError(f"refusing to serve plain HTTP on {host or 'every interface'}: tokens and PHI would cross "
                      "the network in clear. Serve TLS with --tls-cert FILE --tls-key FILE (TLS_CERT, TLS_KEY), "
                      "or pass --behind-tls-proxy (BEHIND_TLS_PROXY) when a proxy in front terminates TLS")


def server_tls_context(cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server-side context for the PEM certificate chain and key: TLS 1.2 at least, the
    default (modern, forward-secret) ciphers; ConfigError naming the file that does not load."""
    for what, path in (("certificate", cert_file), ("key", key_file)):
        if not os.path.isfile(path):
            raise ConfigError(f"TLS {what} file {os.fspath(path)!r} does not exist")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(os.fspath(cert_file), os.fspath(key_file))
    except ssl.SSLError as exc:
        raise ConfigError(f"TLS certificate {os.fspath(cert_file)!r} and key {os.fspath(key_file)!r} do not load "
                          f"as a PEM chain and its private key: {exc.reason or exc}") from None
    return context


def make_https_server(app, host: str, port: int, cert_file: str | os.PathLike[str],
                      key_file: str | os.PathLike[str], *, threads: int = 8):
    """A cheroot WSGI server for `app` on (host, port) speaking TLS only, not yet bound:
    `prepare()` binds (then `bind_addr` holds the real port), `serve()` runs, `stop()` ends."""
    from cheroot import wsgi
    from cheroot.ssl.builtin import BuiltinSSLAdapter

    context = server_tls_context(cert_file, key_file)
    adapter = BuiltinSSLAdapter(os.fspath(cert_file), os.fspath(key_file))
    adapter.context = context
    server = wsgi.Server((host, port), app, numthreads=threads, server_name="fieldsync")
    server.ssl_adapter = adapter
    state = getattr(app, "extensions", {}).get("fieldsync")
    if state is not None:   # protocol §2.4: refuse an oversized body on its header, before 100 Continue
        from fieldsync.api.body_limit import limit_cheroot
        limit_cheroot(server, int(state.config["MAX_BODY_BYTES"]),
                      transfer_limit=int(state.config["TRANSFER_MAX_BYTES"]))
    return server


def tls_files(cert: str | None, key: str | None) -> tuple[str, str] | None:
    """(certificate, key), checked to load, from --tls-cert/--tls-key or TLS_CERT/TLS_KEY;
    None: plain HTTP. A certificate that does not load stops here, before anything starts."""
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


def serve(app, host: str, port: int, *, tls: tuple[str, str] | None = None, behind_tls_proxy: bool = False) -> None:
    """Start the app's background work (applying the push queue, the worker heartbeat, retention
    and key maintenance), then serve it on (host, port) until Ctrl-C or SIGTERM: HTTPS with the
    `tls` (certificate, key) pair, else plain HTTP where check_plain_http_allowed allows it."""
    if tls is None:
        check_plain_http_allowed(host, behind_tls_proxy=behind_tls_proxy)
    # bind first, then say so: whoever reads "serving on" may connect at once
    state = app.extensions["fieldsync"]
    state.sync.start()  # apply batches received before a restart
    state.sync.start_relay()   # forward pushes spooled in the database during a queue outage
    if state.sync.listeners > 0:
        state.workers.start()  # heartbeat and follow the desired pool size (docs/workers.md)
    state.sync.start_maintenance(state.engine, int(state.config["RETENTION_DAYS"]))
    from fieldsync.audit.events import audit_pass
    from fieldsync.crypto.rotation import KeyMaintenance
    KeyMaintenance(lambda: state.current().store, state.crypto,   # finishes re-encryption after `keys rotate`
                   interval=float(state.config.get("KEY_MAINTENANCE_SECONDS", 300)),
                   on_pass=lambda report: audit_pass(state.audit, report)).start()
    if state.bundles is not None:   # stale snapshot bundles still in use are rebuilt before a device waits
        state.bundles.start_refresh(state.current, interval=float(state.config["BUNDLE_REFRESH_SECONDS"]))
    if tls is not None:
        server = make_https_server(app, host, port, *tls, threads=8)
        server.prepare()
        print(f"fieldsync serving on https://{host}:{server.bind_addr[1]}/api/v1  (TLS; Ctrl-C stops)", flush=True)
        _serve_until_signalled(server)
        return
    from fieldsync.api.body_limit import make_http_server   # refuses an oversized body on its header
    server = make_http_server(app, host, port, int(state.config["MAX_BODY_BYTES"]),
                              transfer_limit=int(state.config["TRANSFER_MAX_BYTES"]), threads=8)
    if not is_loopback_address(host):
        print(f"WARNING: plain HTTP on {host or 'every interface'}:{port}; only the TLS proxy in front "
              "(--behind-tls-proxy) may reach this port", file=sys.stderr, flush=True)
    print(f"fieldsync serving on http://{host}:{port}/api/v1  (Ctrl-C stops)", flush=True)
    server.run()
