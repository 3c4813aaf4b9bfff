"""The SDK against the real server (fieldsync.api.create_app on SQLite), in process through
WsgiTransport and over real HTTP (waitress on a free port) through HttpTransport. Pushes are
applied by the server's listener pool; tests wait for it with `sync.wait_idle`.

Convergence is judged against a fresh device of the same user: after writes stop and every
device synced, an incrementally synced store equals a snapshot (invariant 4)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from fieldsync.client import Client, HttpTransport, TransportError, WsgiTransport

ROOT = Path(__file__).resolve().parents[2]
PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"
RURAL = "58f87001-cb0b-5eac-8382-fd18ac1f335e"
SAI = "2fd6ae15-929b-509f-9c04-01a819382ca2"      # a retailer in PUNE
SYNCED = ("territory", "product", "price_list", "price_list_item", "retailer", "order", "order_line", "visit",
          "expense")


@pytest.fixture(params=["wsgi", "http"])
def transport_for(request, app):
    """A factory of transports of one kind: in process, or real HTTP."""
    made = []
    # set up before (so torn down after) the transports that connect to it
    url = request.getfixturevalue("http_url") if request.param == "http" else None

    def make():
        if url is None:
            return WsgiTransport(app)
        made.append(HttpTransport(url, timeout=(5, 30)))
        return made[-1]
    yield make
    for transport in made:
        transport.close()


def contents(client: Client) -> dict[str, dict[str, dict]]:
    return {entity: {r["id"]: r for r in client.query(entity)} for entity in SYNCED}


def server_count(app, entity: str, record_id: str) -> int:
    store = app.extensions["fieldsync"].store
    table = store.table(store.model.entity(entity))
    with store.engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table).where(table.c.id == record_id)).scalar()


def visit_fields(**extra):
    return {"retailer_id": SAI, "territory_id": PUNE, "visited_at": "2026-11-26T10:00:00Z", "purpose": "order",
            **extra}


def test_two_offline_devices_converge(app, transport_for, devices, settle, token):
    ana = devices("ana", transport_for(), token("rep-ana"), install_info={"platform": "test", "app_version": "1"})
    ben = devices("ben", transport_for(), token("rep-ben"))
    ana.sync()
    ben.sync()
    assert ana.get("retailer", SAI)["name"] == "Sai Medical Stores"

    # offline: both edit the shared retailer (different fields: field_merge keeps both), each
    # records visits and an order of their own
    ana.update("retailer", SAI, {"phone": "+91 20 1111 1111"})
    ben.update("retailer", SAI, {"location": {"lat": 18.6, "lon": 73.9}})
    ana_visits = [ana.insert("visit", visit_fields(notes=f"ana {i}")) for i in range(3)]
    ben_visit = ben.insert("visit", visit_fields(notes="ben"))
    order = ana.insert("order", {"retailer_id": SAI, "territory_id": PUNE, "ordered_at": "2026-11-26T11:00:00Z"})
    ana.sync()
    settle()
    ana.sync()
    ana.delete("visit", ana_visits[2])          # field reps may not delete: rejected, quarantined

    for device in (ana, ben):
        report = device.sync()
        assert report.pushed > 0
    settle()
    for _ in range(2):
        for device in (ana, ben):
            device.sync()
    [refused] = ana.quarantined()
    assert (refused.op, refused.name, refused.record_id) == ("delete", "forbidden", ana_visits[2])
    assert ana.get("visit", ana_visits[2])["notes"] == "ana 2"   # restored from the result's row
    ana.discard(refused.seq)
    ana.sync()

    for device in (ana, ben):
        status = device.status()
        assert (status.pending, status.sent, status.received, status.quarantined) == (0, 0, 0, 0)
        retailer = device.get("retailer", SAI)
        assert retailer["phone"] == "+91 20 1111 1111" and retailer["location"] == {"lat": 18.6, "lon": 73.9}
    assert {r["id"] for r in ana.query("visit")} == set(ana_visits)
    assert {r["id"] for r in ben.query("visit")} == {ben_visit}          # row filter: own visits only
    assert ana.get("order", order)["rep_id"] == "rep-ana" and ana.get("order", order)["version"] == 1
    assert server_count(app, "visit", ana_visits[0]) == 1

    # each store equals what a fresh device of the same user receives
    for name, device, bearer in (("ana", ana, token("rep-ana")), ("ben", ben, token("rep-ben"))):
        fresh = devices(name + "-fresh", transport_for(), bearer)
        fresh.sync()
        assert contents(device) == contents(fresh)


def test_deletes_made_elsewhere_reach_the_device(app, transport_for, devices, settle, token):
    ana = devices("ana", transport_for(), token("rep-ana"))
    admin = devices("admin", transport_for(), token("boss", PUNE, role="admin"))
    record_id = ana.insert("visit", visit_fields(notes="to be deleted"))
    ana.sync()
    settle()
    ana.sync()
    admin.sync()
    admin.delete("visit", record_id)
    assert admin.get("visit", record_id) is None
    admin.sync()
    settle()
    admin.sync()
    ana.sync()
    assert ana.get("visit", record_id) is None and admin.status().unsettled == 0
    assert admin.query("visit") == [] and ana.query("visit") == []


def test_a_push_whose_answer_is_cut_is_resent_and_applied_once(app, transport_for, devices, settle, token):
    class CutOnce:
        def __init__(self, inner):
            self.inner, self.cut = inner, 1

        def request(self, method, path, *, headers, body):
            answer = self.inner.request(method, path, headers=headers, body=body)
            if path.endswith("/push") and self.cut:
                self.cut -= 1
                raise TransportError("connection reset after the server got the push")
            return answer

    ana = devices("ana", CutOnce(transport_for()), token("rep-ana"))
    ana.sync()
    record_id = ana.insert("visit", visit_fields(notes="once"))
    with pytest.raises(TransportError):
        ana.sync()
    assert ana.status().sent == 1
    settle()                       # the first copy was received and is applied meanwhile
    ana.sync()                        # resent with the same seq: a duplicate, settled at once
    settle()
    ana.sync()
    assert server_count(app, "visit", record_id) == 1
    assert ana.get("visit", record_id)["version"] == 1 and ana.status().unsettled == 0
    from fieldsync.store.sync_tables import LEDGER
    with app.extensions["fieldsync"].engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(LEDGER)).scalar() == 1


def test_rejections_are_quarantined_and_can_be_fixed(app, transport_for, devices, settle, token):
    ana = devices("ana", transport_for(), token("rep-ana"))
    ben = devices("ben", transport_for(), token("rep-ben"))
    ana.sync()
    ben.sync()
    outside = ana.insert("visit", visit_fields(territory_id=RURAL, notes="outside my territory"))
    fine = ana.insert("visit", visit_fields(notes="fine"))
    first = ana.sync()
    settle()
    second = ana.sync()    # the listeners may have been quick enough for the first pull
    assert (first.rejected + second.rejected, first.applied + second.applied) == (1, 1)
    [q] = ana.quarantined()
    assert q.record_id == outside and q.op == "insert" and q.code.startswith("https://fieldsync.dev/problems/")
    assert ana.get("visit", outside) is None and ana.get("visit", fine)["version"] == 1
    new_seq = ana.resubmit(q.seq, {"territory_id": PUNE})
    assert new_seq > q.seq and ana.quarantined() == []
    ana.sync()
    settle()
    ana.sync()
    assert ana.get("visit", outside)["territory_id"] == PUNE and ana.get("visit", outside)["version"] == 1


def test_reject_stale_order_update_repairs_the_row(app, transport_for, devices, settle, token):
    ana = devices("ana", transport_for(), token("rep-ana"))
    ana_tablet = devices("ana-tablet", transport_for(), token("rep-ana"))
    ana.sync()
    order = ana.insert("order", {"retailer_id": SAI, "territory_id": PUNE, "ordered_at": "2026-11-26T11:00:00Z",
                                 "status": "draft"})
    ana.sync()
    settle()
    ana.sync()
    ana_tablet.sync()
    ana_tablet.update("order", order, {"remarks": "deliver Monday"})   # the other device wins the race
    ana_tablet.sync()
    settle()
    ana.update("order", order, {"status": "submitted"})               # made on version 1: stale
    ana.sync()
    settle()
    ana.sync()
    [q] = ana.quarantined()
    assert q.name == "stale" and q.fields == {"status": "submitted"}
    row = ana.get("order", order)
    assert row["remarks"] == "deliver Monday" and row["status"] == "draft" and row["version"] == 2
    ana.resubmit(q.seq)                                                  # re-applied on version 2
    ana.sync()
    settle()
    ana.sync()
    row = ana.get("order", order)
    assert (row["status"], row["remarks"], row["version"]) == ("submitted", "deliver Monday", 3)


def test_schema_upgrade_adds_the_new_field_and_keeps_the_outbox(app, transport_for, devices, defs_copy, settle,
                                                               token):
    from fieldsync.defs import load_model
    ana = devices("ana", transport_for(), token("rep-ana"))
    ana.sync()
    offline = ana.insert("visit", visit_fields(notes="made on schema 1"))

    app_yaml = defs_copy / "app.yaml"
    app_yaml.write_text(app_yaml.read_text().replace("schema_version: 1", "schema_version: 2"))
    visit_yaml = defs_copy / "transactions" / "visit.yaml"
    visit_yaml.write_text(visit_yaml.read_text().replace(
        "  duration_minutes:\n", "  mood:\n    type: string\n    default: calm\n  duration_minutes:\n", 1)
        .replace("editable: [retailer_id,", "editable: [mood, retailer_id,", 1))
    app.extensions["fieldsync"].swap_model(load_model(defs_copy))

    ana.sync()          # pushes on schema 1 (accepted), pull says upgrade: migrate, rescope
    settle()
    ana.sync()
    row = ana.get("visit", offline)
    assert row["notes"] == "made on schema 1" and row["mood"] == "calm" and row["version"] == 1
    mine = ana.insert("visit", visit_fields(mood="cheerful"))
    ana.sync()
    settle()
    ana.sync()
    assert ana.get("visit", mine)["mood"] == "cheerful" and ana.get("visit", mine)["version"] == 1


CRASH_SCRIPT = r'''
import json, os, sys
from pathlib import Path
from fieldsync.client import Client, HttpTransport
path, url, bearer, schema_path, moment = sys.argv[1:6]
client = Client(path, HttpTransport(url), bearer, schema=json.loads(Path(schema_path).read_text()))

if moment == "push":
    # the process dies after the server answered the push, before the answer is stored
    real = client._wire.transport
    class DieAfterPush:
        def __getattr__(self, name):
            return getattr(real, name)
        def request(self, method, path, *, headers, body):
            answer = real.request(method, path, headers=headers, body=body)
            if path.endswith("/push"):
                os._exit(17)
            return answer
    client._wire.transport = DieAfterPush()
    client.insert("visit", {"retailer_id": sys.argv[6], "territory_id": sys.argv[7],
                            "visited_at": "2026-11-26T10:00:00Z", "purpose": "order", "notes": "crash"})
else:
    # the process dies inside the transaction that applies a pull page, rows half written
    writes = []
    def trace(sql):
        # a pulled row written to an entity table (pages write them with one executemany per
        # table, which runs the statement once per row)
        if sql.startswith("INSERT") and not any(t in sql for t in ("_sync_state", "_meta", "_outbox", "_quarantine")):
            writes.append(sql)
            if len(writes) == 5:
                os._exit(17)
    client._store.conn.set_trace_callback(trace)
client.sync()
os._exit(3)  # not reached when the crash happened
'''


def run_until_crash(tmp_path, url, bearer, moment, *extra):
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "ana.db"), url, bearer,
                           str(ROOT / "generated" / "device" / "schema.json"), moment, *extra],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 17, done.stderr


def test_a_device_killed_between_push_and_answer_loses_and_duplicates_nothing(app, http_url, tmp_path, devices,
                                                                             settle, token):
    run_until_crash(tmp_path, http_url, token("rep-ana"), "push", SAI, PUNE)
    ana = devices("ana", HttpTransport(http_url), token("rep-ana"), schema=None)   # the app restarts
    assert ana.status().sent == 1
    [visit] = ana.query("visit")
    ana.sync()
    settle()
    ana.sync()
    assert server_count(app, "visit", visit["id"]) == 1
    assert ana.get("visit", visit["id"])["version"] == 1 and ana.status().unsettled == 0


def test_a_device_killed_while_applying_a_page_pulls_it_again(app, http_url, tmp_path, devices, token):
    run_until_crash(tmp_path, http_url, token("rep-ana"), "page")
    ana = devices("ana", HttpTransport(http_url), token("rep-ana"), schema=None)
    status = ana.status()
    assert status.cursor == 0 and status.device_id is not None           # registered, page not committed
    assert all(ana.query(entity) == [] for entity in SYNCED)             # no half page
    ana.sync()
    reference = devices("reference", WsgiTransport(app), token("rep-ana"))
    reference.sync()
    assert contents(ana) == contents(reference) and len(ana.query("product")) == 8


def test_a_store_made_from_the_servers_schema(app, transport_for, devices, token):
    ana = devices("ana", transport_for(), token("rep-ana"), schema=None)
    report = ana.sync()
    assert report.complete and report.cursor > 0
    assert {r["id"] for r in ana.query("retailer")} >= {SAI}
    assert all(r["territory_id"] == PUNE for r in ana.query("retailer"))
    assert len(ana.query("product")) == 8


def test_a_new_territory_in_the_token_rescopes_the_store(app, transport_for, devices, token, settle):
    territories = [PUNE]
    ana = devices("ana", transport_for(), lambda: token("rep-ana", *territories))
    ana.sync()
    assert {r["territory_id"] for r in ana.query("retailer")} == {PUNE}
    pending = ana.insert("visit", visit_fields(notes="made in Pune"))
    territories[:] = [RURAL]    # the app signs in again: the next request carries the new token
    ana.sync()
    settle()
    ana.sync()
    assert {r["territory_id"] for r in ana.query("retailer")} == {RURAL}   # Pune's left, Rural's came
    assert ana.get("visit", pending) is None                               # settled: now out of scope
    [refused] = ana.quarantined()
    # the visit names Pune's territory and retailer, which the token no longer reaches: refused
    # like references to missing records (docs/access.md), before its scope is looked at
    assert refused.record_id == pending and refused.name == "validation"
    assert {e["field"] for e in refused.errors} == {"territory_id", "retailer_id"}
    fresh = devices("ana-fresh", transport_for(), token("rep-ana", RURAL))
    fresh.sync()
    assert contents(ana) == contents(fresh)
