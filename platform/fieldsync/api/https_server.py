"""Serving the app over HTTPS: cheroot's threaded WSGI server with its TLS adapter (waitress,
the plain-HTTP server, has no TLS). `fieldsync serve --tls-cert FILE --tls-key FILE` and the
settings TLS_CERT / TLS_KEY choose it.

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

from fieldsync.errors import ConfigError

__all__ = ["check_plain_http_allowed", "is_loopback_address", "make_https_server", "server_tls_context"]


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
        limit_cheroot(server, int(state.config["MAX_BODY_BYTES"]))
    return server
