"""KMS unreachable (issue 15): with KEY_PROVIDER=kms, the moto server serving KMS is stopped
while the server is in use, then started again.

While KMS is away: reads and pulls keep working with the data keys the server has unwrapped;
a write that needs a new data key (a prescription for a new patient: a new subject key) gets a
quick 503 `unavailable` problem with Retry-After; a device's push of such a write is received and
its batch waits in the queue (the listener pool pauses and probes KMS instead of spending the
batch's deliveries). When KMS is back everything heals without a restart: the write succeeds,
the batch is applied exactly once.

The moto server is one of this test's own on a fixed free port. moto keeps its state in the
process, not in the server thread, so a server stopped and started again on the same port
still holds the KMS key: the restart is an outage of the endpoint, like a KMS region blip,
and the wrapped data keys stay valid (docs/decisions.md)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
import sqlalchemy as sa

from fieldsync.api import create_app
from fieldsync.client import Client, HttpTransport
from fieldsync.crypto.kms import KmsKeyProvider
from fieldsync.errors import KeyProviderUnreachable
from fieldsync.seed import load_seed

from moto_server import REGION, aws_credentials  # noqa: F401  (fixture)
from restart_support import (BOUND, PUNE, ROOT, SAI, SECRET, UNAVAILABLE, device_schema, free_port, percentile,
                            rep_token, serving)

PRODUCT = "b4830030-928b-5b2e-8785-cb1d2be45832"   # a seed product


class PrivateMoto:
    """moto's threaded server on a port of this test, which `stop()` and `start()` keep."""

    def __init__(self) -> None:
        import logging
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.port = free_port()
        self.server = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@pytest.fixture
def moto():
    server = PrivateMoto()
    server.start()
    yield server
    server.stop()


def call(url: str, method: str, path: str, token: str, body: dict | None = None):
    """(status, headers, parsed body, seconds) of one request over HTTP."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url + path, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, dict(answer.headers), json.loads(answer.read() or b"null"), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"null"), time.monotonic() - started


def prescription(patient: str, name: str) -> dict:
    return {"retailer_id": SAI, "territory_id": PUNE, "patient_id": patient, "patient_name": name,
            "patient_dob": "1950-02-02", "diagnosis": "atrial fibrillation", "product_id": PRODUCT,
            "prescribed_at": "2026-11-20T10:00:00Z"}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_kms_timeouts_bound_a_silent_kms(aws_credentials):
    """A KMS endpoint that accepts connections and never answers costs the configured read
    timeout times the attempts, then KeyProviderUnreachable; for KMS_RETRY_SECONDS after it a
    call fails at once without a request."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        provider = KmsKeyProvider(f"arn:aws:kms:{REGION}:123456789012:key/{uuid.uuid4()}", endpoint_url=endpoint,
                                  connect_timeout=0.5, read_timeout=0.5, max_attempts=2, retry_seconds=30)
        seen = []
        provider.observers.append(lambda ok, exc: seen.append(ok))
        started = time.monotonic()
        with pytest.raises(KeyProviderUnreachable, match="failed before KMS answered"):
            provider.generate_data_key()
        first = time.monotonic() - started
        started = time.monotonic()
        with pytest.raises(KeyProviderUnreachable, match="unreachable moments ago"):
            provider.decrypt_data_key(b"K1" + (20).to_bytes(2, "big") + b"arn:aws:kms:x:1:key/1" + b"blob")
        second = time.monotonic() - started
        assert provider.available() is False   # still silent: the pool keeps waiting
        provider.close()
    assert second < 0.1
    assert seen == [False, False]            # the failed call and the failed probe; the fail-fast call made no request
    # the attempts' read timeouts, botocore's backoff between them (< 1 s here), and a loaded machine
    assert first < 5.0, f"a silent KMS held the thread {first:.1f} s"


def test_kms_stopped_mid_traffic_reads_keep_working_new_keys_fail_fast_and_heal(
        tmp_path, moto, example_model, aws_credentials):
    import boto3
    kms = boto3.client("kms", endpoint_url=moto.endpoint, region_name=REGION)
    key = kms.create_key(Description="fieldsync outage test")["KeyMetadata"]
    app = create_app({"DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "SECRET_KEY": SECRET,
                      "DATA_DIR": str(tmp_path / "var"), "QUEUE_URL": f"sqlite:///{tmp_path / 'queue.db'}",
                      "KEY_PROVIDER": "kms", "KMS_KEY_ID": key["Arn"], "KMS_ENDPOINT_URL": moto.endpoint,
                      "SYNC_LISTENERS": 2, "ADMIN_UI": False}, model=example_model)
    state = app.extensions["fieldsync"]
    load_seed(state.config, ROOT / "examples" / "seed", store=state.store)
    rep = rep_token("rep-asha")
    with serving(app) as url:
        http = [HttpTransport(url, timeout=(5, 30)) for _ in range(2)]
        writer = Client(tmp_path / "writer.db", http[0], rep, schema=device_schema())
        reader = Client(tmp_path / "reader.db", http[1], rep, schema=device_schema())
        try:
            # -- before: a patient's prescription is written (its subject key made) and read --
            known = str(uuid.uuid4())
            status, _, created, _ = call(url, "POST", "/api/v1/prescription", rep, prescription(known, "Farida Rao"))
            assert status == 201, created
            record = created["id"]
            assert call(url, "GET", f"/api/v1/prescription/{record}", rep)[0] == 200
            reader.sync()
            # a push before: the queue's own data key (queue/encrypted.py) is made and cached
            writer.insert("visit", {"retailer_id": SAI, "territory_id": PUNE, "visited_at": "2026-11-26T09:00:00Z",
                                    "purpose": "order"})
            writer.sync()
            assert state.sync.wait_idle(20)

            # -- KMS goes away ------------------------------------------------------------------
            moto.stop()
            down = time.monotonic()
            reads = []
            for _ in range(30):   # reads decrypt with the cached data keys
                status, _, got, seconds = call(url, "GET", f"/api/v1/prescription/{record}", rep)
                assert status == 200 and got["patient_name"] == "Farida Rao", (status, got)
                reads.append(seconds)
            status, _, page, _ = call(url, "GET", "/api/v1/prescription?limit=50", rep)
            assert status == 200 and any(r["patient_name"] == "Farida Rao" for r in page["items"]), page
            # the same patient again: its subject key is cached, the write needs no KMS
            status, _, again, _ = call(url, "POST", "/api/v1/prescription", rep, prescription(known, "Farida Rao"))
            assert status == 201, again
            # a new patient needs a new data key: a quick 503, nothing written
            status, headers, problem, seconds = call(url, "POST", "/api/v1/prescription", rep,
                                                     prescription(str(uuid.uuid4()), "Ivo Santos"))
            assert status == 503 and problem["type"] == UNAVAILABLE and headers.get("Retry-After"), (status, problem)
            assert seconds < BOUND
            assert "Ivo Santos" not in json.dumps(problem)
            # a device pushes a new patient's prescription: received, its batch waits for KMS
            pending = writer.insert("prescription", prescription(str(uuid.uuid4()), "Meera Iyer"))
            seq = writer.last_seq
            started = time.monotonic()
            writer.sync()
            push_seconds = time.monotonic() - started
            wait_for(lambda: state.sync.pool.stats.outages >= 1, 15, "the listener to meet the KMS outage")
            # a device pulls (prescriptions are push-only: a visit written meanwhile comes down)
            status, _, visit, _ = call(url, "POST", "/api/v1/visit", rep, {
                "retailer_id": SAI, "territory_id": PUNE, "visited_at": "2026-11-26T10:00:00Z", "purpose": "order"})
            assert status == 201, visit
            started = time.monotonic()
            reader.sync()
            pull_seconds = time.monotonic() - started
            assert reader.get("visit", visit["id"]) is not None
            keys = state.dependencies.state("keys")
            assert keys.state == "degraded", keys
            outage = time.monotonic() - down

            # -- KMS is back: everything heals by itself ------------------------------------------
            moto.start()
            up = time.monotonic()
            healed = []

            def write_new_patient() -> bool:
                status, _, body, _ = call(url, "POST", "/api/v1/prescription", rep,
                                          prescription(str(uuid.uuid4()), "Ivo Santos"))
                assert status in (201, 503), (status, body)
                healed.append(status)
                return status == 201
            wait_for(write_new_patient, 20, "a new patient's prescription after KMS came back")
            write_healed = time.monotonic() - up
            assert state.sync.wait_idle(30), "the push batch was not applied after KMS came back"
            applied = time.monotonic() - up
            writer.sync()
            assert writer.quarantined() == []
            assert writer.status().pending + writer.status().sent + writer.status().received == 0
            store = state.store
            table = store.table(store.model.entity("prescription"))
            with state.engine.connect() as conn:
                assert conn.execute(sa.select(sa.func.count()).select_from(table)
                                    .where(table.c.id == pending)).scalar() == 1
            from fieldsync.store.sync_tables import LEDGER
            with state.engine.connect() as conn:
                assert conn.execute(sa.select(LEDGER.c.status).where(
                    LEDGER.c.device_id == writer.status().device_id, LEDGER.c.seq == seq)).scalar() == "applied"
            assert state.dependencies.state("keys").state == "up"
            reads_ms = [s * 1000 for s in reads]
            print(f"\nKMS outage {outage:.1f} s: reads p50={percentile(reads_ms, 0.5):.1f} ms "
                  f"p99={percentile(reads_ms, 0.99):.1f} ms (n={len(reads)}); new-key write answered 503 in "
                  f"{seconds * 1000:.0f} ms; device push {push_seconds * 1000:.0f} ms, pull {pull_seconds * 1000:.0f} ms; "
                  f"after KMS returned: a new-key write succeeded in {write_healed:.2f} s ({len(healed)} tries), "
                  f"the waiting batch applied within {applied:.2f} s; pool outage failures "
                  f"{state.sync.pool.stats.outages}")
        finally:
            writer.close()
            reader.close()
            for transport in http:
                transport.close()
    state.sync.stop()
    state.sync.queue.keys.close()
    state.crypto.keyring.provider.close()
    state.engine.dispose()
    kms.close()
