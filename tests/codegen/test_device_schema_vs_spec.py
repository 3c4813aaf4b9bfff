"""The generated device schema (`generated/device/schema.sql` and `schema.json`) says what
docs/protocol.md §10 says, and the client SDK does what both say: the outbox statuses, when an
outbox entry is deleted, and the keys of `_sync_state`."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fieldsync.client.schema import PLATFORM_DDL

ROOT = Path(__file__).resolve().parents[2]
SPEC = (ROOT / "docs" / "protocol.md").read_text()
SQL = (ROOT / "generated" / "device" / "schema.sql").read_text()
DOCUMENT = json.loads((ROOT / "generated" / "device" / "schema.json").read_text())


def _section_10() -> str:
    return SPEC[SPEC.index("## 10. The device's local procedure"):SPEC.index("### 10.1")]


def _table(text: str, first_header: str) -> list[list[str]]:
    """The rows of the markdown table whose header starts with `| first_header |`."""
    lines = text[text.index(f"| {first_header} |"):].splitlines()
    rows = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _words(text: str) -> str:
    return " ".join(text.split())


def _sql_comments(sql: str) -> str:
    return _words(" ".join(line.strip()[2:] for line in sql.splitlines() if line.strip().startswith("--")))


def test_outbox_statuses_are_the_specs():
    spec = [row[0].strip("`") for row in _table(_section_10(), "status")]
    assert spec == ["pending", "sent", "received"]
    assert DOCUMENT["platform_tables"]["_outbox"]["statuses"] == spec
    check = re.search(r'"status" TEXT NOT NULL DEFAULT \'pending\' CHECK \("status" IN \(([^)]*)\)\)', SQL)
    assert check and [v.strip(" '") for v in check.group(1).split(",")] == spec
    sdk = re.search(r'CHECK \("status" IN \(([^)]*)\)\)', " ".join(PLATFORM_DDL))
    assert sdk and [v.strip(" '") for v in sdk.group(1).split(",")] == spec
    for status in spec:   # each status's meaning is in the generated comment
        assert re.search(rf"--\s+{status}: ", SQL), status


def test_the_outbox_comment_says_when_an_entry_is_deleted_as_the_spec_does():
    section = _words(_section_10())
    rule = section[section.index("An outbox entry is deleted only once"):]
    rule = rule[:rule.index("never deletes it.") + len("never deletes it.")]
    comments = _sql_comments(SQL)
    assert rule in comments
    # and nothing in the generated comments says otherwise (a deletion on `received`)
    assert not re.search(r"deleted only once its status is `?received", comments)
    assert not re.search(r"until its outbox entry has been received", comments)


def test_sync_state_keys_are_the_specs():
    rows = _table(_section_10(), "key")
    spec = [row[0].strip("`") for row in rows]
    required = [row[0].strip("`") for row in rows if row[1] == "yes"]
    assert {"install_id", "device_id", "cursor", "resume", "scope_hash", "refetch", "write_checkpoint"} == set(required)
    assert DOCUMENT["platform_tables"]["_sync_state"]["keys"] == spec
    assert DOCUMENT["platform_tables"]["_sync_state"]["required"] == required
    listed = re.findall(r"^--   (\w+)( \(required\))?: ", SQL[SQL.index("-- Sync progress"):], re.M)
    assert [k for k, _ in listed] == spec
    assert [k for k, r in listed if r] == required


def test_the_sdk_keeps_only_keys_the_spec_names():
    used = set()
    for path in (ROOT / "platform" / "fieldsync" / "client").glob("*.py"):
        source = path.read_text()
        used |= set(re.findall(r"\bstate(?:_in)?\((?:conn, )?\"(\w+)\"", source))
        for call in re.findall(r"set_state\(conn, ([^)]*)\)", source):
            used |= set(re.findall(r"(\w+)=", call))
    assert {"install_id", "device_id", "cursor", "resume", "scope_hash", "refetch", "write_checkpoint"} <= used
    spec = {row[0].strip("`") for row in _table(_section_10(), "key")}
    assert used - spec == set()


def test_the_device_schema_document_validates_against_its_published_format():
    import jsonschema

    fmt = json.loads((ROOT / "generated" / "device" / "schema.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(fmt)
    validator = jsonschema.Draft202012Validator(fmt)
    assert list(validator.iter_errors(DOCUMENT)) == []
    # the format can fail: a column without its storage, an unknown member, a bad fingerprint
    broken = json.loads(json.dumps(DOCUMENT))
    del broken["entities"][0]["columns"][1]["storage"]
    broken["entities"][1]["colour"] = "red"
    broken["fingerprint"] = "xyz"
    assert len(list(validator.iter_errors(broken))) == 3
    assert "schema.schema.json" in SPEC   # the spec points to it (§7.3)
