"""Property: no request body, however odd, gets a 5xx or changes anything it was refused for
(issue 10, item 3).

Hypothesis sends push, pull and REST create bodies made of arbitrary JSON (deep nesting, integers
past 64 bits, Unicode digits, NUL, lone surrogates, out-of-range datetimes, decimals the schema
refuses), near-valid bodies built around real device ids, entity and field names, and arbitrary
bytes (plain or gzip-compressed). Every answer is below 500; a 4xx is problem+json and leaves
every table as it was (row counts, record versions, device cursors: the ledger and the change
log included); a push that was received is applied by the worker without an error (no input may
poison a batch), each of its seqs ending in the ledger. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import gzip
import json
import os
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings, strategies as st

PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"
PROBLEM = "application/problem+json"
# examples per test and database: ~30 s for the file in `make test`; set FIELDSYNC_TEST_FUZZ_EXAMPLES
# higher for a longer search
EXAMPLES = int(os.environ.get("FIELDSYNC_TEST_FUZZ_EXAMPLES", "200"))

# -- values --------------------------------------------------------------------------------------

ODD_TEXT = st.sampled_from([
    "²", "١٢", "１２", "１２.00", " 12.00", "12.00 ", "1_000.00", "12.", "+1", "1e3", "NaN", "-0", "", " ",
    "\x00", "a\x00b", "\ud800", "x\udfff", "\u202e", "𝟙𝟚", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00",
    "2026-11-27T09:00:00Z", "2026-02-30", "javascript:alert(1)", "https://example.com/a.jpg", "img/a",
    "0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d", PUNE_CENTRAL, "99999999999999999999999", "-9223372036854775809",
    "visit", "order", "insert", "update", "delete", "order", "draft", "W/\"1\"",
])
CHARS = st.characters() | st.characters(categories=["Cs"]) | st.sampled_from("\x00²١１{}[]\"\\")
TEXT = st.text(CHARS, max_size=10) | ODD_TEXT
HUGE = st.sampled_from([2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64, -(2 ** 63) - 1, 10 ** 30, -(10 ** 30),
                        10 ** 400])
INTS = st.integers() | HUGE | st.integers(-3, 3)
SCALARS = st.none() | st.booleans() | INTS | st.floats() | TEXT
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                    max_leaves=10)


@st.composite
def _deep(draw) -> bytes:
    """Nesting past any bound, optionally inside an otherwise plausible body."""
    n = draw(st.sampled_from([65, 70, 1000, 100_000]))
    opener = draw(st.sampled_from(["[", '{"a":', '[{"b":[']))
    closer = {"[": "]", '{"a":': "}", '[{"b":[': "]}]"}[opener]
    inner = opener * n + "1" + closer * draw(st.sampled_from([n, 0, n // 2]))
    prefix = draw(st.sampled_from(["", '{"mutations": ', '{"refetch": ', '{"fields": {"details": ']))
    suffix = "}" * (prefix.count("{"))
    return (prefix + inner + suffix).encode()


@st.composite
def encoded(draw, values) -> tuple[bytes, dict[str, str]]:
    """A body as bytes and its headers: JSON (ASCII or raw UTF-8, surrogates passed through),
    deep nesting, arbitrary bytes, or any of them gzip-compressed."""
    kind = draw(st.sampled_from(["json"] * 6 + ["json-utf8", "deep", "bytes"]))
    if kind == "json":
        data = json.dumps(draw(values)).encode()
    elif kind == "json-utf8":
        data = json.dumps(draw(values), ensure_ascii=False).encode("utf-8", "surrogatepass")
    elif kind == "deep":
        data = draw(_deep())
    else:
        data = draw(st.binary(max_size=200))
    headers = {"Content-Type": draw(st.sampled_from(["application/json"] * 6 + ["application/problem+json",
                                                                                 "text/plain"]))}
    if draw(st.integers(0, 7)) == 0:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    return data, headers


def mostly(good, odd):
    """`good` three times in four: most examples get past the first checks to the deeper ones."""
    return st.integers(0, 3).flatmap(lambda i: odd if i == 0 else good)


def _with_seqs(mutations: list, start: int) -> list:
    """Mutations numbered in ascending order from `start` (most receipts need that)."""
    return [dict(m, seq=start + i) if isinstance(m, dict) else m for i, m in enumerate(mutations)]


def record_bodies(sample: dict, fields: list[str]):
    """A valid body (`sample`) with some values replaced by odd ones and some odd members added."""
    odd_value = JSON | TEXT | INTS
    changes = st.dictionaries(st.sampled_from(fields + ["id"]) if fields else TEXT, odd_value, max_size=3)
    extra = st.dictionaries(TEXT, odd_value, max_size=1)
    return st.builds(lambda c, e: {**sample, **c, **e}, changes, extra | st.just({}))


def push_bodies(target):
    mutation = st.fixed_dictionaries(
        {"seq": mostly(st.integers(1, 2 ** 63 - 1), JSON),
         "entity": mostly(st.just("visit"), st.sampled_from(target.entities) | TEXT | JSON),
         "op": mostly(st.just("insert"), st.sampled_from(["update", "delete"]) | JSON),
         "id": mostly(st.uuids().map(str), st.sampled_from(target.record_ids) | TEXT | JSON),
         "fields": mostly(record_bodies(target.samples["visit"], target.fields["visit"]), JSON)},
        optional={"base_version": INTS | JSON, "client_time": TEXT})
    mutations = mostly(st.builds(_with_seqs, st.lists(mostly(mutation, JSON), max_size=4), st.integers(1, 2 ** 40)),
                       st.lists(mutation, max_size=3) | JSON)
    body = st.fixed_dictionaries(
        {"device_id": mostly(st.just(target.device_id), TEXT | JSON),
         "schema_version": mostly(st.just(1), INTS | JSON), "mutations": mutations},
        optional={"sent_at": TEXT | JSON})
    return mostly(body, JSON)


def pull_bodies(target):
    refetch_item = mostly(st.fixed_dictionaries({"entity": mostly(st.sampled_from(target.entities), TEXT | JSON),
                                                 "id": mostly(st.sampled_from(target.record_ids), TEXT | JSON)}),
                          JSON)
    number = mostly(st.integers(0, 50), INTS | TEXT | JSON)
    body = st.fixed_dictionaries(
        {"device_id": mostly(st.just(target.device_id), TEXT | JSON), "schema_version": mostly(st.just(1), INTS | JSON)},
        optional={"cursor": number, "limit": number, "results_after": number, "scope_hash": TEXT | JSON,
                  "resume": TEXT | JSON, "refetch": mostly(st.lists(refetch_item, max_size=4), JSON)})
    return mostly(body, JSON)


# -- the server ----------------------------------------------------------------------------------

def _fingerprint_query(server) -> sa.Select:
    """What a refused request may not change, in one query: each table's row count (audit trail
    and sessions aside: refusals are audited, requests touch their session), the sum of record
    versions per entity and the devices' cursors and seqs."""
    meta = sa.MetaData()
    meta.reflect(server.engine)
    parts = []
    for name, table in sorted(meta.tables.items()):
        if name.startswith(("fs_audit", "fs_sessions")):
            continue
        parts.append(sa.select(sa.func.count()).select_from(table).scalar_subquery().label(f"n_{name}"))
        if "version" in table.c and "deleted" in table.c:
            parts.append(sa.select(sa.func.coalesce(sa.func.sum(table.c.version), 0)).scalar_subquery()
                         .label(f"v_{name}"))
    devices = meta.tables["fs_devices"]
    for column in ("acked_cursor", "served_cursor", "results_through", "last_received_seq", "rejected"):
        parts.append(sa.select(sa.func.coalesce(sa.func.sum(devices.c[column]), 0)).scalar_subquery()
                     .label(f"d_{column}"))
    return sa.select(*parts)


class Target:
    """A seeded server, one registered device, and what the strategies need of its model."""

    def __init__(self, server):
        self.server = server
        self.token = server.token("rep-fuzz", "field_rep", territory_ids=[PUNE_CENTRAL])
        self.admin = server.token("admin-fuzz", "admin")
        r = server.http.post("/api/v1/sync/devices", json={"install_id": "fuzz", "schema_version": 1},
                             headers={"Authorization": f"Bearer {self.token}", "Fieldsync-Protocol": "1"})
        assert r.status_code == 201, r.get_json()
        self.device_id = r.get_json()["device_id"]
        model, store = server.model, server.store
        retailer = next(r for r in store.list("retailer", limit=100).items if r["territory_id"] == PUNE_CENTRAL)
        store.create("visit", {"retailer_id": retailer["id"], "territory_id": PUNE_CENTRAL,
                               "visited_at": "2026-11-27T09:00:00Z", "purpose": "order"},
                     server_values={"rep_id": "rep-fuzz"})
        store.create("expense", {"spent_on": "2026-11-27", "category": "travel", "amount": "12.00",
                                 "receipt": "receipts/a.jpg", "details": {"km": 12}},
                     server_values={"rep_id": "rep-fuzz"})
        self.entities = [e.name for e in model.entities]
        self.fields = {e.name: [f.name for f in e.fields] for e in model.entities}
        self.samples: dict[str, dict] = {}
        self.record_ids: list[str] = []
        for entity in model.entities:
            items = store.list(entity.name, limit=1).items
            self.record_ids += [r["id"] for r in items]
            self.samples[entity.name] = {k: v for k, v in (items[0] if items else {}).items()
                                         if k in entity.field_names and k != entity.owner
                                         and k != entity.parent_field}
        self.fingerprint_query = _fingerprint_query(server)

    def fingerprint(self) -> dict[str, object]:
        with self.server.engine.connect() as conn:
            return dict(conn.execute(self.fingerprint_query).mappings().one())

    def send(self, method: str, path: str, data: bytes, headers: dict[str, str], token: str):
        before = self.fingerprint()
        r = self.server.http.open(path, method=method, data=data,
                                  headers={"Authorization": f"Bearer {token}", "Fieldsync-Protocol": "1", **headers})
        assert r.status_code < 500, (r.status_code, r.get_data(as_text=True)[:500], data[:300])
        event(f"{method} {path.split('/')[3] if path.startswith('/api/v1/sync') else 'rest'}: {r.status_code}")
        if r.status_code >= 400:
            assert r.mimetype == PROBLEM, (r.status_code, r.mimetype)
            assert self.fingerprint() == before, (r.status_code, r.get_json(), data[:300])
        return r


@pytest.fixture
def target(sync_server):
    return Target(sync_server)


FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


@FUZZ
@given(data=st.data())
def test_push_never_fails_on_any_body(target, data):
    body, headers = data.draw(encoded(push_bodies(target)))
    r = target.send("POST", "/api/v1/sync/push", body, headers, target.token)
    if r.status_code == 202:
        received = r.get_json()["received"]
        target.server.drain()   # raises if the worker fails on a received batch
        ledger = {row["seq"] for row in target.server.ledger(target.device_id)}
        assert set(received) <= ledger
        assert target.server.queued() == 0


@FUZZ
@given(data=st.data())
def test_pull_never_fails_on_any_body(target, data):
    body, headers = data.draw(encoded(pull_bodies(target)))
    r = target.send("POST", "/api/v1/sync/pull", body, headers, target.token)
    if r.status_code == 200:
        assert isinstance(r.get_json()["changes"], list)


@FUZZ
@given(data=st.data())
def test_rest_create_and_list_never_fail(target, data):
    name = data.draw(mostly(st.sampled_from(target.entities), TEXT))
    entity = quote(name.encode("utf-8", "surrogatepass"))
    fields = target.fields.get(name, [])
    body, headers = data.draw(encoded(mostly(record_bodies(target.samples.get(name, {}), fields), JSON)))
    token = data.draw(st.sampled_from([target.admin, target.token]))
    target.send("POST", f"/api/v1/{entity}", body, headers, token)
    key = data.draw(st.sampled_from(fields + ["limit", "cursor", "sort", "version", "id", "total"])
                    .flatmap(lambda k: st.sampled_from([k, k + "__gte", k + "__in", k + "__ne"])))
    value = data.draw(TEXT | INTS.map(str))
    query = f"{quote(key)}={quote(value.encode('utf-8', 'surrogatepass'))}"
    target.send("GET", f"/api/v1/{entity}?{query}", b"", {}, token)
