"""How the SDK reaches a server: `HttpTransport` (stdlib `http.client`, keep-alive, TLS) and
`WsgiTransport` (a WSGI app in the same process, for tests and embedded use).

A transport does one thing: `request(method, path, *, headers, body) -> (status, headers,
body)`, with response header names in lower case and the body already decompressed. It raises
`TransportError` when no complete answer arrived. Anything that speaks this method can stand in
for one (tests wrap transports to cut connections at chosen moments).

Compression (protocol §2.3): request bodies over 1 KiB are sent with gzip, or zstd when the
`zstandard` module is importable and the server listed it in its capabilities; a 415 answer
makes the transport resend with gzip and remember. Responses are asked for with
`Accept-Encoding` and decompressed here.

TLS: `HttpTransport` verifies the server's certificate against the system's CAs (or `ca_file`)
and its hostname, always; with `pins` it also requires the certificate's public key to be one
of the pinned keys (client/pinning.py), checked after the handshake and before any request is
written. Plain `http://` is refused unless the host is this machine (loopback) or the app says
`allow_insecure=True` (development against another machine).
"""

from __future__ import annotations

import gzip
import http.client
import ipaddress
import os
import socket
import ssl
import threading
import urllib.parse
from typing import Iterable, Mapping, Protocol, Sequence

from fieldsync.errors import TransportError
from fieldsync.client.pinning import check_pin, normalise_pins

try:  # optional: zstd only when the module is installed
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None

COMPRESS_OVER = 1024
RAW_BYTES = "application/offset+octet-stream"   # a body sent uncompressed whatever its size


class Transport(Protocol):
    def request(self, method: str, path: str, *, headers: Mapping[str, str],
                body: bytes | None) -> tuple[int, dict[str, str], bytes]: ...


def decode_body(body: bytes, coding: str | None) -> bytes:
    coding = (coding or "identity").strip().lower()
    try:
        if coding in ("", "identity"):
            return body
        if coding == "gzip":
            return gzip.decompress(body)
        if coding == "zstd" and zstandard is not None:
            decoder = zstandard.ZstdDecompressor().decompressobj()
            data = decoder.decompress(body)
            if not decoder.eof:  # a frame cut short decodes to a prefix: that is no answer
                raise TransportError("the zstd response body ends before its frame does")
            return data
    except TransportError:
        raise
    except Exception as exc:  # OSError, EOFError (gzip cut short), zstandard.ZstdError
        raise TransportError(f"the response body is not valid {coding}: {exc}") from exc
    raise TransportError(f"the response uses an encoding this client cannot read: {coding}")


def accept_encoding() -> str:
    return "zstd, gzip" if zstandard is not None else "gzip"


class CompressingTransport:
    """Request compression and response decompression shared by the transports."""

    def __init__(self, *, compress: bool = True):
        self.compress = compress
        self._server_codings: tuple[str, ...] = ("gzip",)   # every server accepts gzip
        self._refused: set[str] = set()

    def use_encodings(self, encodings: Iterable[str]) -> None:
        """Tell the transport the codings the server listed in its capabilities."""
        self._server_codings = tuple(e for e in encodings if isinstance(e, str))

    def _coding_for(self, body: bytes | None) -> str | None:
        if not self.compress or body is None or len(body) <= COMPRESS_OVER:
            return None
        if zstandard is not None and "zstd" in self._server_codings and "zstd" not in self._refused:
            return "zstd"
        return "gzip" if "gzip" not in self._refused else None

    @staticmethod
    def _encode(body: bytes, coding: str | None) -> bytes:
        if coding == "gzip":
            return gzip.compress(body, compresslevel=6, mtime=0)
        if coding == "zstd":
            return zstandard.ZstdCompressor(level=3).compress(body)
        return body

    def request(self, method: str, path: str, *, headers: Mapping[str, str],
                body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        # upload bytes (tus PATCH) go as they are: the server writes them at an offset, and a
        # bundle or a photo is compressed or incompressible already
        raw = any(k.lower() == "content-type" and v == RAW_BYTES for k, v in headers.items())
        coding = None if raw else self._coding_for(body)
        while True:
            sent_headers = dict(headers)
            sent_headers.setdefault("Accept-Encoding", accept_encoding())
            payload = body
            if coding is not None and body is not None:
                payload = self._encode(body, coding)
                sent_headers["Content-Encoding"] = coding
            status, answer_headers, data = self._exchange(method, path, sent_headers, payload)
            if status == 415 and coding is not None:
                # the server does not take this coding (RFC 7694): remember, fall back
                self._refused.add(coding)
                coding = "gzip" if coding != "gzip" else None
                continue
            return status, answer_headers, decode_body(data, answer_headers.get("content-encoding"))

    def _exchange(self, method: str, path: str, headers: dict[str, str],
                  body: bytes | None) -> tuple[int, dict[str, str], bytes]:
        raise NotImplementedError


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); names are not resolved
    (a DNS answer is no proof that traffic stays on this machine)."""
    if host.rstrip(".").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class HttpTransport(CompressingTransport):
    """HTTP(S) to a fieldsync server over one kept-alive `http.client` connection.

    `timeout` is (connect, read) in seconds. One request at a time per transport (the client
    never has two in flight: protocol §4.4).

    TLS: `ca_file` (PEM) replaces the system CAs, or `ssl_context` replaces the whole context
    (it must verify certificates and hostnames). `pins`: SPKI SHA-256 pins (`sha256/<base64>`,
    the server key's and a backup key's); a server presenting another key is refused with
    PinMismatch before anything is sent. `allow_insecure=True` permits plain `http://` to a
    host that is not this machine (development only).
    """

    def __init__(self, base_url: str, *, ssl_context: ssl.SSLContext | None = None,
                 ca_file: str | os.PathLike[str] | None = None, pins: Sequence[str] | None = None,
                 allow_insecure: bool = False,
                 timeout: float | tuple[float, float] = (10, 120), compress: bool = True):
        super().__init__(compress=compress)
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        if self.scheme == "http":
            if pins is not None or ca_file is not None or ssl_context is not None:
                raise ValueError(f"{base_url}: pins, ca_file and ssl_context need an https:// URL")
            if not allow_insecure and not is_loopback(self.host):
                raise ValueError(f"{base_url}: plain http to {self.host} would send tokens and PHI unencrypted; "
                                 "use https://, or allow_insecure=True for development")
        if ssl_context is not None and ca_file is not None:
            raise ValueError("give ca_file or ssl_context, not both (load the CA into the context)")
        if ssl_context is not None and (ssl_context.verify_mode != ssl.CERT_REQUIRED
                                        or not ssl_context.check_hostname):
            raise ValueError("ssl_context must verify the server's certificate and hostname "
                             "(CERT_REQUIRED, check_hostname=True); pins come on top of that, not instead")
        if self.scheme == "https" and ssl_context is None:
            ssl_context = ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file is not None else None)
            ssl_context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ssl_context = ssl_context
        self.pins = normalise_pins(pins) if pins is not None else None
        self.connect_timeout, self.read_timeout = (timeout, timeout) if isinstance(timeout, (int, float)) else timeout
        self._conn: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.host, self.port, timeout=self.connect_timeout, context=self.ssl_context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        conn.connect()   # TCP, and for https the handshake: CA and hostname verified here
        assert conn.sock is not None
        if self.pins is not None:
            # pinning: before the first byte of a request (a push holds PHI) goes out
            try:
                check_pin(conn.sock.getpeercert(binary_form=True), self.host, self.pins)
            except BaseException:
                conn.close()
                raise
        conn.sock.settimeout(self.read_timeout)
        return conn

    def _exchange(self, method, path, headers, body):
        with self._lock:
            for attempt in (1, 2):
                reused = self._conn is not None
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    self._conn.request(method, self.prefix + path, body=body, headers=headers)
                    response = self._conn.getresponse()
                    data = response.read()
                    answer = {k.lower(): v for k, v in response.getheaders()}
                    if response.will_close:
                        self._drop()
                    return response.status, answer, data
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                    self._drop()
                    # a kept-alive connection the server closed meanwhile: one fresh try (every
                    # request of the protocol is safe to repeat)
                    if reused and attempt == 1:
                        continue
                    raise TransportError(f"{method} {path}: connection lost: {exc}") from exc
                except ssl.SSLCertVerificationError as exc:
                    self._drop()
                    raise TransportError(f"{method} {path}: the TLS certificate of {self.host} does not verify "
                                         f"({exc.verify_message or exc})") from exc
                except (OSError, http.client.HTTPException, socket.timeout) as exc:
                    self._drop()
                    raise TransportError(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
            raise AssertionError("unreachable")


class WsgiTransport(CompressingTransport):
    """Calls a WSGI application (e.g. `fieldsync.api.create_app(...)`) in this process."""

    def __init__(self, app, *, compress: bool = True):
        super().__init__(compress=compress)
        self.app = app

    def _exchange(self, method, path, headers, body):
        from werkzeug.test import EnvironBuilder, run_wsgi_app

        route, _, query = path.partition("?")
        builder = EnvironBuilder(path=route, method=method, headers=list(headers.items()),
                                 data=body or b"", query_string=query)
        try:
            environ = builder.get_environ()
        finally:
            builder.close()
        app_iter, status, answer_headers = run_wsgi_app(self.app, environ, buffered=True)
        try:
            data = b"".join(app_iter)
        finally:
            close = getattr(app_iter, "close", None)
            if close is not None:
                close()
        return int(status.split(" ", 1)[0]), {k.lower(): v for k, v in answer_headers.items()}, data
