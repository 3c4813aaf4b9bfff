"""`fieldsync tls dev-cert`: a development certificate authority and a server certificate
signed by it, plus a backup key, so the server can be run over HTTPS and the SDK tried with
CA verification and key pinning on one machine. Not for production: there the certificate
comes from the organisation's CA (or a public one) and the keys from its own process.

Files (keys mode 0600, the directory 0700):

    ca.pem       the development CA's certificate: what the SDK trusts (`ca_file=`)
    ca.key       its private key (signs server certificates)
    server.pem   the server certificate (DNS and IP names from --host), for --tls-cert
    server.key   its private key, for --tls-key
    backup.key   a second key, in no certificate yet: its pin goes into the app next to the
                 server key's, so the server can move to it (a new certificate for this key)
                 without breaking the devices in the field
"""

from __future__ import annotations

import datetime as dt
import base64
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fieldsync.errors import ConfigError

def public_key_pin(public_key) -> str:
    """The RFC 7469 pin (`sha256/<base64 of SHA-256 of the SubjectPublicKeyInfo>`) the SDK checks
    (`fieldsync.client.pinning`); computed here so the server does not import the SDK."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256/" + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


__all__ = ["DEFAULT_HOSTS", "DevCertificates", "make_dev_certificates", "issue_server_certificate"]

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "backup.key")
CA_DAYS = 365
SERVER_DAYS = 90


@dataclass(frozen=True)
class DevCertificates:
    """Where `make_dev_certificates` wrote its files, and the pins to give the SDK."""

    directory: Path
    hosts: tuple[str, ...]
    server_pin: str
    backup_pin: str

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def cert_file(self) -> Path:
        return self.directory / "server.pem"

    @property
    def key_file(self) -> Path:
        return self.directory / "server.key"

    @property
    def backup_key_file(self) -> Path:
        return self.directory / "backup.key"

    @property
    def pins(self) -> tuple[str, str]:
        return self.server_pin, self.backup_pin


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, key) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _subject_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host.strip("[]"))))
        except ValueError:
            if not host or any(c.isspace() or c in "/:@" for c in host):
                raise ConfigError(f"--host {host!r} is neither a DNS name nor an IP address") from None
            names.append(x509.DNSName(host))
    return names


def issue_server_certificate(ca_cert: x509.Certificate, ca_key, server_key, hosts: Sequence[str], *,
                             now: dt.datetime, days: int = SERVER_DAYS) -> x509.Certificate:
    """A TLS server certificate for `server_key`'s public key, valid for `hosts`, signed by the CA."""
    public = server_key.public_key()
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))


def _ca_certificate(ca_key, now: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fieldsync development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "fieldsync development CA")])
    public = ca_key.public_key()
    return (x509.CertificateBuilder()
            .subject_name(name).issuer_name(name).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(ca_key, hashes.SHA256()))


def make_dev_certificates(directory: str | os.PathLike[str], hosts: Sequence[str] = DEFAULT_HOSTS, *,
                          force: bool = False,
                          clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)
                          ) -> DevCertificates:
    """Write a development CA, a server certificate for `hosts` and a backup key into
    `directory`. Existing files are kept (ConfigError naming them) unless `force`: devices
    that pinned the old keys would refuse the new ones."""
    hosts = tuple(dict.fromkeys(h.strip() for h in hosts if h.strip())) or DEFAULT_HOSTS
    _subject_names(hosts)   # refuse a bad --host before anything is written
    target = Path(directory)
    existing = [name for name in FILES if (target / name).exists()]
    if existing and not force:
        raise ConfigError(f"{target} already holds {', '.join(existing)}; pass --force to replace them "
                          "(apps that pinned the old keys will refuse the new ones)")
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in existing:
        (target / name).unlink()
    now = clock()
    ca_key, server_key, backup_key = _new_key(), _new_key(), _new_key()
    ca_cert = _ca_certificate(ca_key, now)
    server_cert = issue_server_certificate(ca_cert, ca_key, server_key, hosts, now=now)
    _write_private(target / "ca.key", ca_key)
    _write_private(target / "server.key", server_key)
    _write_private(target / "backup.key", backup_key)
    (target / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (target / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return DevCertificates(target, hosts, public_key_pin(server_key.public_key()),
                           public_key_pin(backup_key.public_key()))
