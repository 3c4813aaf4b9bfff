"""The SDK over real TLS (cheroot on 127.0.0.1, certificates from trustme): CA and hostname
verification always, SPKI SHA-256 pins on top, checked before a byte of a request is sent; a
backup pin survives a certificate rotation to a new key; plain http only to this machine."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
import trustme
from hypothesis import given, strategies as st

from fieldsync.client import Client, HttpTransport, PinMismatch, TransportError
from fieldsync.client.pinning import normalise_pins

from tls_helpers import Recorder

SAI = "2fd6ae15-929b-509f-9c04-01a819382ca2"      # a retailer in Pune (examples/seed)
PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"
OTHER_PIN = "sha256/" + "A" * 43 + "="
VISIT = {"retailer_id": SAI, "territory_id": PUNE, "visited_at": "2026-11-26T10:00:00Z", "purpose": "order",
         "notes": "Asha Rao, follow-up on her prescription"}


@pytest.fixture
def transports():
    """`make(url, **kw)`: an HttpTransport closed after the test."""
    made: list[HttpTransport] = []

    def make(url: str, **kwargs) -> HttpTransport:
        made.append(HttpTransport(url, timeout=(5, 30), **kwargs))
        return made[-1]
    yield make
    for transport in made:
        transport.close()


@pytest.fixture
def device(tmp_path, schema_document, token):
    """`device(name, transport)`: a client with a store of its own, closed after the test."""
    opened: list[Client] = []

    def make(name: str, transport) -> Client:
        opened.append(Client(tmp_path / f"{name}.db", transport, token("rep-" + name), schema=schema_document))
        return opened[-1]
    yield make
    for client in opened:
        client.close()


def test_a_sync_over_tls_with_pins_works(app, issue, ca_file, https_server, transports, device):
    cert = issue("localhost")
    recorder = Recorder(app)
    port = https_server(recorder, cert)
    transport = transports(f"https://localhost:{port}", ca_file=ca_file, pins=[cert.pin, OTHER_PIN])
    ana = device("ana", transport)
    ana.sync()
    assert ana.get("retailer", SAI)["name"] == "Sai Medical Stores"
    ana.insert("visit", VISIT)
    ana.sync()
    assert ana.status().pending == 0 and ana.status().sent == 0
    assert ("POST", "/api/v1/sync/push") in recorder.seen
    assert transport._conn is not None and transport._conn.sock.version() in ("TLSv1.2", "TLSv1.3")


def test_a_wrong_pin_is_refused_before_anything_is_sent(app, issue, ca_file, https_server, transports, device):
    cert = issue("localhost")
    recorder = Recorder(app)
    port = https_server(recorder, cert)
    ana = device("ana", transports(f"https://localhost:{port}", ca_file=ca_file, pins=[OTHER_PIN]))
    ana.insert("visit", VISIT)
    with pytest.raises(PinMismatch) as caught:
        ana.sync()
    error = caught.value
    assert error.host == "localhost" and error.presented == cert.pin and error.expected == (OTHER_PIN,)
    assert cert.pin in str(error) and OTHER_PIN in str(error) and "localhost" in str(error)
    assert isinstance(error, TransportError)          # retried with backoff like any network failure
    assert recorder.seen == []                         # the server saw no request at all, no push
    status = ana.status()
    assert status.pending + status.sent == 1 and status.received == 0   # the visit waits in the outbox


def test_no_byte_of_the_request_reaches_the_server_on_a_pin_mismatch(issue, ca_file, transports):
    """At the socket: the handshake completes (so the refusal is the pin's), then the client
    closes without writing any application data."""
    cert = issue("localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert.cert_file, cert.key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    received: dict[str, object] = {}
    done = threading.Event()

    def serve_one() -> None:
        conn, _ = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                received["handshake"] = tls.version()
                tls.settimeout(10)
                data = b""
                try:
                    while chunk := tls.recv(65536):
                        data += chunk
                except (ssl.SSLError, OSError):
                    pass
                received["data"] = data
        finally:
            done.set()

    thread = threading.Thread(target=serve_one, daemon=True)
    thread.start()
    try:
        transport = transports(f"https://localhost:{listener.getsockname()[1]}", ca_file=ca_file, pins=[OTHER_PIN])
        with pytest.raises(PinMismatch):
            transport.request("POST", "/api/v1/sync/push", headers={"Content-Type": "application/json"},
                              body=b'{"patient_name": "Asha Rao"}')
        assert done.wait(10)
    finally:
        listener.close()
        thread.join(10)
    assert received["handshake"] in ("TLSv1.2", "TLSv1.3")
    assert received["data"] == b""


def test_a_backup_pin_survives_rotation_to_a_new_certificate(app, issue, ca_file, https_server, transports):
    current, rotated = issue("localhost", name="current"), issue("localhost", name="rotated")
    assert current.pin != rotated.pin                  # a new key, not a renewal of the old one
    app_pins = [current.pin, rotated.pin]               # what the app ships with: the key in use and the backup
    old_app_pins = [current.pin]                        # an app that pinned only the key in use

    def health(port: int, pins: list[str]) -> int:
        return transports(f"https://localhost:{port}", ca_file=ca_file, pins=pins).request(
            "GET", "/api/v1/health", headers={}, body=None)[0]

    before = https_server(app, current)
    assert health(before, app_pins) == 200 and health(before, old_app_pins) == 200
    https_server.stop_all()
    after = https_server(app, rotated)                  # the server now presents the backup key's certificate
    assert health(after, app_pins) == 200
    with pytest.raises(PinMismatch) as caught:
        health(after, old_app_pins)
    assert caught.value.presented == rotated.pin


def test_an_untrusted_ca_is_refused_even_with_a_matching_pin(app, issue, ca_file, https_server, transports):
    stranger = trustme.CA(key_type=trustme.KeyType.ECDSA)
    cert = issue("localhost", by=stranger)
    recorder = Recorder(app)
    port = https_server(recorder, cert)
    transport = transports(f"https://localhost:{port}", ca_file=ca_file, pins=[cert.pin])
    with pytest.raises(TransportError, match="does not verify") as caught:
        transport.request("GET", "/api/v1/health", headers={}, body=None)
    assert not isinstance(caught.value, PinMismatch) and recorder.seen == []


def test_a_wrong_hostname_is_refused_even_with_a_matching_pin(app, issue, ca_file, https_server, transports):
    cert = issue("fieldsync.example", "127.0.0.1")     # not valid for localhost
    recorder = Recorder(app)
    port = https_server(recorder, cert)
    with pytest.raises(TransportError, match="does not verify") as caught:
        transports(f"https://localhost:{port}", ca_file=ca_file, pins=[cert.pin]).request(
            "GET", "/api/v1/health", headers={}, body=None)
    assert "localhost" in str(caught.value) and recorder.seen == []
    # the same server under a name its certificate has: verified and pinned
    ok = transports(f"https://127.0.0.1:{port}", ca_file=ca_file, pins=[cert.pin])
    assert ok.request("GET", "/api/v1/health", headers={}, body=None)[0] == 200


def test_the_system_cas_do_not_trust_a_test_ca(app, issue, https_server, transports):
    cert = issue("localhost")
    port = https_server(app, cert)
    with pytest.raises(TransportError, match="does not verify"):
        transports(f"https://localhost:{port}", pins=[cert.pin]).request("GET", "/api/v1/health", headers={},
                                                                         body=None)


# -- what the transport accepts ------------------------------------------------------------------

@pytest.mark.parametrize("url", ["http://fieldsync.example:8000", "http://10.0.0.5", "http://0.0.0.0:8000",
                                 "http://127.0.0.1.nip.io"])
def test_plain_http_beyond_this_machine_needs_allow_insecure(url):
    with pytest.raises(ValueError, match="plain http .* allow_insecure=True"):
        HttpTransport(url)
    assert HttpTransport(url, allow_insecure=True).scheme == "http"


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000",
                                 "http://127.3.4.5"])
def test_plain_http_to_this_machine_is_fine(url):
    assert HttpTransport(url).scheme == "http"


def test_settings_that_would_weaken_verification_are_refused(ca_file):
    with pytest.raises(ValueError, match="need an https:// URL"):
        HttpTransport("http://127.0.0.1:8000", pins=[OTHER_PIN])
    lax = ssl.create_default_context()
    lax.check_hostname = False
    lax.verify_mode = ssl.CERT_NONE
    with pytest.raises(ValueError, match="must verify"):
        HttpTransport("https://localhost", ssl_context=lax, pins=[OTHER_PIN])
    with pytest.raises(ValueError, match="not both"):
        HttpTransport("https://localhost", ssl_context=ssl.create_default_context(), ca_file=ca_file)
    with pytest.raises(ValueError, match="not an SPKI SHA-256 pin"):
        HttpTransport("https://localhost", pins=["sha256/tooshort="])
    with pytest.raises(ValueError, match="empty"):
        HttpTransport("https://localhost", pins=[])
    with pytest.raises(ValueError, match="not one string"):
        HttpTransport("https://localhost", pins=OTHER_PIN)


@given(st.binary(min_size=32, max_size=32))
def test_pins_are_read_with_or_without_the_prefix(digest):
    import base64
    text = base64.b64encode(digest).decode()
    assert normalise_pins([text]) == normalise_pins(["sha256/" + text]) == ("sha256/" + text,)
