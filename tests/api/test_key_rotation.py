"""Key rotation and re-encryption under live traffic, the keys CLI, and the codec's round trip
(hypothesis). Rotation loses no readable value; retired keys are destroyed only once nothing
uses them."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from fieldsync.api import create_app
from fieldsync.crypto.fields import FieldCrypto, ciphertext_key_id
from fieldsync.errors import IntegrityFailure
from fieldsync.crypto.keyring import KeyRing, create_key_tables, prepare_keys
from fieldsync.crypto.keys import LocalKeyProvider
from fieldsync.crypto.rotation import reencrypt, rotate
from fieldsync.store.changelog import CHANGES_TABLE, decode_row
from fieldsync.store.engine import make_engine

SECRET = "test-secret-key"   # the api fixtures' (tests/api/conftest.py)


@pytest.fixture
def fast_app(db_url, example_model, tmp_path):
    """An app whose key cache and retirement grace are zero, so a rotation is seen at once."""
    app = create_app({"DATABASE_URL": db_url, "SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path),
                      "KEY_CACHE_SECONDS": 0, "KEY_RETIRE_GRACE_SECONDS": 0}, model=example_model)
    yield app
    app.extensions["fieldsync"].engine.dispose()


# the reps of these tests work in it: a prescription may only name a territory its rep reaches
NORTH = "0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c01"


def _world(api):
    territory = api.ok("POST", "/territory", {"id": NORTH, "code": "N-1", "name": "North", "region": "north"})
    retailer = api.ok("POST", "/retailer", {"name": "Shop N", "territory_id": territory["id"]})
    product = api.ok("POST", "/product", {"sku": "PILL", "name": "Pill", "category": "pharma", "unit_price": "2.50"})
    return territory, retailer, product


def _body(world, n, patient):
    territory, retailer, product = world
    return {"retailer_id": retailer["id"], "territory_id": territory["id"], "patient_id": patient,
            "patient_name": f"Patient {n}", "patient_dob": "1970-01-02", "diagnosis": f"Condition number {n}",
            "product_id": product["id"], "prescribed_at": "2026-11-20T10:00:00Z"}


def _kids_in_use(engine) -> set[str]:
    with engine.connect() as conn:
        kids = set()
        for row in conn.execute(sa.text("select patient_id, patient_name, patient_dob, diagnosis from prescription")):
            kids.update(ciphertext_key_id(v) for v in row if v is not None)
        for row, prev in conn.execute(sa.text(f"select row, prev from {CHANGES_TABLE} where entity = 'prescription'")):
            for text in (row, prev):
                if text:
                    data = json.loads(text)
                    kids.update(ciphertext_key_id(data[f]) for f in ("patient_id", "patient_name", "patient_dob",
                                                                     "diagnosis") if data.get(f) is not None)
    return kids


class LiveWriter:
    """A thread calling `write(client, n)` for n = start, start + 1, ... as a field rep until
    stopped, keeping each result; `wait_more(k)` blocks until k more writes are done (or one
    failed). Failures are kept in `failures` for the test to assert on."""

    def __init__(self, app, api_class, write, start: int = 0):
        self.client = api_class(app, "rep-1", "field_rep", territory_ids=[NORTH])
        self.write, self.n = write, start
        self.results: list = []
        self.failures: list = []
        self._stop = threading.Event()
        self._progress = threading.Condition()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                result = self.write(self.client, self.n)
            except AssertionError as exc:   # reported to the main thread
                self.failures.append(exc)
                with self._progress:
                    self._progress.notify_all()
                return
            with self._progress:
                self.results.append(result)
                self._progress.notify_all()
            self.n += 1

    def wait_more(self, k: int) -> None:
        with self._progress:
            target = len(self.results) + k
            assert self._progress.wait_for(lambda: len(self.results) >= target or self.failures, timeout=60)

    def __enter__(self) -> "LiveWriter":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


def test_rotation_under_live_traffic_loses_nothing(fast_app, example_model, api_for):
    Api = api_for
    state = fast_app.extensions["fieldsync"]
    admin = Api(fast_app)
    world = _world(admin)
    rep = admin.as_user("rep-1", "field_rep", territory_ids=[NORTH])
    patients = [str(uuid.uuid4()) for _ in range(4)]
    written: dict[str, dict] = {}
    for n in range(12):
        rec = rep.ok("POST", "/prescription", _body(world, n, patients[n % 4]))
        written[rec["id"]] = rec
    before = {r["kid"] for r in state.crypto.keyring.describe() if r["state"] == "active"}

    def write(client, n):
        rec = client.ok("POST", "/prescription", _body(world, n, patients[n % 4]))
        if n % 3 == 0:   # reads of older records too
            client.request("GET", f"/prescription/{next(iter(written))}")
        written[rec["id"]] = rec
        return rec

    with LiveWriter(fast_app, Api, write, start=100) as writer:
        writer.wait_more(3)
        rotated = rotate(state.crypto, state.model, "prescription")
        assert {old for _s, old, _n in rotated if old} <= before     # every scope's key was the active one
        writer.wait_more(5)
        reencrypt(state.store, state.crypto, entity="prescription")   # while the writer goes on
    assert not writer.failures, writer.failures
    report = reencrypt(state.store, state.crypto, entity="prescription")
    keys = list(state.crypto.keyring.describe())
    assert not [k for k in keys if k["state"] == "retired"], report.summary()
    destroyed = {k["kid"] for k in keys if k["state"] == "destroyed"}
    assert destroyed >= {old for _s, old, _n in rotated if old}
    assert not _kids_in_use(state.engine) & destroyed
    # every value written before, during and after the rotation reads back exactly
    compliance = admin.as_user("officer-1", "compliance")
    for record_id, rec in written.items():
        got = compliance.ok("GET", f"/prescription/{record_id}")
        assert {k: got[k] for k in ("patient_id", "patient_name", "patient_dob", "diagnosis")} == \
               {k: rec[k] for k in ("patient_id", "patient_name", "patient_dob", "diagnosis")}
    # and the change log, which devices pull from, decodes under the new keys
    entity = state.model.entity("prescription")
    with state.engine.connect() as conn:
        for (row,) in conn.execute(sa.text(f"select row from {CHANGES_TABLE} where entity = 'prescription'")):
            decoded = decode_row(entity, json.loads(row), state.crypto)
            assert decoded["diagnosis"] == written[decoded["id"]]["diagnosis"]
    # search still finds by the rotated blind index and the re-encrypted deterministic field
    assert len(compliance.ok("GET", "/prescription?patient_name=patient%200")["items"]) == 1
    assert compliance.ok("GET", f"/prescription?patient_id={patients[1]}")["items"]


def test_a_pass_started_within_the_grace_keeps_the_retired_keys(db_url, example_model, tmp_path, api_for):
    Api = api_for
    app = create_app({"DATABASE_URL": db_url, "SECRET_KEY": SECRET, "DATA_DIR": str(tmp_path),
                      "KEY_CACHE_SECONDS": 0, "KEY_RETIRE_GRACE_SECONDS": 3600}, model=example_model)
    try:
        state = app.extensions["fieldsync"]
        admin = Api(app)
        rep = admin.as_user("rep-1", "field_rep", territory_ids=[NORTH])
        rec = rep.ok("POST", "/prescription", _body(_world(admin), 1, str(uuid.uuid4())))
        rotate(state.crypto, state.model)
        report = reencrypt(state.store, state.crypto)
        assert report.rows >= 1 and not report.destroyed and report.still_retired
        # nothing refers to the retired keys any more, yet they are kept: a server may still
        # hold one in its cache for a write in flight
        retired = {k["kid"] for k in state.crypto.keyring.describe() if k["state"] == "retired"}
        assert retired and not _kids_in_use(state.engine) & retired
        assert admin.as_user("o", "compliance").ok("GET", f"/prescription/{rec['id']}")["diagnosis"] == rec["diagnosis"]
    finally:
        app.extensions["fieldsync"].engine.dispose()


def test_keys_cli_lists_rotates_and_shreds_with_audit(tmp_path, example_model, capsys, api_for):
    Api = api_for
    from fieldsync.cli import main
    from fieldsync.audit.trail import AuditLog
    data = tmp_path / "var"
    url = f"sqlite:///{tmp_path / 'server.db'}"
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": SECRET, "DATA_DIR": str(data)}, model=example_model)
    admin = Api(app)
    rep = admin.as_user("rep-1", "field_rep", territory_ids=[NORTH])
    world = _world(admin)
    patient = str(uuid.uuid4())
    rec = rep.ok("POST", "/prescription", _body(world, 1, patient))
    app.extensions["fieldsync"].engine.dispose()
    common = ["--database-url", url, "--data-dir", str(data)]
    assert main(["keys", "list", *common]) == 0
    listed = capsys.readouterr().out
    assert "entity:prescription" in listed and "active" in listed and "subject:prescription:sr_" in listed
    assert patient not in listed
    assert main(["keys", "rotate", "--entity", "prescription", *common]) == 0
    assert "key(s) rotated for prescription" in capsys.readouterr().out
    assert main(["keys", "shred", "--subject", patient, *common]) == 2      # without --yes: refused
    assert main(["keys", "shred", "--subject", patient, "--reason", "erasure request 17", "--yes", *common]) == 0
    assert "destroyed" in capsys.readouterr().out
    app = create_app({"DATABASE_URL": url, "SECRET_KEY": SECRET, "DATA_DIR": str(data)}, model=example_model)
    try:
        got = Api(app, "o", "compliance").ok("GET", f"/prescription/{rec['id']}")
        assert got["diagnosis"] is None and got["dosage"] is None and got["prescribed_at"] == rec["prescribed_at"]
        state = app.extensions["fieldsync"]
        entries = list(AuditLog.from_config(state.config, state.engine).entries())
        key_events = [e for e in entries if e.action == "key"]
        assert {e.detail.get("event") for e in key_events} >= {"rotate", "reencrypt", "shred-subject"}
        shred = next(e for e in key_events if e.detail.get("event") == "shred-subject")
        assert shred.subjects == (state.crypto.subject_ref(patient),)
        assert patient not in json.dumps([e.detail for e in entries], default=str)
    finally:
        app.extensions["fieldsync"].engine.dispose()


# -- the codec, property-based ----------------------------------------------------------------

@pytest.fixture(scope="module")
def crypto(tmp_path_factory, example_model):
    directory = tmp_path_factory.mktemp("codec")
    engine = make_engine(f"sqlite:///{directory / 'keys.db'}")
    create_key_tables(engine)
    keyring = KeyRing(engine, LocalKeyProvider(directory / "keys"))
    prepare_keys(keyring, example_model)
    return FieldCrypto(keyring)


_values = st.one_of(st.text(max_size=60), st.integers(-2**53, 2**53), st.booleans(),
                    st.dates().map(dt.date.isoformat),
                    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=_values, other=_values, record=st.uuids(), mode=st.sampled_from(["encrypt", "blind_index", "deterministic"]))
def test_every_mode_round_trips_and_binds_what_it_should(crypto, example_model, value, other, record, mode):
    import dataclasses
    entity = example_model.entity("prescription")
    field = dataclasses.replace(entity.field("diagnosis"), encryption=mode)
    record_id = str(record)
    subject = "0190a0b0-0000-7000-8000-00000000000a"
    crypto.ensure_subjects(entity, [subject])
    stored = crypto.encode(entity, field, value, record_id, subject)
    assert crypto.decode(entity, field, stored, record_id) == value
    assert ciphertext_key_id(stored)
    again = crypto.encode(entity, field, value, record_id, subject)
    if mode == "deterministic":
        assert again == stored and crypto.decode(entity, field, stored, str(uuid.uuid4())) == value
        assert stored in crypto.lookup_values(entity, field, value)
        if other != value:
            assert crypto.encode(entity, field, other) != stored
    else:
        assert again != stored                                     # a fresh nonce each time
        with pytest.raises(IntegrityFailure):                      # bound to its record
            crypto.decode(entity, field, stored, str(uuid.uuid4()))
        moved = dataclasses.replace(entity.field("patient_dob"), encryption=mode)
        with pytest.raises(IntegrityFailure):                      # and to its field
            crypto.decode(entity, moved, stored, record_id)


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=st.binary(max_size=300))
def test_the_precomputed_hmac_is_rfc_2104_hmac_sha256(crypto, message):
    import hmac
    raw = crypto.keyring.hmac_key("subject-ref")
    assert crypto.keyring.mac("subject-ref", message) == hmac.digest(raw, message, "sha256")


def test_concurrent_first_writes_for_new_patients_make_one_key_each(db_url, tmp_path):
    """Two servers meeting the same new patients at once: both go on, and each patient ends
    with exactly one active key (the loser of an insert race takes the winner's key)."""
    engine = make_engine(db_url)
    create_key_tables(engine)
    provider = LocalKeyProvider(tmp_path / "keys")
    rings = [KeyRing(engine, provider, cache_seconds=0) for _ in range(2)]
    scopes = [f"subject:prescription:sr_{i:032x}" for i in range(40)]
    barrier = threading.Barrier(2)
    errors: list = []

    def run(ring):
        try:
            barrier.wait()
            ring.ensure_many(scopes)
            for scope in scopes:
                ring.active(scope)
        except Exception as exc:   # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(ring,)) for ring in rings]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with engine.connect() as conn:
        counts = dict(conn.execute(sa.text(
            "select scope, count(*) from fs_data_keys where state = 'active' group by scope")).all())
    assert counts == {scope: 1 for scope in scopes}
    assert rings[0].active(scopes[0])[0] == rings[1].active(scopes[0])[0]
    engine.dispose()


def test_shredding_a_patient_under_live_traffic_loses_only_that_patient(fast_app, api_for):
    """A writer keeps creating prescriptions for two patients while one is shredded: the other
    patient's values all read back exactly; the shredded patient's read as null when written
    under the destroyed key and exactly when written after it (a new key); nothing fails."""
    from fieldsync.crypto.rotation import shred_subject
    Api = api_for
    state = fast_app.extensions["fieldsync"]
    admin = Api(fast_app)
    world = _world(admin)
    gone, kept = str(uuid.uuid4()), str(uuid.uuid4())

    def write(client, n):
        return client.ok("POST", "/prescription", _body(world, n, gone if n % 2 else kept))

    with LiveWriter(fast_app, Api, write) as writer:
        writer.wait_more(6)
        shred_subject(state.store, state.crypto, gone)
        writer.wait_more(6)
    assert not writer.failures, writer.failures
    written = writer.results
    officer = admin.as_user("officer-1", "compliance")
    shredded = readable_again = 0
    for rec in written:
        got = officer.ok("GET", f"/prescription/{rec['id']}")
        assert got["patient_id"] == rec["patient_id"] and got["dosage"] == rec.get("dosage")
        if rec["patient_id"] == kept:
            assert (got["diagnosis"], got["patient_name"]) == (rec["diagnosis"], rec["patient_name"])
        elif got["diagnosis"] is None:
            assert got["patient_name"] is None and got["patient_dob"] is None
            shredded += 1
        else:
            assert (got["diagnosis"], got["patient_name"]) == (rec["diagnosis"], rec["patient_name"])
            readable_again += 1
    assert shredded >= 3 and readable_again >= 1


def test_key_maintenance_finishes_a_rotation_and_audits_it(fast_app, api_for):
    from fieldsync.audit.events import audit_pass
    from fieldsync.crypto.rotation import KeyMaintenance
    state = fast_app.extensions["fieldsync"]
    admin = api_for(fast_app)
    rec = admin.as_user("rep-1", "field_rep", territory_ids=[NORTH]).ok(
        "POST", "/prescription", _body(_world(admin), 1, str(uuid.uuid4())))
    maintenance = KeyMaintenance(lambda: state.store, state.crypto,
                                 on_pass=lambda report: audit_pass(state.audit, report))
    assert maintenance.run_once() is None                      # nothing retired: no pass
    rotate(state.crypto, state.model, "prescription")
    report = maintenance.run_once()
    assert report.rows == 1 and report.destroyed and not report.still_retired
    assert not [k for k in state.crypto.keyring.describe() if k["state"] == "retired"]
    got = admin.as_user("o", "compliance").ok("GET", f"/prescription/{rec['id']}")
    assert got["diagnosis"] == rec["diagnosis"]
    events = [e for e in state.audit.entries() if e.action == "key" and e.detail.get("event") == "reencrypt"]
    assert events and events[-1].detail["destroyed"] == report.destroyed[:50]


def test_keys_cli_refuses_bad_input_clearly(tmp_path, example_model, capsys):
    from fieldsync.cli import main
    data = tmp_path / "var"
    common = ["--data-dir", str(data)]
    assert main(["keys", "list", *common]) == 1                       # no database yet: nothing created
    assert "no server database in" in capsys.readouterr().err and not data.exists()
    create_app({"DATA_DIR": str(data), "SECRET_KEY": SECRET}, model=example_model).extensions["fieldsync"].engine.dispose()
    assert main(["keys", "rotate", "--entity", "nosuch", *common]) == 1
    assert "no entity 'nosuch'" in capsys.readouterr().err
    assert main(["keys", "shred", "--entity", "territory", "--yes", *common]) == 1
    assert "has no encrypted field" in capsys.readouterr().err
    assert main(["keys", "shred", "--subject", "x", *common]) == 2     # no --yes
    assert "--yes" in capsys.readouterr().err
