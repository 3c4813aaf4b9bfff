"""The device store's key: what the app holds (`StoreKey`: the device secret the server issued
at enrolment, and the user's PIN when the app sets one), the clear header kept next to the
store (`StoreHeader`: device id, install id, PIN salt and cost; never a key), and the
derivation of SQLCipher's raw 256-bit key from the two (docs/device-store.md):

    pin_key   = scrypt(PIN, salt, n, r, p)                         only when a PIN is set
    store key = HKDF-SHA256(ikm = device_secret [|| pin_key], salt,
                            info = "fieldsync device store v1" 0x00 device_id)

Pure apart from reading and writing the header file; nothing here talks to the network.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fieldsync.errors import ClientError

KEY_BYTES = 32
SECRET_BYTES = 32
SALT_BYTES = 16
HEADER_FORMAT = 1
HKDF_INFO = b"fieldsync device store v1"
# scrypt cost for the PIN: n=2**15, r=8 is 32 MiB and about 0.1 s on a phone-class core, the
# price of one unlock; a higher n hurts every app start more than it slows a thief who already
# holds the device secret (docs/device-store.md, "Threat model")
SCRYPT_N = 2 ** 15
SCRYPT_R = 8
SCRYPT_P = 1


@dataclass(frozen=True)
class StoreKey:
    """What opens an encrypted device store: the `device_secret` that `enroll()` returned (32
    bytes, kept in the OS keystore) and the user's `pin` when the app sets one."""

    device_secret: bytes = field(repr=False)
    pin: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.device_secret, (bytes, bytearray)) or len(self.device_secret) != SECRET_BYTES:
            raise ValueError(f"a device secret is {SECRET_BYTES} bytes (the one enroll() returned)")
        if self.pin is not None and (not isinstance(self.pin, str) or not self.pin):
            raise ValueError("a PIN is a non-empty string; pass pin=None for a store without a PIN")

    def __repr__(self) -> str:
        return f"StoreKey(device_secret=<hidden>, pin={'<set>' if self.pin is not None else None})"


@dataclass(frozen=True)
class StoreHeader:
    """The clear header of an encrypted store, `<store path>.header` (JSON). Everything in it is
    an identifier or a public KDF parameter: losing it makes the store unreadable, reading it
    reveals nothing about the data."""

    device_id: str
    install_id: str
    salt: bytes
    pin: bool = False
    scrypt_n: int = SCRYPT_N
    scrypt_r: int = SCRYPT_R
    scrypt_p: int = SCRYPT_P

    @staticmethod
    def path_for(store_path: str | os.PathLike[str]) -> Path:
        return Path(f"{os.fspath(store_path)}.header")

    @classmethod
    def new(cls, device_id: str, install_id: str, *, scrypt_n: int = SCRYPT_N) -> "StoreHeader":
        if scrypt_n < 2 or scrypt_n & (scrypt_n - 1):
            raise ValueError(f"scrypt_n must be a power of two above 1, not {scrypt_n}")
        return cls(device_id=device_id, install_id=install_id, salt=os.urandom(SALT_BYTES), scrypt_n=scrypt_n)

    @classmethod
    def read(cls, store_path: str | os.PathLike[str]) -> "StoreHeader | None":
        """The header next to `store_path`, or None when there is none."""
        path = cls.path_for(store_path)
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ClientError(f"the store header {path} cannot be read: {exc}") from None
        try:
            if document.get("format") != HEADER_FORMAT:
                raise ValueError(f"format {document.get('format')!r}, this SDK reads {HEADER_FORMAT}")
            scrypt = document["scrypt"]
            return cls(device_id=str(document["device_id"]), install_id=str(document["install_id"]),
                       salt=base64.b64decode(document["salt"], validate=True), pin=bool(document["pin"]),
                       scrypt_n=int(scrypt["n"]), scrypt_r=int(scrypt["r"]), scrypt_p=int(scrypt["p"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ClientError(f"the store header {path} is not a fieldsync store header: {exc}") from None

    def write(self, store_path: str | os.PathLike[str]) -> None:
        """Write the header atomically (temporary file, fsync, rename, fsync of the directory):
        a crash leaves the old header or the new one, never half of one."""
        path = self.path_for(store_path)
        document: dict[str, Any] = {
            "format": HEADER_FORMAT, "device_id": self.device_id, "install_id": self.install_id,
            "salt": base64.b64encode(self.salt).decode("ascii"), "pin": self.pin,
            "scrypt": {"n": self.scrypt_n, "r": self.scrypt_r, "p": self.scrypt_p}}
        replace_file(path, (json.dumps(document, indent=1, sort_keys=True) + "\n").encode("utf-8"))

    def with_pin(self, pin: bool) -> "StoreHeader":
        return replace(self, pin=pin)

    def derive(self, key: StoreKey) -> bytes:
        """The raw SQLCipher key of this store for `key`."""
        return derive_store_key(key.device_secret, self.device_id, pin=key.pin, salt=self.salt,
                                scrypt_n=self.scrypt_n, scrypt_r=self.scrypt_r, scrypt_p=self.scrypt_p)


def derive_store_key(device_secret: bytes, device_id: str, *, pin: str | None, salt: bytes,
                     scrypt_n: int = SCRYPT_N, scrypt_r: int = SCRYPT_R, scrypt_p: int = SCRYPT_P) -> bytes:
    """The 32-byte store key of `device_id` from its device secret and, when set, the PIN.

    The same inputs always give the same key; another device id, secret, PIN or salt gives
    another. The PIN is NFC-normalised first, so the same digits typed on two keyboards match.
    """
    ikm = bytes(device_secret)
    if pin is not None:
        normal = unicodedata.normalize("NFC", pin).encode("utf-8")
        ikm += hashlib.scrypt(normal, salt=salt, n=scrypt_n, r=scrypt_r, p=scrypt_p,
                              maxmem=256 * scrypt_r * scrypt_n * scrypt_p + (1 << 20), dklen=KEY_BYTES)
    info = HKDF_INFO + b"\x00" + device_id.encode("utf-8")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, info=info).derive(ikm)


def replace_file(path: Path, data: bytes) -> None:
    """Write `path` atomically and durably."""
    temporary = path.with_name(path.name + ".tmp")
    with os.fdopen(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
