"""A device's own later edit is never discarded (invariant 5, docs/protocol.md §8.1).

One device's writes of one record apply in seq order whatever their computed effective times;
a record's write time never goes backwards; the clock offset a push is corrected by does not
grow with the push's upload time. Every test controls time: the server's clock is injected,
and each push says when it was sent (`sent_at`) and what the device measured of the server's
clock (`clock_offset_ms`), so a 1.5 s upload is a clock reading, not a sleep.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fieldsync.defs import load_model
from fieldsync.defs.values import format_datetime, parse_datetime
from fieldsync.ids import new_id

PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"
T0 = dt.datetime(2030, 1, 7, 10, 0, tzinfo=dt.timezone.utc)   # later than any seeded write time


def _at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


class Clock:
    """The server's clock: the test sets it; `advance` moves it on."""

    def __init__(self, now: dt.datetime = T0):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def set(self, seconds: float) -> None:
        self.now = _at(seconds)


class Phone:
    """A minimal protocol speaker (no local store): each push is sent at a given device time
    and arrives at a given server time, so the test decides every latency."""

    def __init__(self, server, clock: Clock, user: str = "rep-asha", install: str = "phone-1"):
        self.server, self.clock = server, clock
        self.token = server.token(user, "field_rep", territory_ids=[PUNE_CENTRAL])
        self.seq = 0
        answer = self.post("/devices", {"install_id": install, "schema_version": server.model.schema_version})
        self.device_id = answer["device_id"]

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = self.server.http.post("/api/v1/sync" + path, json=body,
                                  headers={"Authorization": "Bearer " + self.token, "Fieldsync-Protocol": "1"})
        assert r.status_code in (200, 201, 202), r.json
        return r.json

    def write(self, entity: str, op: str, record_id: str, fields: dict[str, Any] | None = None, *,
              base: int | None, made: float) -> dict[str, Any]:
        """A mutation made at device time T0 + `made` seconds (the device clock is right)."""
        self.seq += 1
        return {"seq": self.seq, "entity": entity, "op": op, "id": record_id, "base_version": base,
                "client_time": format_datetime(_at(made)), "fields": fields or {}}

    def push(self, mutations: list[dict[str, Any]], *, sent: float, arrives: float,
             offset_ms: int | None = None) -> None:
        """Send at device time T0 + `sent`; the server reads its clock at T0 + `arrives`."""
        self.clock.set(arrives)
        body = {"device_id": self.device_id, "schema_version": self.server.model.schema_version,
                "sent_at": format_datetime(_at(sent)), "mutations": mutations}
        if offset_ms is not None:
            body["clock_offset_ms"] = offset_ms
        assert self.post("/push", body)["received"] == [m["seq"] for m in mutations]

    def ledger(self) -> dict[int, dict[str, Any]]:
        return {r["seq"]: r for r in self.server.ledger(self.device_id)}


def _visit_fields(server, **extra) -> dict[str, Any]:
    retailer = next(r for r in server.records("retailer").values() if r["territory_id"] == PUNE_CENTRAL)
    return {"retailer_id": retailer["id"], "territory_id": PUNE_CENTRAL, "visited_at": "2030-01-07T09:00:00Z",
            "purpose": "order", **extra}


def _new_visit(server, phone: Phone, clock: Clock, **extra) -> str:
    vid = new_id()
    phone.push([phone.write("visit", "insert", vid, _visit_fields(server, **extra), base=None, made=0)],
               sent=0, arrives=0.05)
    server.drain()
    return vid


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["last_write_wins", "field_merge"])
def policy_server(request, make_server, db_url, defs_copy, clock):
    """A server whose visits use the policy of the parameter, and which field reps may delete."""
    path = defs_copy / "transactions" / "visit.yaml"
    text = path.read_text()
    text = text.replace("conflict: last_write_wins", f"conflict: {request.param}")
    text = text.replace("  field_rep:\n    actions: [read, create, update]\n",
                        "  field_rep:\n    actions: [read, create, update, delete]\n", 1)
    path.write_text(text)
    server = make_server(db_url, clock=clock, model=load_model(defs_copy), DEFS_DIR=str(defs_copy))
    assert server.model.entity("visit").sync.conflict == request.param
    return server


def test_the_issue_case_a_slow_upload_does_not_discard_the_next_edit(make_server, db_url, clock):
    """Update A (duration 20) goes over a slow uplink (1.5 s); update B (duration 30), made while
    A was in flight, goes quickly. A's upload time used to count as clock offset, so B's time
    came out earlier and last_write_wins discarded it: device and server ended on 20."""
    server = make_server(db_url, clock=clock)
    assert server.model.entity("visit").sync.conflict == "last_write_wins"
    phone = Phone(server, clock)
    vid = _new_visit(server, phone, clock)
    phone.push([phone.write("visit", "update", vid, {"duration_minutes": 20}, base=1, made=10)],
               sent=10, arrives=11.5)
    phone.push([phone.write("visit", "update", vid, {"duration_minutes": 30}, base=1, made=10.5)],
               sent=11.6, arrives=11.65)
    server.drain()
    a, b = phone.ledger()[2], phone.ledger()[3]
    assert (a["status"], a["effect"]) == ("applied", "changed")
    assert (b["status"], b["effect"], b["overridden"]) == ("applied", "changed", None)
    visit = server.records("visit")[vid]
    assert visit["duration_minutes"] == 30
    # the write time never goes backwards: B's own time is earlier than A's, the record keeps A's
    assert parse_datetime(visit["updated_at"]) == _at(11.5)


def test_own_consecutive_writes_apply_in_seq_order(policy_server, clock):
    """Three updates and a delete of one record by one device, each computed earlier than the
    one before (slow uploads first): every one takes effect, in seq order, and the write time
    never goes backwards."""
    server, phone = policy_server, Phone(policy_server, clock)
    vid = _new_visit(server, phone, clock)
    times = []
    for n, (made, sent, arrives) in enumerate([(10, 10, 14), (11, 14.1, 16), (12, 16.1, 16.2)]):
        phone.push([phone.write("visit", "update", vid, {"duration_minutes": 20 + n, "notes": f"v{n}"},
                                base=1, made=made)], sent=sent, arrives=arrives)
        server.drain()
        times.append(parse_datetime(server.records("visit")[vid]["updated_at"]))
        assert server.records("visit")[vid]["duration_minutes"] == 20 + n
    assert times == sorted(times)
    assert [(r["effect"], r["overridden"]) for r in list(phone.ledger().values())[1:]] == [("changed", None)] * 3
    # a delete made after those edits, computed earlier still, deletes the record
    phone.push([phone.write("visit", "delete", vid, base=1, made=12.5)], sent=16.3, arrives=16.31)
    server.drain()
    assert phone.ledger()[phone.seq]["effect"] == "changed"
    assert vid not in server.records("visit")


def test_own_writes_in_one_batch_apply_in_seq_order(policy_server, clock):
    """Writes that travel in one push, with client times out of order (the device clock was set
    back between them), still apply in seq order."""
    server, phone = policy_server, Phone(policy_server, clock)
    vid = _new_visit(server, phone, clock)
    phone.push([phone.write("visit", "update", vid, {"duration_minutes": 20}, base=1, made=30),
                phone.write("visit", "update", vid, {"duration_minutes": 30}, base=1, made=20)],
               sent=31, arrives=31.2)
    server.drain()
    assert server.records("visit")[vid]["duration_minutes"] == 30
    assert [r["effect"] for r in phone.ledger().values()] == ["changed"] * 3


def test_another_writers_concurrent_edit_is_still_resolved_by_time(policy_server, clock):
    """The own-writes rule does not switch conflicts off: another device's edit of the same
    field made later than ours (by the corrected clocks) wins over ours, and ours is reported."""
    server = policy_server
    phone = Phone(server, clock)
    other = Phone(server, clock, install="phone-2")
    vid = _new_visit(server, phone, clock)
    other_push = [other.write("visit", "update", vid, {"notes": "theirs"}, base=1, made=50)]
    other.push(other_push, sent=50, arrives=50.1, offset_ms=0)
    server.drain()
    phone.push([phone.write("visit", "update", vid, {"notes": "mine"}, base=1, made=40)],
               sent=60, arrives=60.1, offset_ms=0)
    server.drain()
    lost = phone.ledger()[phone.seq]
    assert (lost["effect"], json.loads(lost["overridden"])) == ("discarded", ["notes"])
    assert json.loads(lost["overridden_by"]) == {"notes": "device"}
    assert server.records("visit")[vid]["notes"] == "theirs"


def test_a_result_names_where_the_values_that_beat_it_came_from(make_server, db_url, clock):
    """field_merge (retailer): the server's edit of the phone beats the device's older one; the
    result delivered to the device lists the field and that the winning value came from the
    server (`overridden_by`)."""
    server = make_server(db_url, clock=clock)
    phone = Phone(server, clock)
    retailer = next(r for r in server.records("retailer").values() if r["territory_id"] == PUNE_CENTRAL)
    clock.set(30)
    admin = server.token("admin-1", "admin")
    r = server.rest("PATCH", f"/retailer/{retailer['id']}", admin, {"phone": "+91 20 1111 1111"},
                    headers={"If-Match": f'"{retailer["version"]}"'})
    assert r.status_code == 200, r.json
    phone.push([phone.write("retailer", "update", retailer["id"], {"phone": "+91 20 2222 2222",
                                                                   "location": {"lat": 18.3, "lon": 73.3}},
                            base=retailer["version"], made=20)], sent=40, arrives=40.1, offset_ms=0)
    server.drain()
    answer = server.http.get(f"/api/v1/sync/results?device_id={phone.device_id}",
                             headers={"Authorization": "Bearer " + phone.token, "Fieldsync-Protocol": "1"})
    [result] = [x for x in answer.json["results"] if x["seq"] == phone.seq]
    assert (result["effect"], result["overridden"], result["overridden_by"]) == ("partial", ["phone"],
                                                                                 {"phone": "server"})
    assert server.records("retailer")[retailer["id"]]["phone"] == "+91 20 1111 1111"


def test_an_own_earlier_write_does_not_make_another_writers_time_later(make_server, db_url, clock):
    """field_merge (retailer): our edit A of the phone carries a late time; another device then
    edits the location with an earlier time, so the record's write time stays A's. Our next
    edit B of the location, later than the other device's, must win: A's time, which the
    record's write time inherited, is ours and counts for B, not against it."""
    server = make_server(db_url, clock=clock)
    phone = Phone(server, clock)
    other = Phone(server, clock, user="rep-ravi", install="phone-2")
    retailer = next(r for r in server.records("retailer").values() if r["territory_id"] == PUNE_CENTRAL)
    rid, base = retailer["id"], retailer["version"]
    phone.push([phone.write("retailer", "update", rid, {"phone": "+91 20 0000 0001"}, base=base, made=100)],
               sent=100, arrives=100.1, offset_ms=0)
    server.drain()
    other.push([other.write("retailer", "update", rid, {"location": {"lat": 18.1, "lon": 73.1}}, base=base,
                            made=50)], sent=50, arrives=101, offset_ms=0)
    server.drain()
    phone.push([phone.write("retailer", "update", rid, {"location": {"lat": 18.2, "lon": 73.2}}, base=base,
                            made=60)], sent=102, arrives=102.1, offset_ms=0)
    server.drain()
    mine = phone.ledger()[phone.seq]
    assert (mine["effect"], mine["overridden"]) == ("changed", None)
    assert server.records("retailer")[rid]["location"] == {"lat": 18.2, "lon": 73.2}


def test_the_clock_offset_comes_from_the_devices_round_trips_not_the_upload(make_server, db_url, clock):
    """A push that says what the device measured of the server's clock (`clock_offset_ms`, from
    its fastest recent round trip) is corrected by that, not by received_at - sent_at, which
    holds the whole upload time."""
    server = make_server(db_url, clock=clock)
    phone = Phone(server, clock)
    vid = _new_visit(server, phone, clock)
    # the device clock is 2 s behind the server's; the upload takes 30 s
    phone.push([phone.write("visit", "update", vid, {"duration_minutes": 20}, base=1, made=10)],
               sent=20, arrives=52, offset_ms=2000)
    server.drain()
    assert parse_datetime(server.records("visit")[vid]["updated_at"]) == _at(12)
    # without a measurement the server falls back to received_at - sent_at (protocol §8.1)
    phone.push([phone.write("visit", "update", vid, {"duration_minutes": 25}, base=1, made=60)],
               sent=60, arrives=61)
    server.drain()
    assert parse_datetime(server.records("visit")[vid]["updated_at"]) == _at(61)


@pytest.mark.parametrize("bad", ["2000", True, 10 ** 20, -10 ** 20, 1.5, None, [1]])
def test_a_clock_offset_that_is_not_a_plausible_integer_is_ignored(make_server, clock, bad):
    server = make_server(clock=clock)
    phone = Phone(server, clock)
    vid = _new_visit(server, phone, clock)
    phone.push([phone.write("visit", "update", vid, {"duration_minutes": 20}, base=1, made=10)],
               sent=10, arrives=11, offset_ms=bad)
    server.drain()
    assert parse_datetime(server.records("visit")[vid]["updated_at"]) == _at(11)



def test_a_server_write_never_moves_the_write_time_back(make_server, db_url, clock):
    """A REST update or delete after the server clock stepped back keeps the record's write
    time (a device write had stamped it later): a write time never goes backwards."""
    server = make_server(db_url, clock=clock)
    phone = Phone(server, clock)
    vid = _new_visit(server, phone, clock)
    phone.push([phone.write("visit", "update", vid, {"duration_minutes": 20}, base=1, made=100)],
               sent=100, arrives=100.5, offset_ms=0)
    server.drain()
    assert parse_datetime(server.records("visit")[vid]["updated_at"]) == _at(100)
    clock.set(50)   # the server's clock stepped back (an NTP correction)
    admin = server.token("admin-1", "admin")
    r = server.rest("PATCH", f"/visit/{vid}", admin, {"notes": "from the office"}, headers={"If-Match": '"2"'})
    assert r.status_code == 200, r.json
    assert parse_datetime(server.records("visit")[vid]["updated_at"]) == _at(100)
    r = server.rest("DELETE", f"/visit/{vid}", admin, headers={"If-Match": '"3"'})
    assert r.status_code in (200, 204), r.json
    assert parse_datetime(server.records("visit", deleted=True)[vid]["updated_at"]) == _at(100)

# -- the property ---------------------------------------------------------------------------------

write_plans = st.lists(
    st.tuples(st.integers(0, 1440),                      # the duration written
              st.floats(0, 600, allow_nan=False),        # when the device made it (s after T0)
              st.floats(0, 120, allow_nan=False),        # the upload time of its push
              st.integers(-3600_000, 3600_000) | st.none(),   # what the device measured (ms)
              st.booleans(),                             # sent in the same push as the one before
              st.booleans()),                            # based on the settled version (else on 1)
    min_size=1, max_size=8)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=write_plans)
def test_property_the_final_value_is_the_devices_highest_seq(policy_server, clock, plans):
    """For any interleaving of one device's writes of a record, with arbitrary delivery
    latencies and clock readings, the server ends on the value of the device's highest seq."""
    server = policy_server
    phone = getattr(server, "_phone", None) or Phone(server, clock)
    server._phone = phone
    vid = _new_visit(server, phone, clock)
    sent_at = arrived = 0.05
    batch: list[dict[str, Any]] = []
    version = 1
    for duration, made, upload, offset, same_push, settled in plans:
        if batch and not same_push:
            # one push in flight at a time: the server receives them in order
            arrived = max(arrived + 0.001, sent_at + upload)
            phone.push(batch, sent=sent_at, arrives=arrived, offset_ms=offset)
            server.drain()
            version = server.records("visit")[vid]["version"]
            batch = []
        sent_at = max(sent_at, made) + 0.001
        batch.append(phone.write("visit", "update", vid, {"duration_minutes": duration},
                                 base=version if settled else 1, made=made))
    phone.push(batch, sent=sent_at, arrives=max(arrived + 0.001, sent_at + plans[-1][2]), offset_ms=plans[-1][3])
    server.drain()
    assert server.records("visit")[vid]["duration_minutes"] == plans[-1][0]


def test_a_ledger_made_before_overridden_by_gets_the_column(fresh_database):
    """A server upgraded in place adds the ledger's new nullable column on start, twice safely."""
    import sqlalchemy as sa

    from fieldsync.store.sync_tables import LEDGER, create_sync_tables

    engine = sa.create_engine(fresh_database())
    try:
        old = sa.MetaData()
        sa.Table(LEDGER.name, old, *[sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable,
                                               autoincrement=False)
                                     for c in LEDGER.columns if c.name != "overridden_by"])
        old.create_all(engine)
        create_sync_tables(engine)
        create_sync_tables(engine)
        assert "overridden_by" in {c["name"] for c in sa.inspect(engine).get_columns(LEDGER.name)}
    finally:
        engine.dispose()


class SlowUplink:
    """A WsgiTransport whose pushes take `upload` seconds to arrive and everything else 10 ms
    each way, on a true time the test owns: the server's clock reads it, the device's clock
    runs `behind` seconds slow. `during_upload` runs while a push is on its way (the app
    writing meanwhile)."""

    def __init__(self, app, clock: Clock, *, upload: float, behind: float):
        from fieldsync.client import WsgiTransport
        self.inner = WsgiTransport(app)
        self.clock, self.upload, self.behind = clock, upload, behind
        self.during_upload = None
        self.pushes: list[dict[str, Any]] = []

    def device_clock(self) -> dt.datetime:
        return self.clock.now - dt.timedelta(seconds=self.behind)

    def request(self, method, path, *, headers, body):
        push = path.endswith("/push")
        if push:
            self.pushes.append(json.loads(body))
            hook, self.during_upload = self.during_upload, None
            if hook is not None:
                hook()
        self.clock.now += dt.timedelta(seconds=self.upload if push else 0.01)
        answer = self.inner.request(method, path, headers=headers, body=body)
        self.clock.now += dt.timedelta(seconds=0.01)
        return answer

    def close(self):
        pass


def test_the_issue_case_through_the_sdk(make_server, db_url, clock, tmp_path, device_schema):
    """The SDK end to end: A goes over a 1.5 s uplink, B is made while A is in flight; both
    take effect in seq order, device and server end on B's value, no conflict is reported,
    and A's time is the edit time corrected by the measured offset (2 s), not by the upload."""
    from fieldsync.client import Client

    server = make_server(db_url, clock=clock)
    link = SlowUplink(server.app, clock, upload=1.5, behind=2.0)
    token = server.token("rep-asha", "field_rep", territory_ids=[PUNE_CENTRAL])
    client = Client(tmp_path / "phone.db", link, token, schema=device_schema, clock=link.device_clock)
    try:
        client.sync()
        vid = client.insert("visit", _visit_fields(server))
        client.sync()
        server.drain()
        client.sync()
        assert client.status().fully_synced
        clock.now += dt.timedelta(seconds=60)
        made = link.device_clock()
        first = client.update("visit", vid, {"duration_minutes": 20})
        link.during_upload = lambda: client.update("visit", vid, {"duration_minutes": 30})
        client.sync()
        assert [m["fields"] for p in link.pushes[-2:] for m in p["mutations"]] == [{"duration_minutes": 20},
                                                                                   {"duration_minutes": 30}]
        assert all(abs(p["clock_offset_ms"] - 2000) <= 20 for p in link.pushes[-2:])
        server.drain()
        report = client.sync()
        assert (report.applied, report.conflicts) == (2, 0)
        assert server.records("visit")[vid]["duration_minutes"] == 30
        assert client.get("visit", vid)["duration_minutes"] == 30
        assert client.conflicts() == [] and client.status().fully_synced
        a = next(c for c in server.changes(record_id=vid) if c["seq"] == first)
        assert a["version"] == 2
        written = parse_datetime(server.records("visit")[vid]["updated_at"])
        assert abs((written - (made + dt.timedelta(seconds=2))).total_seconds()) < 0.05
    finally:
        client.close()
