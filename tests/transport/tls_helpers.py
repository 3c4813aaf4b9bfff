"""Helpers of the TLS tests (imported by name: conftest modules of several test directories
share one import name): server certificates as files with their pins, and a request recorder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509

from fieldsync.client.pinning import public_key_pin

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServerCert:
    """A server certificate as files, and the pin of its key."""

    cert_file: Path
    key_file: Path
    pin: str


def leaf_files(leaf: trustme.LeafCert, directory: Path, name: str) -> ServerCert:
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
    cert_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_file))
    public = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_key()
    return ServerCert(cert_file, key_file, public_key_pin(public))


class Recorder:
    """WSGI middleware: every request that reached the app, as (method, path)."""

    def __init__(self, app):
        self.app = app
        self.seen: list[tuple[str, str]] = []

    def __call__(self, environ, start_response):
        self.seen.append((environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")))
        return self.app(environ, start_response)
