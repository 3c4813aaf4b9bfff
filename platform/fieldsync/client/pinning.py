"""Public key pinning for the SDK's TLS connections.

A pin is the SHA-256 of a certificate's SubjectPublicKeyInfo (its public key with algorithm),
base64-encoded, written as in HPKP (RFC 7469): `sha256/<base64>`. It names a key, not a
certificate, so a renewed certificate for the same key keeps its pin, and a backup pin (a
second key held in reserve) lets the server move to a new key without breaking devices.

The check comes on top of CA and hostname verification, never instead of it, and runs right
after the TLS handshake, before a byte of any request is written (a push holds PHI).
Python's ssl module exposes only the server's own certificate (the leaf), so pins name the
server's keys, not a CA's.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Iterable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fieldsync.errors import PinMismatch

__all__ = ["certificate_pin", "check_pin", "normalise_pins", "public_key_pin"]

PREFIX = "sha256/"


def public_key_pin(public_key) -> str:
    """The pin (`sha256/<base64>`) of a `cryptography` public key."""
    spki = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def certificate_pin(der: bytes) -> str:
    """The pin of the public key in a DER certificate."""
    return public_key_pin(x509.load_der_x509_certificate(der).public_key())


def normalise_pins(pins: Iterable[str]) -> tuple[str, ...]:
    """Pins as `sha256/<base64>` (the prefix is optional on input); ValueError naming a pin
    that is not the base64 of 32 bytes."""
    if isinstance(pins, str):
        raise ValueError("pins is a list of pins (sha256/<base64> each), not one string")
    out: list[str] = []
    for pin in pins:
        text = str(pin).strip()
        digest = text[len(PREFIX):] if text.startswith(PREFIX) else text
        try:
            raw = base64.b64decode(digest, validate=True)
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise ValueError(f"not an SPKI SHA-256 pin (sha256/ and the base64 of 32 bytes): {pin!r}")
        normal = PREFIX + base64.b64encode(raw).decode("ascii")
        if normal not in out:
            out.append(normal)
    if not out:
        raise ValueError("pins is empty: give at least the server key's pin (and a backup pin), or None")
    return tuple(out)


def check_pin(der: bytes | None, host: str, pins: tuple[str, ...]) -> str:
    """The presented pin when it is one of `pins`; PinMismatch otherwise."""
    if not der:
        raise PinMismatch(host, None, pins)
    presented = certificate_pin(der)
    if presented not in pins:
        raise PinMismatch(host, presented, pins)
    return presented
