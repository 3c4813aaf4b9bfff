"""The anchor kept outside the database follows the trail's checkpoints: written once the
transaction that signed a checkpoint commits, never for one rolled back; the S3 store (moto in
server mode, real HTTP) holds a copy the database's administrators cannot reach, and an
unreachable store stops the server instead of letting it run unanchored."""

from __future__ import annotations

import json
import uuid

import pytest

from audit_support import drop_trail, run_server_once, sample_event, start
from moto_server import REGION, aws_credentials, moto_endpoint  # noqa: F401  (fixtures)
from fieldsync.errors import AnchorUnavailable, Error
from fieldsync.audit.anchor import Anchor, DirectoryAnchorStore, S3AnchorStore
from fieldsync.store.engine import write_transaction


def anchored(store) -> Anchor:
    return Anchor.parse(store.read())


def test_the_anchor_moves_when_a_checkpoint_commits_and_not_when_it_rolls_back(make_log, tmp_path):
    store = DirectoryAnchorStore(tmp_path / "anchor")
    log = make_log(checkpoint_every=5, anchors=[store])
    assert anchored(store).seq == 0                     # prepare: the empty log exists
    with write_transaction(log.engine) as conn:          # a caller's transaction (a push batch)
        log.append_all(conn, [sample_event(i) for i in range(6)])
        assert anchored(store).seq == 0                  # signed at 5, not committed yet
    first = anchored(store)
    assert first.seq == 5
    with pytest.raises(RuntimeError):
        with write_transaction(log.engine) as conn:
            log.append_all(conn, [sample_event(i) for i in range(6)])   # would sign at 10
            raise RuntimeError("the caller's write failed")
    assert anchored(store) == first                      # a rolled-back checkpoint is never anchored
    log.record_all([sample_event(i) for i in range(4)])  # 7 .. 10: signed again at 10, committed
    assert anchored(store).seq == 10
    assert log.verify().ok


def test_an_older_checkpoint_never_replaces_a_later_anchor(make_log, tmp_path):
    store = DirectoryAnchorStore(tmp_path / "anchor")
    log = make_log(checkpoint_every=0, anchors=[store])
    log.record_all([sample_event(i) for i in range(3)])
    early = log.checkpoint()
    log.record_all([sample_event(i) for i in range(3)])
    late = log.checkpoint()
    assert anchored(store).seq == late.seq == 6
    log._write_anchor(early)                             # a slow writer overtaken
    assert anchored(store).seq == 6


# -- S3 ------------------------------------------------------------------------------------------

@pytest.fixture
def s3(aws_credentials, moto_endpoint):
    import boto3
    client = boto3.session.Session(region_name=REGION).client("s3", endpoint_url=moto_endpoint)
    return client


@pytest.fixture
def bucket(s3) -> str:
    name = f"anchors-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
    return name


def test_the_s3_store_reads_what_it_wrote(s3, bucket, moto_endpoint):
    store = S3AnchorStore.from_url(f"s3://{bucket}/audit/anchor.json", endpoint_url=moto_endpoint)
    assert store.location == f"s3://{bucket}/audit/anchor.json"
    assert store.read() is None
    store.write('{"statement": "x", "signature": "y"}')
    assert json.loads(store.read()) == {"statement": "x", "signature": "y"}
    body = s3.get_object(Bucket=bucket, Key="audit/anchor.json")["Body"].read()   # the tests' own view
    assert json.loads(body)["signature"] == "y"


def test_a_wipe_of_the_database_and_the_local_anchor_is_caught_by_the_s3_copy(db_url, tmp_path, example_model,
                                                                              bucket, moto_endpoint, s3):
    data = tmp_path / "data"
    config = {"AUDIT_ANCHOR_S3": f"s3://{bucket}", "AUDIT_ANCHOR_S3_ENDPOINT_URL": moto_endpoint}
    log_id = run_server_once(db_url, data, example_model, **config)
    held = Anchor.parse(s3.get_object(Bucket=bucket, Key="fieldsync/audit-anchor.json")["Body"].read().decode())
    assert held.log_id == log_id
    drop_trail(db_url, keys_too=True)
    (data / "keys" / "audit-anchor.json").unlink()
    with pytest.raises(Error) as refused:
        start(db_url, data, example_model, **config)
    assert log_id in str(refused.value) and f"s3://{bucket}/fieldsync/audit-anchor.json" in str(refused.value)


def test_an_unreachable_anchor_store_stops_the_server(db_url, tmp_path, example_model, moto_endpoint,
                                                      aws_credentials):
    config = {"AUDIT_ANCHOR_S3": f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}",
              "AUDIT_ANCHOR_S3_ENDPOINT_URL": moto_endpoint}
    with pytest.raises(AnchorUnavailable, match="NoSuchBucket"):
        start(db_url, tmp_path / "data", example_model, **config)
