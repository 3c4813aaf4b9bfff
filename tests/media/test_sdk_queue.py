"""The SDK's media queue end to end: an expense photo taken offline reaches the media store
(local, and S3 through moto) after its record, resumes after a cut, is retried with backoff,
never fails the record sync, and shows in status()."""

from __future__ import annotations

import datetime as dt
import random

import boto3
import pytest

from fieldsync.client import Client, TransportError, WsgiTransport
from fieldsync.client.media import MEDIA_PREFIX
from fieldsync.codegen.device_schema import device_schema, device_schema_json
from fieldsync.auth import issue_token

from moto_server import REGION

from media_support import JPEG, SECRET, make_app

TRANSFER = "/api/v1/transfer"


class Network:
    """A transport that can be cut (every request fails like a dropped connection), counting
    the request bytes sent to each path prefix."""

    def __init__(self, app):
        self.inner = WsgiTransport(app)
        self.online = True
        self.cut_after_transfer_patches: int | None = None
        self.sent: dict[str, int] = {}

    def use_encodings(self, encodings):
        self.inner.use_encodings(encodings)

    def request(self, method, path, *, headers, body):
        if not self.online:
            raise TransportError("no network")
        prefix = "/".join(path.split("?")[0].split("/")[:4])
        if method == "PATCH" and prefix == TRANSFER and self.cut_after_transfer_patches is not None:
            if self.cut_after_transfer_patches == 0:
                self.online = False
                raise TransportError("the connection dropped")
            self.cut_after_transfer_patches -= 1
        self.sent[prefix] = self.sent.get(prefix, 0) + len(body or b"")
        return self.inner.request(method, path, headers=headers, body=body)


class Clock:
    def __init__(self):
        self.now = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.timezone.utc)

    def __call__(self):
        return self.now


def _client(tmp_path, app, network, model, clock=None, **kw):
    token = issue_token(SECRET, "rep-asha", "field_rep", {"territory_ids": []}, ttl=3600)
    client = Client(tmp_path / "device.db", network, token, rng=random.Random(1), clock=clock or Clock(),
                    schema=device_schema_json(device_schema(model), "tests/media"), **kw)
    client._media.sleep = lambda seconds: None   # the tus client's short retries, without waiting
    return client


def _expense(ref):
    return {"spent_on": "2026-11-20", "category": "travel", "amount": "12.00", "receipt": ref}


def test_expense_photo_taken_offline_reaches_the_local_store_after_its_record(tmp_path, media_model):
    app = make_app(tmp_path, media_model)
    network = Network(app)
    clock = Clock()
    client = _client(tmp_path, app, network, media_model, clock)
    try:
        network.online = False
        photo = tmp_path / "receipt.jpg"
        photo.write_bytes(JPEG * 30)           # ~300 KB: several tus chunks
        ref = client.attach_media("expense", "receipt", photo, "image/jpeg")
        record_id = client.insert("expense", _expense(ref))
        status = client.status()
        assert (status.pending, status.media_pending) == (1, 1)
        with pytest.raises(TransportError):
            client.sync()
        assert client.status().media_pending == 1
        # the network comes back, and drops in the middle of the upload
        network.online = True
        network.cut_after_transfer_patches = 1
        client._media.chunk_size = 64 * 1024
        report = client.sync()
        assert report.pushed == 1 and report.media_uploaded == 0
        item = client.media()[0]
        assert (item["state"], item["attempts"]) == ("pending", 1) and item["next_attempt_at"] is not None
        # not due yet: the next pass leaves it; once due, it resumes where the server stopped
        network.online, network.cut_after_transfer_patches = True, None
        assert client.sync_media().uploaded == 0
        clock.now += dt.timedelta(hours=2)
        sent_before = network.sent.get(TRANSFER, 0)
        assert client.sync_media().uploaded == 1, [(m["error"], m["state"]) for m in client.media()]
        resent = network.sent[TRANSFER] - sent_before
        assert resent <= len(JPEG * 30) - 64 * 1024 + 4096   # the chunk that landed is not sent again
        app.extensions["fieldsync"].sync.drain()
        client.sync()
        status = client.status()
        assert (status.media_pending, status.media_failed, status.fully_synced) == (0, 0, True)
        service = app.extensions["fieldsync"].media
        row = service.row(ref)
        assert (row["state"], row["record_id"], row["size"]) == ("available", record_id, len(JPEG * 30))
        stored = service.store.path_of(row["location"]).read_bytes()
        assert stored == JPEG * 30
    finally:
        client.close()
        app.extensions["fieldsync"].engine.dispose()


def test_a_refused_file_fails_alone_and_record_sync_completes(tmp_path, media_model):
    app = make_app(tmp_path, media_model)
    network = Network(app)
    client = _client(tmp_path, app, network, media_model)
    try:
        html = client.attach_media("expense", "receipt", b"<html>not a receipt</html>", "text/html")
        fake = client.attach_media("expense", "receipt", b"<html>declared as jpeg", "image/jpeg")
        good = client.attach_media("expense", "receipt", JPEG, "image/jpeg")
        for ref in (html, fake, good):
            client.insert("expense", _expense(ref))
        report = client.sync()
        assert report.pushed == 3 and (report.media_uploaded, report.media_failed) == (1, 2)
        failed = {m["ref"]: m for m in client.media() if m["state"] == "failed"}
        assert set(failed) == {html, fake} and all(m["error"] for m in failed.values())
        app.extensions["fieldsync"].sync.drain()
        report = client.sync()
        assert report.complete and client.status().fully_synced
        assert (client.status().media_failed, client.status().media_pending) == (2, 0)
        with pytest.raises(Exception):
            client.attach_media("expense", "amount", JPEG, "image/jpeg")   # not a media field
    finally:
        client.close()
        app.extensions["fieldsync"].engine.dispose()


def test_with_the_s3_store_the_photo_goes_to_s3_not_through_the_app(tmp_path, media_model, aws_credentials,
                                                                    moto_endpoint):
    bucket = "media-sdk"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    try:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    app = make_app(tmp_path, media_model, MEDIA_STORE=f"s3://{bucket}/{tmp_path.name}",
                   MEDIA_S3_ENDPOINT_URL=moto_endpoint)
    network = Network(app)
    client = _client(tmp_path, app, network, media_model)
    try:
        network.online = False
        ref = client.attach_media("expense", "receipt", JPEG, "image/jpeg")
        record_id = client.insert("expense", _expense(ref))
        network.online = True
        report = client.sync()
        assert report.media_uploaded == 1, client.media()
        app.extensions["fieldsync"].sync.drain()
        client.sync()
        row = app.extensions["fieldsync"].media.row(ref)
        assert (row["state"], row["record_id"]) == ("available", record_id)
        assert s3.get_object(Bucket=bucket, Key=row["location"])["Body"].read() == JPEG
        assert network.sent.get(TRANSFER, 0) == 0                 # no byte of the photo through the app
        assert network.sent.get(MEDIA_PREFIX, 0) < 1024
    finally:
        client.close()
        app.extensions["fieldsync"].engine.dispose()
