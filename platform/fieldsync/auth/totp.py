"""Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP), the second factor of the
administrative roles' logins (auth/users.py). Standard library only: HMAC-SHA1, a 30-second
step, 6 digits, and a window of one step either side for clock drift, as authenticator apps
expect. The clock is passed in (`now`, seconds since the epoch).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
from urllib.parse import quote, urlencode

__all__ = ["DIGITS", "STEP", "WINDOW", "matching_step", "new_secret", "provisioning_uri", "totp"]

STEP = 30
DIGITS = 6
WINDOW = 1


def new_secret() -> str:
    """A random 160-bit secret, base32 without padding (what authenticator apps take)."""
    return base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")


def _key(secret: str) -> bytes:
    text = secret.strip().replace(" ", "").upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


def hotp(secret: str, counter: int) -> str:
    """RFC 4226: the code for `counter`."""
    digest = hmac.new(_key(secret), struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** DIGITS).zfill(DIGITS)


def totp(secret: str, now: float) -> str:
    """RFC 6238: the code at time `now`."""
    return hotp(secret, int(now) // STEP)


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The time step (within one step of `now`) whose code is `code`, else None. Compared in
    constant time; the caller refuses a step at or before the last one accepted (no replay)."""
    if not isinstance(code, str) or len(code) != DIGITS or not code.isdigit():
        return None
    current = int(now) // STEP
    found = None
    for step in range(current - WINDOW, current + WINDOW + 1):
        if hmac.compare_digest(hotp(secret, step), code):
            found = step
    return found


def provisioning_uri(secret: str, user: str, issuer: str = "fieldsync") -> str:
    """The `otpauth://` URI an authenticator app reads (usually from a QR code)."""
    query = urlencode({"secret": secret, "issuer": issuer, "digits": DIGITS, "period": STEP})
    return f"otpauth://totp/{quote(issuer)}:{quote(user)}?{query}"
