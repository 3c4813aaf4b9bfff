"""The SDK's outbox bundles end to end (docs/protocol.md §4.7): a long-offline device pushes
its outbox as one resumable upload over real HTTP, a cut mid-way costs at most the tus chunk in
flight (in the same sync, or after an app restart, from the URL kept in the store), and a
connection lost at any request still lands every write exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fieldsync.client import Client, HttpTransport, TransportError, WsgiTransport

from outbox_support import JSON_LIMIT, PUNE, ROOT, SAI, drain, offline_writes, seeded_app, user_token, visits_of
from tus_support import CuttingProxy, serving

CHUNK = 4096          # the tus chunk of these tests: what a cut may cost
SCHEMA = json.loads((ROOT / "generated" / "device" / "schema.json").read_text())


@pytest.fixture(scope="module")
def served(tmp_path_factory, example_model):
    """(app, base URL): a seeded server on 127.0.0.1 whose pushes apply on `drain(app)`."""
    app = seeded_app(tmp_path_factory.mktemp("outbox-bundle-sdk"), example_model)
    with serving(app, JSON_LIMIT) as base:
        yield app, base


@pytest.fixture
def proxy(served):
    cutting = CuttingProxy(int(served[1].rsplit(":", 1)[1]))
    yield cutting
    cutting.close()


class Spy:
    """A transport that records each request (method, path, body size) and can cut one: the
    request numbered `cut_at` raises TransportError before it is sent (`before`) or after the
    server answered it (`after`: the answer is lost)."""

    def __init__(self, inner, cut_at: int | None = None, mode: str = "before"):
        self.inner = inner
        self.seen: list[tuple[str, str, int, dict]] = []
        self.cut_at = cut_at
        self.mode = mode

    def request(self, method, path, *, headers, body):
        number = len(self.seen)
        self.seen.append((method, path, len(body or b""), dict(headers)))
        if number == self.cut_at and self.mode == "before":
            raise TransportError("cut before the request (test)")
        answer = self.inner.request(method, path, headers=headers, body=body)
        if number == self.cut_at:
            raise TransportError("cut after the server answered (test)")
        return answer

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _, _ in self.seen if method in (None, m)]

    def patched(self) -> int:
        return sum(size for m, _, size, _ in self.seen if m == "PATCH")

    def bundle_size(self) -> int:
        return next(int(h["Upload-Length"]) for m, p, _, h in self.seen if m == "POST" and "/transfer" in p)


_users = iter(range(10 ** 6))


def _device(tmp_path: Path, transport, user: str, **options) -> Client:
    options.setdefault("bundle_over", 100)
    options.setdefault("upload_chunk", CHUNK)
    return Client(tmp_path / f"{user}.db", transport, user_token(user), schema=SCHEMA, **options)


def _write(client: Client, n: int) -> list[str]:
    return [client.insert("visit", {"retailer_id": SAI, "territory_id": PUNE, "visited_at": "2026-11-26T10:00:00Z",
                                    "purpose": "order"}) for _ in range(n)]


def _settled(app, client: Client, user: str, ids: list[str]) -> None:
    """Apply what the server received, pull the results, and check every write landed once."""
    drain(app)
    client.sync()
    status = client.status()
    assert (status.pending, status.sent, status.received, status.quarantined) == (0, 0, 0, 0)
    assert sorted(visits_of(app, user)) == sorted(ids)


def test_a_long_offline_device_pushes_2500_writes_as_one_bundle(served, tmp_path):
    app, base = served
    user = f"rep-offline-{next(_users)}"
    spy = Spy(HttpTransport(base))
    client = _device(tmp_path, spy, user, bundle_over=2000, upload_chunk=1 << 20)   # the SDK's default threshold
    client.sync()
    ids = offline_writes(client, 2500)
    spy.seen.clear()
    seen = []
    client.on_bundle_progress(seen.append)
    report = client.sync()
    assert report.pushed == 2500
    uploads = [p for p in seen if p.rows_total == 2500]   # the upload's, beside any snapshot's
    assert uploads and (uploads[-1].bytes_done, uploads[-1].rows_done) == (uploads[-1].bytes_total, 2500)
    assert spy.paths("POST").count("/api/v1/sync/push-bundle") == 1
    assert "/api/v1/sync/push" not in spy.paths()                  # no plain push at all
    assert client.status().received == 2500
    assert not list(tmp_path.glob("*.bundle"))                     # the sealed file is gone
    assert not list(app.extensions["fieldsync"].transfer.root.glob("*.bin"))   # and the server's copy
    _settled(app, client, user, ids)
    client.close()


def test_an_outbox_under_the_threshold_is_pushed_plainly(served, tmp_path):
    app, base = served
    user = f"rep-small-{next(_users)}"
    spy = Spy(HttpTransport(base))
    client = _device(tmp_path, spy, user)
    ids = _write(client, 99)
    client.sync()
    assert "/api/v1/sync/push" in spy.paths() and not [p for p in spy.paths() if "transfer" in p or "bundle" in p]
    _settled(app, client, user, ids)
    client.close()


def test_a_cut_mid_upload_resumes_from_the_servers_offset_in_the_same_sync(served, proxy, tmp_path):
    app, _ = served
    user = f"rep-cut-{next(_users)}"
    spy = Spy(HttpTransport(f"http://127.0.0.1:{proxy.port}"))
    client = _device(tmp_path, spy, user)
    client._engine.outbox_bundles.tus.sleep = lambda seconds: None   # the retry's backoff, not waited out here
    client.sync()
    ids = offline_writes(client, 600)
    spy.seen.clear()
    proxy.cut_after(2 * CHUNK + 1500)   # the creation and a chunk pass; the next chunk is cut
    client.sync()
    assert proxy.cuts == 1
    assert "HEAD" in [m for m, _, _, _ in spy.seen]                 # it asked the server where to go on
    resent = spy.patched() - spy.bundle_size()
    assert 0 < resent <= CHUNK
    _settled(app, client, user, ids)
    client.close()


def test_an_app_restarted_after_a_cut_resumes_the_same_upload(served, proxy, tmp_path):
    app, base = served
    user = f"rep-restart-{next(_users)}"
    first = Spy(HttpTransport(f"http://127.0.0.1:{proxy.port}"))
    client = _device(tmp_path, first, user)
    client._engine.outbox_bundles.tus.retries = 0   # the app is killed at the first failure
    client.sync()
    ids = offline_writes(client, 600)
    first.seen.clear()
    proxy.cut_after(2 * CHUNK + 1500)
    with pytest.raises(TransportError):
        client.sync()
    created = [p for m, p, _, _ in first.seen if m == "POST" and "/transfer" in p]
    assert len(created) == 1
    client.close()

    later = Spy(HttpTransport(base))
    client = _device(tmp_path, later, user)
    ids += _write(client, 30)   # written while the bundle waits: they go after it, plainly
    client.sync()
    transfer = [(m, p) for m, p, _, _ in later.seen if "/transfer" in p]
    assert transfer[0][0] == "HEAD"                                 # the same upload, not a new one
    assert not [m for m, _ in transfer if m == "POST"]
    resent = first.patched() + later.patched() - first.bundle_size()
    assert 0 < resent <= CHUNK
    assert later.paths("POST").count("/api/v1/sync/push-bundle") == 1
    assert "/api/v1/sync/push" in later.paths()                    # the 30 newer writes
    _settled(app, client, user, ids)
    client.close()


def test_a_refused_bundle_falls_back_to_plain_pushes_of_the_same_seqs(served, tmp_path):
    app, base = served
    user = f"rep-refused-{next(_users)}"

    class WrongKey(Spy):
        def request(self, method, path, *, headers, body):
            if path.endswith("/push-bundle"):
                document = json.loads(body)
                document["key"] = document["key"][::-1]            # the server cannot open it: 422
                body = json.dumps(document).encode()
            return super().request(method, path, headers=headers, body=body)

    spy = WrongKey(HttpTransport(base))
    client = _device(tmp_path, spy, user)
    ids = _write(client, 150)
    client.sync()
    paths = spy.paths()
    assert paths.index("/api/v1/sync/push-bundle") < paths.index("/api/v1/sync/push")
    assert [m for m, p, _, _ in spy.seen if "/transfer/" in p][-1] == "DELETE"   # the useless upload
    assert client._store.state("outbox_bundle") is None
    _settled(app, client, user, ids)
    client.close()


@pytest.fixture(scope="module")
def wsgi_app(tmp_path_factory, example_model):
    app = seeded_app(tmp_path_factory.mktemp("outbox-bundle-cuts"), example_model)
    yield app
    app.extensions["fieldsync"].engine.dispose()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut_at=st.integers(0, 9), mode=st.sampled_from(["before", "after"]))
def test_a_connection_lost_at_any_request_still_lands_every_write_once(wsgi_app, tmp_path_factory, cut_at, mode):
    """Requests of a bundle sync: creation, PATCHes of 1 KiB, the commit, pulls, ack. Each may
    be lost before it reaches the server or after (answer lost); the app restarts and syncs
    again, and every write lands exactly once."""
    user = f"rep-cuts-{next(_users)}"
    folder = tmp_path_factory.mktemp("device")
    spy = Spy(WsgiTransport(wsgi_app), cut_at=cut_at, mode=mode)
    client = _device(folder, spy, user, bundle_over=20, upload_chunk=1024)
    client._engine.outbox_bundles.tus.retries = 0
    ids = offline_writes(client, 40)
    try:
        client.sync()
    except TransportError:
        pass
    client.close()
    client = _device(folder, WsgiTransport(wsgi_app), user, bundle_over=20, upload_chunk=1024)
    client.sync()
    _settled(wsgi_app, client, user, ids)
    client.close()


@settings(max_examples=50, deadline=None)
@given(seq=st.integers(1, 2 ** 62), entity=st.text(max_size=12), op=st.sampled_from(["insert", "update", "delete"]),
       record_id=st.text(max_size=40), base=st.none() | st.integers(0, 2 ** 31),
       client_time=st.none() | st.text(max_size=30),
       fields=st.dictionaries(st.text(max_size=10), st.none() | st.integers() | st.text(max_size=20), max_size=4))
def test_the_bundles_mutation_text_is_the_push_mutation(seq, entity, op, record_id, base, client_time, fields):
    """The bundle writes each entry's JSON without decoding its fields: the same value as
    `outbox.as_mutation`, which plain pushes send."""
    from fieldsync.client.outbox import as_mutation
    from fieldsync.client.outbox_bundle import _mutation_text
    entry = {"seq": seq, "entity": entity, "op": op, "record_id": record_id, "base_version": base,
             "client_time": client_time, "fields": json.dumps(fields, sort_keys=True)}
    assert json.loads(_mutation_text(entry)) == as_mutation(entry)
