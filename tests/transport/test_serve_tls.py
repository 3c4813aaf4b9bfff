"""`fieldsync tls dev-cert` and `fieldsync serve --tls-cert/--tls-key`: the development CA and
pins work with the SDK, the backup key takes over without breaking pinned devices, the server
answers over HTTPS in a process of its own, and plain HTTP beyond this machine is refused."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fieldsync.api.https_server import check_plain_http_allowed, is_loopback_address, server_tls_context
from fieldsync.cli import main
from fieldsync.client import HttpTransport, PinMismatch, TransportError
from fieldsync.errors import ConfigError
from fieldsync.crypto.devcert import issue_server_certificate

from tls_helpers import ROOT, ServerCert

PIN = re.compile(r"sha256/[A-Za-z0-9+/]{43}=")


def dev_cert(directory: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["tls", "dev-cert", "--dir", str(directory), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_dev_cert_output_works_with_the_sdk(tmp_path, capsys, app, https_server):
    code, out, _ = dev_cert(tmp_path / "tls", capsys)
    assert code == 0
    server_pin, backup_pin = PIN.findall(out)[:2]
    assert server_pin != backup_pin and f'"{server_pin}", "{backup_pin}"' in out
    files = {name: tmp_path / "tls" / name for name in ("ca.pem", "ca.key", "server.pem", "server.key", "backup.key")}
    for name in ("ca.key", "server.key", "backup.key"):
        assert stat.S_IMODE(os.stat(files[name]).st_mode) == 0o600, name
    assert f"fieldsync serve --tls-cert {files['server.pem']} --tls-key {files['server.key']}" in out

    port = https_server(app, ServerCert(files["server.pem"], files["server.key"], server_pin))
    for host in ("localhost", "127.0.0.1"):
        transport = HttpTransport(f"https://{host}:{port}", ca_file=files["ca.pem"], pins=[server_pin, backup_pin])
        try:
            assert transport.request("GET", "/api/v1/health", headers={}, body=None)[0] == 200
        finally:
            transport.close()
    stranger = HttpTransport(f"https://localhost:{port}", ca_file=files["ca.pem"], pins=[backup_pin])
    with pytest.raises(PinMismatch):
        stranger.request("GET", "/api/v1/health", headers={}, body=None)


def test_the_backup_key_takes_over_without_breaking_pinned_devices(tmp_path, capsys, app, https_server):
    """Rotation as the output describes it: a new certificate for backup.key, signed by the CA."""
    directory = tmp_path / "tls"
    _, out, _ = dev_cert(directory, capsys, "--host", "localhost")
    pins = PIN.findall(out)[:2]
    load_key = lambda name: serialization.load_pem_private_key((directory / name).read_bytes(), None)  # noqa: E731
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    rotated = issue_server_certificate(ca_cert, load_key("ca.key"), load_key("backup.key"), ["localhost"],
                                       now=dt.datetime.now(dt.timezone.utc))
    (tmp_path / "rotated.pem").write_bytes(rotated.public_bytes(serialization.Encoding.PEM))
    port = https_server(app, ServerCert(tmp_path / "rotated.pem", directory / "backup.key", pins[1]))
    transport = HttpTransport(f"https://localhost:{port}", ca_file=directory / "ca.pem", pins=pins)
    try:
        assert transport.request("GET", "/api/v1/health", headers={}, body=None)[0] == 200
    finally:
        transport.close()


def test_dev_cert_keeps_earlier_files_unless_forced(tmp_path, capsys):
    assert dev_cert(tmp_path, capsys)[0] == 0
    before = (tmp_path / "server.key").read_bytes()
    code, _, err = dev_cert(tmp_path, capsys)
    assert code == 1 and "already holds" in err and "--force" in err
    assert (tmp_path / "server.key").read_bytes() == before
    assert dev_cert(tmp_path, capsys, "--force")[0] == 0
    assert (tmp_path / "server.key").read_bytes() != before


def test_dev_cert_names_every_host_and_refuses_a_bad_one(tmp_path, capsys):
    code, _, _ = dev_cert(tmp_path / "a", capsys, "--host", "fieldsync.test", "--host", "10.1.2.3")
    assert code == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "a" / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fieldsync.test"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    code, _, err = dev_cert(tmp_path / "b", capsys, "--host", "https://oops")
    assert code == 1 and "'https://oops' is neither a DNS name nor an IP address" in err
    assert not (tmp_path / "b" / "server.key").exists()


def test_the_server_context_is_tls_1_2_at_least_and_names_bad_files(tmp_path, capsys):
    dev_cert(tmp_path, capsys)
    context = server_tls_context(tmp_path / "server.pem", tmp_path / "server.key")
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    with pytest.raises(ConfigError, match="backup.key.* do not load"):
        server_tls_context(tmp_path / "server.pem", tmp_path / "backup.key")   # another key than the cert's
    with pytest.raises(ConfigError, match="missing.pem' does not exist"):
        server_tls_context(tmp_path / "missing.pem", tmp_path / "server.key")


# -- fieldsync serve ------------------------------------------------------------------------------

def _serve(tmp_path: Path, *args: str) -> subprocess.Popen:
    # Ctrl-C must reach it even when this test process ignores SIGINT (a background job does)
    command = [sys.executable, "-c", "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "from fieldsync.cli import main; sys.exit(main(sys.argv[1:]))", "serve", "--port", "0", "--defs", str(ROOT / "entity_defs"),
               "--data-dir", str(tmp_path / "var"), "--database-url", f"sqlite:///{tmp_path / 'server.db'}", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("FIELDSYNC_CONFIG", None)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=tmp_path)


def _serving_line(process: subprocess.Popen, timeout: float = 60) -> str:
    """The server's "serving on" line (printed once it is bound and listening)."""
    found: list[str] = []
    seen: list[str] = []

    def read() -> None:
        for line in process.stdout:
            seen.append(line)
            if "serving on" in line:
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        process.kill()
        process.wait()
        pytest.fail(f"the server did not say it was serving; stdout: {''.join(seen)!r} stderr: {process.stderr.read()!r}")
    return found[0]


def test_serve_with_tls_answers_health_over_https(tmp_path, capsys):
    _, out, _ = dev_cert(tmp_path / "tls", capsys)
    pins = PIN.findall(out)[:2]
    process = _serve(tmp_path, "--tls-cert", str(tmp_path / "tls" / "server.pem"),
                     "--tls-key", str(tmp_path / "tls" / "server.key"))
    try:
        line = _serving_line(process)
        match = re.search(r"serving on https://127\.0\.0\.1:(\d+)/api/v1", line)
        assert match, line
        port = int(match.group(1))
        transport = HttpTransport(f"https://localhost:{port}", ca_file=tmp_path / "tls" / "ca.pem", pins=pins)
        try:
            status, _, body = transport.request("GET", "/api/v1/health", headers={}, body=None)
            assert (status, body) == (200, b'{"status": "ok"}')
            assert transport._conn.sock.version() in ("TLSv1.2", "TLSv1.3")
        finally:
            transport.close()
        plain = HttpTransport(f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(TransportError):   # TLS only: plain HTTP gets no answer
                plain.request("GET", "/api/v1/health", headers={}, body=None)
        finally:
            plain.close()
    finally:
        process.send_signal(signal.SIGINT)   # Ctrl-C
        try:
            process.wait(20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
            process.stderr.close()
    assert process.returncode == 0


def test_serve_refuses_plain_http_beyond_this_machine(tmp_path, capsys):
    code = main(["serve", "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path),
                 "--database-url", f"sqlite:///{tmp_path / 'server.db'}"])
    err = capsys.readouterr().err
    assert code == 1 and "refusing to serve plain HTTP on 0.0.0.0" in err and "--tls-cert" in err
    assert not (tmp_path / "server.db").exists()          # refused before anything started


def test_serve_needs_both_tls_files_and_names_a_bad_one(tmp_path, capsys):
    assert main(["serve", "--tls-cert", str(tmp_path / "server.pem"), "--data-dir", str(tmp_path)]) == 1
    assert "only the certificate was given" in capsys.readouterr().err
    assert main(["serve", "--tls-cert", str(tmp_path / "server.pem"), "--tls-key", str(tmp_path / "k"),
                 "--data-dir", str(tmp_path)]) == 1
    assert "server.pem' does not exist" in capsys.readouterr().err


def test_which_addresses_count_as_this_machine():
    for host in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "localhost"):
        assert is_loopback_address(host), host
        check_plain_http_allowed(host, behind_tls_proxy=False)
    for host in ("0.0.0.0", "::", "", "10.0.0.5", "192.0.2.1"):
        assert not is_loopback_address(host), host
        with pytest.raises(ConfigError, match="refusing to serve plain HTTP"):
            check_plain_http_allowed(host, behind_tls_proxy=False)
        check_plain_http_allowed(host, behind_tls_proxy=True)   # a TLS proxy in front: the operator says so
