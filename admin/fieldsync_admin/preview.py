"""The preview view of the admin UI (issue 12, section 3): being built."""

from __future__ import annotations

__all__ = ["views"]


def views(snapshot) -> list:
    return []
