"""What a file's first bytes say it is, and whether that agrees with its declared type.

Only types whose signatures are unambiguous are recognised (images and PDF): a JPEG declared
as image/png, or an HTML page declared as image/jpeg, is refused; a declared type we cannot
recognise (text/plain, image/heic) is taken as declared when the field allows it.
"""

from __future__ import annotations

__all__ = ["SNIFF_BYTES", "sniffed_type", "agrees"]

SNIFF_BYTES = 16

_SIGNATURES = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
)
_RECOGNISED = {kind for _, kind in _SIGNATURES} | {"image/webp"}


def sniffed_type(head: bytes) -> str | None:
    """The type `head` (a file's first SNIFF_BYTES bytes) announces, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return kind
    return None


def agrees(declared: str, head: bytes) -> bool:
    """Whether the declared type and the first bytes agree: a recognised type must be what
    the bytes say; bytes that look like a recognised type may not hide behind another one."""
    kind = declared.split(";", 1)[0].strip().lower()
    found = sniffed_type(head)
    if kind in _RECOGNISED or found is not None:
        return found == kind
    return True
