"""Scenario (1) of issue 12 §4, its device half, with the change applied by `fieldsync apply`:
a field rep's device with writes waiting in its outbox (made offline), an analyst applies an
optional field on `retailer` and a new transaction entity to the running server, the device
syncs and holds the new column and table, and every write of its outbox is delivered once.

Prints the time from the apply to the device holding the new column (the closing note of issue
12 asks for it; the UI version of this scenario measures the same with this harness). The device
syncs in a loop here: on a phone the delay adds its own sync interval.
"""

from __future__ import annotations

import json
import time

from tests.admin.e2e.definitions import add_optional_field, add_survey_entity, changed_copy, raise_schema_version
from tests.admin.e2e.server import PUNE_CENTRAL, ROLE_USERS

OFFLINE_VISITS = 3


def test_a_device_follows_an_applied_change_with_its_outbox_intact(server, device, tmp_path, timings):
    device.sync()
    [shop, *_] = device.client.query("retailer")
    assert not device.has_column("retailer", "email") and not device.has_table("survey")

    # offline: the rep records visits; they wait in the outbox
    visits = [device.write("visit", {"retailer_id": shop["id"], "territory_id": PUNE_CENTRAL,
                                     "visited_at": "2026-12-03T09:00:00Z", "purpose": "order",
                                     "notes": f"offline visit {i}"}) for i in range(OFFLINE_VISITS)]
    assert device.status().pending == OFFLINE_VISITS

    # the analyst's change, applied to the running server with the CLI
    changed = changed_copy(server.defs_dir, tmp_path / "changed")
    version = raise_schema_version(changed)
    add_optional_field(changed, "retailer", "email")
    add_survey_entity(changed)
    mark = time.perf_counter()
    before = json.loads(server.cli("versions", "list", "--json").stdout)
    cli_start_seconds = time.perf_counter() - mark    # a command that does next to nothing
    started = time.perf_counter()
    applied = server.cli("apply", str(changed))
    apply_seconds = time.perf_counter() - started
    assert f"schema_version {version}" in applied.stdout, applied.stdout

    # the device syncs (push first: its visits go up with the old schema) and migrates
    column_seconds = device.wait_for_column("retailer", "email", since=started)
    assert device.has_table("survey") and "score" in device.columns("survey")
    syncs = len(device.reports) - 1
    print(f"\napply -> device holds retailer.email: {column_seconds:.2f} s (the apply command "
          f"{apply_seconds:.2f} s, a `fieldsync versions list` {cli_start_seconds:.2f} s; then "
          f"{column_seconds - apply_seconds:.2f} s and {syncs} sync(s) on the device)")
    timings["apply (CLI) -> device holds the new column"] = column_seconds
    timings["  of which the apply command"] = apply_seconds
    after = json.loads(server.cli("versions", "list", "--json").stdout)
    assert len(after) == len(before) + 1 and after[-1]["schema_version"] == version

    # its outbox is intact: every offline visit is delivered once, none refused
    status = device.status()
    assert status.pending + status.sent + status.received <= OFFLINE_VISITS and status.quarantined == 0
    device.settle()
    assert device.status().quarantined == 0
    admin = server.login_token(ROLE_USERS["admin"])
    on_server = device.delivered("visit", visits, admin)
    assert {r["notes"] for r in on_server.values()} == {f"offline visit {i}" for i in range(OFFLINE_VISITS)}
    assert all(r["version"] == 1 for r in on_server.values())      # applied once, not per retry
    assert [r["id"] for r in device.client.query("visit")] == sorted(visits)

    # the new table works both ways: a survey written on the device reaches the server
    survey = device.write("survey", {"score": 7})
    device.settle()
    assert device.delivered("survey", [survey], admin)[survey]["score"] == 7
    status, retailer = server.request("GET", f"/retailer/{shop['id']}", token=admin)
    assert status == 200 and "email" in retailer
