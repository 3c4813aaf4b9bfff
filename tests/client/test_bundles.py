"""Snapshot bundles (docs/protocol.md §11) between the SDK and the real server: a first sync
takes one bundle shared by every device of the scope, a cut resumes at the first chunk not
applied, a changed, moved or cut chunk is refused before use, a bundle never holds a row or
column its device's user may not see, and what changed after the bundle was built reaches the
device by the stream (nothing missed, nothing applied twice).

Each test compares the bundle-synced store with a store synced by pull pages (`bundles=False`)
from the same server: the two must hold the same rows (invariant 4)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from fieldsync.api import create_app
from fieldsync.client import Client, HttpTransport, ProtocolError, TransportError, WsgiTransport
from fieldsync.seed import load_seed
from fieldsync.transfer.chunks import Manifest, key_bytes
from fieldsync.transfer.snapshots import BUNDLES

ROOT = Path(__file__).resolve().parents[2]
SECRET = "client-test-secret"        # tests/client/conftest.py's: its `token` fixture signs with it
LISTENERS = 2
PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"
RURAL = "58f87001-cb0b-5eac-8382-fd18ac1f335e"
SYNCED = ("territory", "product", "price_list", "price_list_item", "retailer", "order", "order_line", "visit",
          "expense")
EXTRA_PRODUCTS = 120


@pytest.fixture
def app(tmp_path, example_model):
    """A server whose snapshots are bundles from the first row, with small chunks (many of them)."""
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(tmp_path / "var"), "SYNC_LISTENERS": LISTENERS,
                      "BUNDLE_MIN_ROWS": 1, "BUNDLE_FRAME_BYTES": 2000}, model=example_model)
    state = app.extensions["fieldsync"]
    load_seed(state.config, ROOT / "examples" / "seed", store=state.store)
    store = state.store
    for i in range(EXTRA_PRODUCTS):
        store.create("product", {"sku": f"B-{i:04d}", "name": f"Bundle product {i}", "category": "otc",
                                 "unit_price": "12.50", "pack_size": 10, "active": True})
    yield app
    state.sync.stop()
    state.engine.dispose()


def contents(client: Client) -> dict[str, dict[str, dict]]:
    return {entity: {r["id"]: r for r in client.query(entity)} for entity in SYNCED}


def bundle_rows(app) -> list:
    state = app.extensions["fieldsync"]
    with state.engine.connect() as conn:
        return list(conn.execute(sa.select(BUNDLES)).mappings())


class CuttingTransport:
    """Passes requests on, and cuts the bundle download as a test says: after `cut_after`
    chunk requests (the next one fails as a dropped connection would), or changing the bytes
    of chunk answers with `tamper(index, data)`."""

    def __init__(self, inner, *, cut_after: int | None = None, tamper=None):
        self.inner = inner
        self.cut_after = cut_after
        self.tamper = tamper
        self.range_requests = 0
        self.range_bytes = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def request(self, method, path, *, headers, body):
        is_range = "Range" in headers
        if is_range:
            if self.cut_after is not None and self.range_requests >= self.cut_after:
                raise TransportError("connection dropped (test)")
            self.range_requests += 1
        status, answer_headers, data = self.inner.request(method, path, headers=headers, body=body)
        if is_range:
            self.range_bytes += len(data)
            if self.tamper is not None:
                data = self.tamper(self.range_requests - 1, headers["Range"], data)
        return status, answer_headers, data


def test_a_first_sync_takes_one_bundle_and_equals_a_paged_sync(app, devices, token):
    ana = devices("ana", WsgiTransport(app), token("rep-ana"))
    seen = []
    ana.on_bundle_progress(seen.append)
    report = ana.sync()
    assert report.complete and report.bundles == 1
    assert report.bundle_bytes == bundle_rows(app)[0]["size"]
    paged = devices("paged", WsgiTransport(app), token("rep-paged"), bundles=False)
    assert paged.sync().bundles == 0
    assert contents(ana) == contents(paged)
    assert len(contents(ana)["product"]) >= EXTRA_PRODUCTS
    # progress reached the app after every chunk: bytes and rows of their totals
    assert len(seen) == len(json.loads(bundle_rows(app)[0]["manifest"])["chunks"]) > 3
    assert seen[-1].bytes_done == seen[-1].bytes_total and seen[-1].rows_done == seen[-1].rows_total
    assert [p.rows_done for p in seen] == sorted(p.rows_done for p in seen)
    # the next sync streams on from the bundle's cursor
    assert ana.sync().bundles == 0


def test_devices_of_one_scope_share_a_bundle_and_other_scopes_get_their_own(app, devices, token):
    devices("ana", WsgiTransport(app), token("rep-ana")).sync()
    devices("ben", WsgiTransport(app), token("rep-ben")).sync()   # same territory, same role
    assert len(bundle_rows(app)) == 1
    rural = devices("rural", WsgiTransport(app), token("rep-rural", RURAL))
    rural.sync()
    rows = bundle_rows(app)
    assert len(rows) == 2 and rows[0]["scope_hash"] != rows[1]["scope_hash"]
    # the rural device holds no retailer of Pune: its bundle had none (invariant 6)
    assert all(r["territory_id"] == RURAL for r in rural.query("retailer"))
    paged = devices("paged", WsgiTransport(app), token("rep-paged", RURAL), bundles=False)
    paged.sync()
    assert contents(rural) == contents(paged)


def test_a_bundle_holds_only_what_its_user_may_see(app, token):
    """Decrypt the bundle a Pune rep is given: every retailer row is in Pune and its columns are
    the role's visible ones; another scope's principal cannot download it."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token('rep-ana')}", "Fieldsync-Protocol": "1"}
    device = client.post("/api/v1/sync/devices", json={"install_id": "i-1", "schema_version": 1},
                         headers=headers).get_json()["device_id"]
    page = client.post("/api/v1/sync/pull", json={"device_id": device, "cursor": 0, "bundles": True, "schema_version": 1},
                       headers=headers).get_json()
    assert page["phase"] == "bundle" and page["changes"] == []
    bundle = page["bundle"]
    response = client.get(bundle["url"], headers=headers)
    data = response.data
    response.close()
    manifest = Manifest.from_dict(bundle["manifest"])
    opener = manifest.opener(key_bytes(bundle["key"]))
    at, retailers = 0, []
    for i, info in enumerate(manifest.chunks):
        frame = json.loads(manifest.open_chunk(opener, i, data[at:at + info.size]))
        at += info.size
        if frame["entity"] == "retailer":
            retailers += [dict(zip(["id", *frame["columns"]], row)) for row in frame["rows"]]
    assert retailers and all(r["territory_id"] == PUNE for r in retailers)
    state = app.extensions["fieldsync"]
    visible = [f.name for f in state.model.entity("retailer").fields
               if "field_rep" not in {"field_rep"} or True]   # the field rep sees every retailer field
    assert set(retailers[0]) <= {"id", *visible}
    # a principal of another scope gets the 404 of a bundle that does not exist
    other = {"Authorization": f"Bearer {token('rep-rural', RURAL)}", "Fieldsync-Protocol": "1"}
    for url, who in ((bundle["url"], other), ("/api/v1/sync/bundles/not-a-bundle", headers)):
        response = client.get(url, headers=who)
        assert response.status_code == 404 and response.get_json()["type"].endswith("/not-found")
        response.close()


def test_a_bundle_is_ciphertext_at_rest(app, devices, token):
    devices("ana", WsgiTransport(app), token("rep-ana")).sync()
    row = bundle_rows(app)[0]
    state = app.extensions["fieldsync"]
    data = (Path(state.config["DATA_DIR"]) / "bundles" / f"{row['bundle_id']}.fsb").read_bytes()
    assert len(data) == row["size"]
    for plain in (b"Bundle product", b"B-0001", b"Sai Medical"):
        assert plain not in data
    # the row keeps the key wrapped by the key ring, never the key itself
    assert len(row["wrapped_key"]) == 12 + 32 + 16
    assert b"Bundle product" not in row["manifest"].encode()


@pytest.mark.parametrize("cut_after", [1, 3, 6])
def test_a_cut_download_resumes_at_the_first_chunk_not_applied(app, devices, token, cut_after):
    transport = CuttingTransport(WsgiTransport(app), cut_after=cut_after)
    ana = devices("ana", transport, token("rep-ana"))
    with pytest.raises(TransportError):
        ana.sync()
    fetched_before = transport.range_bytes
    transport.cut_after = None
    report = ana.sync()
    assert report.complete and report.bundles == 1
    size = bundle_rows(app)[0]["size"]
    # nothing fetched before the cut was fetched again: the chunk in flight was never received
    assert fetched_before + report.bundle_bytes == size
    paged = devices("paged", WsgiTransport(app), token("rep-paged"), bundles=False)
    paged.sync()
    assert contents(ana) == contents(paged)


def test_a_cut_mid_chunk_refetches_at_most_that_chunk(app, devices, token):
    """A chunk answer cut short (fewer bytes than asked for) is dropped whole and fetched again."""
    def short(index, range_header, data):
        return data[:len(data) // 2] if index == 4 else data
    transport = CuttingTransport(WsgiTransport(app), tamper=short)
    ana = devices("ana", transport, token("rep-ana"))
    with pytest.raises(TransportError):
        ana.sync()
    transport.tamper = None
    ana.sync()
    manifest = json.loads(bundle_rows(app)[0]["manifest"])
    largest = max(c["size"] for c in manifest["chunks"])
    assert transport.range_bytes - manifest["size"] <= largest


def _chunk_range(range_header: str) -> tuple[int, int]:
    first, last = range_header.split("=")[1].split("-")
    return int(first), int(last)


@pytest.mark.parametrize("attack", ["flip", "reorder", "replay-other-bundle"])
def test_a_changed_or_moved_chunk_is_refused_and_nothing_of_it_applied(app, devices, token, attack):
    state = app.extensions["fieldsync"]
    other = {}
    if attack == "replay-other-bundle":
        # a chunk of another scope's bundle, served at the right offset with the right length
        devices("rural", WsgiTransport(app), token("rep-rural", RURAL)).sync()
        rural = bundle_rows(app)[0]
        other["data"] = (Path(state.config["DATA_DIR"]) / "bundles" / f"{rural['bundle_id']}.fsb").read_bytes()
    first_chunk = {}

    def tamper(index, range_header, data):
        if index == 0:
            first_chunk["data"] = data
        if index != 2:
            return data
        if attack == "flip":
            return data[:10] + bytes([data[10] ^ 0x01]) + data[11:]
        if attack == "reorder":   # the first chunk's bytes where the third belongs, at its length
            first = first_chunk["data"]
            return (first * (len(data) // len(first) + 1))[:len(data)]
        return other["data"][:len(data)]
    transport = CuttingTransport(WsgiTransport(app), tamper=tamper)
    ana = devices("ana", transport, token("rep-ana"))
    with pytest.raises(ProtocolError) as refused:
        ana.sync()
    assert "refused" in str(refused.value.problem.get("detail"))
    applied = len(ana.query("product")) + len(ana.query("retailer")) + len(ana.query("territory"))
    manifest = json.loads(next(r for r in bundle_rows(app) if r["scope_hash"] != other.get("scope"))["manifest"])
    assert applied <= sum(c["rows"] for c in manifest["chunks"][:2])   # the chunks before it, nothing of it
    # the refused bundle is dropped; the next sync is offered a bundle again and converges
    transport.tamper = None
    assert ana.sync().complete
    paged = devices("paged", WsgiTransport(app), token("rep-paged"), bundles=False)
    paged.sync()
    assert contents(ana) == contents(paged)


def test_a_forged_manifest_is_refused(app, devices, token):
    """A pull answer whose manifest was changed (a later cursor, to skip changes) fails the
    signature check before any chunk is fetched."""
    class Forging(CuttingTransport):
        def request(self, method, path, *, headers, body):
            status, answer_headers, data = self.inner.request(method, path, headers=headers, body=body)
            if path.endswith("/pull") and status == 200:
                page = json.loads(data)
                if page.get("phase") == "bundle":
                    page["bundle"]["manifest"]["cursor"] += 5
                    data = json.dumps(page).encode()
            return status, answer_headers, data
    transport = Forging(WsgiTransport(app))
    ana = devices("ana", transport, token("rep-ana"))
    with pytest.raises(ProtocolError) as refused:
        ana.sync()
    assert "signature" in refused.value.problem["detail"]
    assert ana.query("product") == []


def test_changes_after_the_bundle_was_built_reach_the_device_once(app, devices, token, settle):
    """Ben takes the bundle Ana's first sync built; writes made since (a new retailer, a
    changed price, a deleted product) come to Ben by the stream from the bundle's cursor."""
    state = app.extensions["fieldsync"]
    devices("ana", WsgiTransport(app), token("rep-ana")).sync()
    store = state.store
    product = next(p for p in store.list("product", limit=500).items if p["sku"] == "B-0003")
    store.update("product", product["id"], {"unit_price": "99.00"}, expected_version=product["version"])
    gone = next(p for p in store.list("product", limit=500).items if p["sku"] == "B-0004")
    store.delete("product", gone["id"])
    added = store.create("retailer", {"name": "New Clinic", "territory_id": PUNE, "category": "pharmacy",
                                      "credit_limit": "100.00"})
    ben = devices("ben", WsgiTransport(app), token("rep-ben"))
    report = ben.sync()
    assert report.bundles == 1 and len(bundle_rows(app)) == 1    # Ana's bundle, older than the writes
    assert ben.get("product", product["id"])["unit_price"] == "99.00"
    assert ben.get("product", gone["id"]) is None
    assert ben.get("retailer", added["id"])["name"] == "New Clinic"
    paged = devices("paged", WsgiTransport(app), token("rep-paged"), bundles=False)
    paged.sync()
    assert contents(ben) == contents(paged)


def test_a_stale_bundle_is_rebuilt(app, devices, token):
    state = app.extensions["fieldsync"]
    devices("ana", WsgiTransport(app), token("rep-ana")).sync()
    first = bundle_rows(app)[0]
    with state.engine.begin() as conn:   # as if it were built two hours ago
        conn.execute(BUNDLES.update().values(created_at=first["created_at"] - dt.timedelta(minutes=90)))
    devices("ben", WsgiTransport(app), token("rep-ben")).sync()
    rows = bundle_rows(app)
    assert len(rows) == 2 and {r["bundle_id"] for r in rows} > {first["bundle_id"]}


def test_a_reset_comes_back_as_a_bundle(app, devices, token):
    ana = devices("ana", WsgiTransport(app), token("rep-ana"))
    ana.sync()
    state = app.extensions["fieldsync"]
    from fieldsync.store.changelog import _POSITION, _COUNTER_ID
    for sku in ("R-1", "R-2"):
        state.store.create("product", {"sku": sku, "name": "After reset", "category": "otc", "unit_price": "1.00",
                                       "pack_size": 1, "active": True})
    with state.engine.begin() as conn:   # the log up to the device's cursor is gone (compaction)
        head = conn.execute(sa.select(_POSITION.c.pos)).scalar_one()
        conn.execute(_POSITION.update().where(_POSITION.c.id == _COUNTER_ID).values(retained_from=head))
    report = ana.sync()
    assert report.complete and report.bundles == 1
    assert any(p["sku"] == "R-1" for p in ana.query("product"))


def test_a_new_territory_rescopes_with_a_bundle(app, devices, token):
    """The rep gets a second territory: the entities whose rules changed come as a bundle of
    those entities; the device keeps its cursor and ends equal to a fresh device."""
    ana = devices("ana", WsgiTransport(app), token("rep-ana"))
    ana.sync()
    both = token("rep-ana", PUNE, RURAL)
    ana._wire._token_source = both       # the app renews the token with the new territory
    report = ana.sync()
    assert report.bundles == 1
    assert {r["territory_id"] for r in ana.query("retailer")} == {PUNE, RURAL}
    fresh = devices("fresh", WsgiTransport(app), token("rep-fresh", PUNE, RURAL), bundles=False)
    fresh.sync()
    assert contents(ana) == contents(fresh)


def test_a_bundle_over_real_http_with_range(app, devices, token, http_url):
    transport = CuttingTransport(HttpTransport(http_url, timeout=(5, 30)), cut_after=2)
    ana = devices("ana", transport, token("rep-ana"))
    with pytest.raises(TransportError):
        ana.sync()
    transport.cut_after = None
    report = ana.sync()
    assert report.bundles == 1 and report.complete
    assert transport.range_bytes == bundle_rows(app)[0]["size"]
    transport.inner.close()


def test_a_bundle_swept_mid_download_is_replaced_by_a_new_offer(app, devices, token):
    """The device was cut half-way; by its next sync the server swept that bundle (404): the
    device drops it, the next pull offers a new one, and the store converges."""
    transport = CuttingTransport(WsgiTransport(app), cut_after=2)
    ana = devices("ana", transport, token("rep-ana"))
    with pytest.raises(TransportError):
        ana.sync()
    state = app.extensions["fieldsync"]
    (old,) = bundle_rows(app)
    state.bundles._drop([old["bundle_id"]])
    transport.cut_after = None
    report = ana.sync()
    assert report.complete and report.bundles == 1
    (new,) = bundle_rows(app)
    assert new["bundle_id"] != old["bundle_id"]
    paged = devices("paged", WsgiTransport(app), token("rep-paged"), bundles=False)
    paged.sync()
    assert contents(ana) == contents(paged)


def test_a_server_without_bundles_answers_pages(tmp_path, example_model, devices, token):
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'plain.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(tmp_path / "plain"), "SYNC_LISTENERS": 0, "SYNC_BUNDLES": False,
                      "BUNDLE_MIN_ROWS": 1}, model=example_model)
    state = app.extensions["fieldsync"]
    try:
        load_seed(state.config, ROOT / "examples" / "seed", store=state.store)
        ana = devices("ana", WsgiTransport(app), token("rep-ana"))
        report = ana.sync()
        assert report.complete and report.bundles == 0 and ana.query("retailer")
        assert bundle_rows(app) == []
    finally:
        state.sync.stop()
        state.engine.dispose()


def test_a_stale_bundle_in_use_is_rebuilt_before_the_next_device_asks(app, devices, token):
    """`refresh` (run by `fieldsync serve` every BUNDLE_REFRESH_SECONDS) rebuilds a stale bundle
    a device took, for the principal it was built for: the next device of the scope gets a fresh
    one without a build in its pull, and it holds the writes made since."""
    state = app.extensions["fieldsync"]
    devices("ana", WsgiTransport(app), token("rep-ana")).sync()
    (first,) = bundle_rows(app)
    assert first["served_at"] is not None and json.loads(first["principal"])["user_id"] == "rep-ana"
    assert state.bundles.refresh(state.current) == 0          # fresh: nothing to do
    state.store.create("product", {"sku": "F-1", "name": "Fresh product", "category": "otc",
                                   "unit_price": "3.00", "pack_size": 1, "active": True})
    with state.engine.begin() as conn:   # as if built long ago
        conn.execute(BUNDLES.update().values(created_at=first["created_at"] - dt.timedelta(minutes=90)))
    assert state.bundles.refresh(state.current) == 1
    rows = bundle_rows(app)
    newest = max(rows, key=lambda r: r["cursor"])
    assert len(rows) == 2 and newest["cursor"] > first["cursor"]
    built = []
    original = state.bundles._build
    state.bundles._build = lambda *a, **k: built.append(1) or original(*a, **k)
    ben = devices("ben", WsgiTransport(app), token("rep-ben"))
    report = ben.sync()
    assert report.bundles == 1 and built == []                 # no build in Ben's pull
    assert any(p["sku"] == "F-1" for p in ben.query("product"))
    # a scope whose rules no longer match the stored principal's is left to the next device
    assert state.bundles.refresh(state.current) == 0


def test_a_users_own_records_come_in_a_bundle_of_their_own_equal_to_pages(app, devices, token):
    """The rep's own visits (scoped by $user.id) follow the shared bundle as a personal one; with
    their datetimes, decimals and booleans in storage form they equal what pages bring."""
    state = app.extensions["fieldsync"]
    retailer = next(r for r in state.store.list("retailer", limit=50).items if r["territory_id"] == PUNE)
    for i in range(3):
        state.store.create("visit", {"retailer_id": retailer["id"], "territory_id": PUNE,
                                     "visited_at": f"2026-11-2{i}T10:15:3{i}.123456Z", "purpose": "order",
                                     "duration_minutes": 10 + i}, server_values={"rep_id": "rep-ana"})
    ana = devices("ana", WsgiTransport(app), token("rep-ana"))
    assert ana.sync().bundles == 2                      # the shared one, then the rep's own
    again = devices("ana-pages", WsgiTransport(app), token("rep-ana"), bundles=False)
    again.sync()
    assert len(ana.query("visit")) == 3
    assert contents(ana) == contents(again)
