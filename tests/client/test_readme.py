"""The README's "Python client SDK" example runs as written (against the seeded server over
HTTP, as `make run` serves it), so the documentation cannot drift from the SDK."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from fieldsync.client import Client, HttpTransport
from fieldsync.seed import DEMO_USERS

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python client SDK", 1)[1].split("\n## ", 1)[0]
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_the_readme_example_runs(app, http_url, tmp_path, monkeypatch, token):
    asha = DEMO_USERS[0]
    assert asha["user"] == "rep-asha"
    monkeypatch.setenv("TOKEN", token("rep-asha", *asha["attributes"]["territory_ids"]))
    code = readme_example()
    replacements = (('"http://127.0.0.1:8000"', repr(http_url)), ('"asha.db"', repr(str(tmp_path / "asha.db"))),
                    ('"generated/device/schema.json"', repr(str(ROOT / "generated/device/schema.json"))))
    for literal, actual in replacements:
        assert literal in code
        code = code.replace(literal, actual)
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), namespace)
    assert "SyncReport(pushed=1" in out.getvalue()
    with Client(tmp_path / "asha.db", HttpTransport(http_url), "unused") as client:
        visit = client.get("visit", namespace["visit_id"])
        assert visit["version"] == 1 and visit["rep_id"] == "rep-asha" and visit["notes"] == "met the owner"
        status = client.status()
        assert (status.pending, status.unsettled, status.quarantined) == (0, 0, 0)
