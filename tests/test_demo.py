"""`fieldsync demo` is the issue's acceptance walkthrough: it must end converged."""

from __future__ import annotations

import json

from fieldsync.cli import main
from fieldsync.config import load_config
from fieldsync.demo import run_demo


def test_demo_two_devices_converge(tmp_path):
    lines: list[str] = []
    config = load_config(overrides={"DATA_DIR": str(tmp_path / "var")})
    assert run_demo(config, workdir=str(tmp_path / "work"), out=lines.append) is True
    text = "\n".join(lines)
    assert "shared data identical on both devices: yes" in text
    assert "credit_limit may not be set by your role" in text      # the quarantined change, with its reason
    assert "change(s) waiting in the outbox" in text
    stores = sorted((tmp_path / "work").glob("*.db"))
    assert [s.name for s in stores] == ["asha-phone.db", "kiran-tablet.db"]
    for store in stores:   # the demo's device stores are encrypted (docs/device-store.md)
        assert store.read_bytes()[:16] != b"SQLite format 3\x00"


def test_devices_command_lists_what_the_demo_registered(tmp_path, capsys):
    config = load_config(overrides={"DATA_DIR": str(tmp_path / "var")})
    run_demo(config, workdir=str(tmp_path / "work"), out=lambda _: None)
    # the in-process demo server keeps its database under the work directory
    server = tmp_path / "work" / "server"
    assert main(["devices", "--json", "--data-dir", str(server)]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert sorted(i["user_id"] for i in listing["items"]) == ["rep-asha", "rep-kiran"]
    kiran = next(i for i in listing["items"] if i["user_id"] == "rep-kiran")
    assert kiran["rejected"] == 1 and kiran["quarantined"] == 1 and kiran["unsettled"] == 0
