"""The S3 media store against moto over real HTTP: uploads are POSTed straight to the object
store with the presigned form (S3 refuses too large a file or another type), completion HEADs
the object, downloads are presigned GETs, PHI objects are SSE-KMS; the app sees no media bytes."""

from __future__ import annotations

import uuid

import boto3
import pytest
import requests

from moto_server import REGION

from media_support import JPEG, Caller, expense, make_app, new_ref, push, register


class BodyCounter:
    """WSGI middleware: bytes of request bodies the app received, by path prefix."""

    def __init__(self, app):
        self.app = app
        self.bytes: dict[str, int] = {}

    def __call__(self, environ, start_response):
        prefix = "/".join(environ.get("PATH_INFO", "").split("/")[:4])
        self.bytes[prefix] = self.bytes.get(prefix, 0) + int(environ.get("CONTENT_LENGTH") or 0)
        return self.app(environ, start_response)


@pytest.fixture
def s3_app(tmp_path, media_model, aws_credentials, moto_endpoint):
    bucket = f"media-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name=REGION)
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION})
    key_id = boto3.client("kms", endpoint_url=moto_endpoint, region_name=REGION).create_key()["KeyMetadata"]["KeyId"]
    app = make_app(tmp_path, media_model, MEDIA_STORE=f"s3://{bucket}/media", MEDIA_S3_ENDPOINT_URL=moto_endpoint,
                   MEDIA_KMS_KEY_ID=key_id)
    counter = BodyCounter(app.wsgi_app)
    app.wsgi_app = counter
    app.s3, app.bucket, app.kms_key, app.counter = s3, bucket, key_id, counter
    yield app
    app.extensions["fieldsync"].engine.dispose()


def _post(target: dict, data: bytes, content_type: str, **override):
    fields = dict(target["fields"], **override)
    return requests.post(target["url"], data=fields, files={"file": ("upload", data, content_type)}, timeout=10)


def test_presigned_post_straight_to_s3_then_complete_and_presigned_get(s3_app):
    asha = Caller(s3_app, "rep-asha", "field_rep", territory_ids=[])
    device = register(asha)
    ref = new_ref()
    assert push(s3_app, asha, device, [{"entity": "expense", "op": "insert", "id": str(uuid.uuid4()),
                                        "fields": expense(ref)}])[0]["status"] == "applied"
    r = asha.call("POST", f"/media/{ref}/upload", {"content_type": "image/jpeg", "size": len(JPEG)})
    target = r.get_json()["upload"]
    assert target["method"] == "s3-post" and target["url"].startswith("http://127.0.0.1")
    key = target["fields"]["key"]
    assert key == f"media/rep-asha/{device}/expense/{ref.split(':')[1]}"
    assert asha.call("POST", f"/media/{ref}/complete").status_code == 409     # nothing uploaded yet
    # S3 refuses another type than the declared one, and extra fields
    assert _post(target, JPEG, "image/jpeg", **{"Content-Type": "text/html"}).status_code == 403
    assert _post(target, JPEG, "image/jpeg", **{"x-amz-meta-x": "1"}).status_code == 403
    posted = _post(target, JPEG, "image/jpeg")
    assert posted.status_code == 204, posted.content
    done = asha.call("POST", f"/media/{ref}/complete").get_json()
    assert (done["state"], done["size"]) == ("available", len(JPEG))
    url = asha.call("GET", f"/media/{ref}").get_json()["url"]
    got = requests.get(url, timeout=10)
    assert got.status_code == 200 and got.content == JPEG
    # the app never saw the bytes: no tus traffic, and the media calls carried small JSON only
    assert s3_app.counter.bytes.get("/api/v1/transfer", 0) == 0
    assert s3_app.counter.bytes.get("/api/v1/media", 0) < 1024


def test_s3_refuses_a_file_over_max_bytes_and_phi_objects_are_sse_kms(s3_app):
    admin = Caller(s3_app, "admin-1", "admin")
    north = admin.call("POST", "/territory", {"code": "N-1", "name": "North", "region": "north"}).get_json()
    shop = admin.call("POST", "/retailer", {"name": "Shop N", "territory_id": north["id"]}).get_json()
    pill = admin.call("POST", "/product", {"sku": "PILL", "name": "Pill", "category": "pharma",
                                           "unit_price": "2.50"}).get_json()
    asha = Caller(s3_app, "rep-asha", "field_rep", territory_ids=[north["id"]])
    device = register(asha)
    ref = new_ref()
    results = push(s3_app, asha, device, [{"entity": "prescription", "op": "insert", "id": str(uuid.uuid4()), "fields": {
        "retailer_id": shop["id"], "territory_id": north["id"], "patient_id": str(uuid.uuid4()),
        "patient_name": "A Patient", "patient_dob": "1970-01-01", "diagnosis": "flu", "product_id": pill["id"],
        "prescribed_at": "2026-11-20T09:00:00Z", "rx_image": ref}}])
    assert results[0]["status"] == "applied", results
    target = asha.call("POST", f"/media/{ref}/upload", {"content_type": "image/jpeg"}).get_json()["upload"]
    assert target["fields"]["x-amz-server-side-encryption"] == "aws:kms"
    assert target["fields"]["x-amz-server-side-encryption-aws-kms-key-id"] == s3_app.kms_key
    too_big = _post(target, JPEG + b"\0" * 200_000, "image/jpeg")     # rx_image: max_bytes 200000
    assert too_big.status_code == 400 and b"EntityTooLarge" in too_big.content
    # without the encryption field the policy refuses the form
    plain = {k: v for k, v in target["fields"].items() if not k.startswith("x-amz-server-side")}
    assert requests.post(target["url"], data=plain, files={"file": ("u", JPEG, "image/jpeg")},
                         timeout=10).status_code == 403
    assert _post(target, JPEG, "image/jpeg").status_code == 204
    assert asha.call("POST", f"/media/{ref}/complete").get_json()["state"] == "available"
    head = s3_app.s3.head_object(Bucket=s3_app.bucket, Key=target["fields"]["key"])
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(s3_app.kms_key)
    assert Caller(s3_app, "sup-1", "supervisor").call("GET", f"/media/{ref}").status_code == 404
    assert requests.get(asha.call("GET", f"/media/{ref}").get_json()["url"], timeout=10).content == JPEG
