"""docs/admin.md stays true: every screenshot it shows exists (the browser tests take them:
`make screenshots`), and every page of the admin UI's menu has its section."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "admin.md"


def test_every_screenshot_the_doc_shows_exists():
    text = DOC.read_text()
    pictures = re.findall(r"!\[[^\]]*\]\((admin/[^)]+\.png)\)", text)
    assert len(pictures) >= 8
    missing = [p for p in pictures if not (ROOT / "docs" / p).is_file()]
    assert not missing, f"docs/admin.md shows pictures that are not there (run `make screenshots`): {missing}"


def test_every_view_module_has_its_section():
    from fieldsync_admin.app import VIEW_MODULES
    headings = set(re.findall(r"^## (.+)$", DOC.read_text(), re.M))
    titles = {"definitions": "Definitions", "preview": "Sync rules preview", "data": "Data", "devices": "Devices",
              "queues": "Queues and workers", "keys": "Keys", "audit": "Audit", "users": "Users"}
    assert set(VIEW_MODULES) == set(titles)
    assert {titles[m] for m in VIEW_MODULES} | {"Dashboard", "Security"} <= headings
