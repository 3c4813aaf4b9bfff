"""The embedded media store: upload over tus, checks against the field's limits, signed and
expiring download links, PHI sealed at rest, and links only for readers of the record."""

from __future__ import annotations

import base64
import time
import uuid
from urllib.parse import urlsplit

import sqlalchemy as sa

from fieldsync.store.sync_tables import MEDIA

from media_support import JPEG, PNG, Caller, expense, new_ref, push, register

TUS = {"Tus-Resumable": "1.0.0"}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def tus_upload(caller: Caller, target: dict, data: bytes, *, cut: int | None = None):
    """Create the upload and send `data` in one PATCH (or two, cut after `cut` bytes); the last
    PATCH's response."""
    meta = ",".join(f"{k} {_b64(v)}" for k, v in target["metadata"].items())
    r = caller.client.post(target["url"], headers={**caller.headers, **TUS, "Upload-Length": str(len(data)),
                                                   "Upload-Metadata": meta})
    assert r.status_code == 201, r.get_json()
    location = r.headers["Location"]
    offset = 0
    for part in ([data[:cut], data[cut:]] if cut else [data]):
        r = caller.client.patch(location, data=part, headers={
            **caller.headers, **TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"})
        offset += len(part)
    return r


def _upload_receipt(app, caller, device, data=JPEG, content_type="image/jpeg"):
    ref = new_ref()
    results = push(app, caller, device, [{"entity": "expense", "op": "insert", "id": str(uuid.uuid4()),
                                          "fields": expense(ref)}])
    assert results[0]["status"] == "applied", results
    r = caller.call("POST", f"/media/{ref}/upload", {"content_type": content_type, "size": len(data)})
    assert r.status_code == 200, r.get_json()
    return ref, results[0]["id"], tus_upload(caller, r.get_json()["upload"], data, cut=len(data) // 2)


def _fetch(caller: Caller, url: str):
    parts = urlsplit(url)
    return caller.client.get(parts.path + "?" + parts.query)


def test_upload_by_tus_then_download_by_signed_link(app):
    asha = Caller(app, "rep-asha", "field_rep", territory_ids=[])
    device = register(asha)
    ref, record_id, last = _upload_receipt(app, asha, device)
    assert last.status_code == 204, last.get_json()
    info = asha.call("GET", f"/media/{ref}").get_json()
    assert (info["state"], info["size"], info["content_type"]) == ("available", len(JPEG), "image/jpeg")
    got = _fetch(asha, info["url"])
    assert got.status_code == 200 and got.data == JPEG
    assert got.headers["Content-Type"] == "image/jpeg"
    assert got.headers["Content-Disposition"] == "attachment"
    assert got.headers["X-Content-Type-Options"] == "nosniff"
    # the link is the credential: a stranger without a token gets the bytes, but not with a
    # forged signature, another reference, or after expiry
    anonymous = app.test_client()
    assert _fetch(Caller(app, "x", "analyst"), info["url"]).data == JPEG
    path = urlsplit(info["url"]).path
    exp = urlsplit(info["url"]).query.split("&")[0]
    assert anonymous.get(f"{path}?{exp}&sig={'0' * 64}").status_code == 403
    assert anonymous.get(info["url"].replace(ref, new_ref())).status_code == 403
    store = app.extensions["fieldsync"].media.store
    old_exp, old_sig = store.signed_query(ref, int(time.time()) - 10 * store.url_ttl)
    r = anonymous.get(f"{path}?exp={old_exp}&sig={old_sig}")
    assert r.status_code == 403 and "expired" in r.get_json()["detail"]


def test_links_only_for_readers_of_the_record(app):
    asha = Caller(app, "rep-asha", "field_rep", territory_ids=[])
    device = register(asha)
    ref, record_id, _ = _upload_receipt(app, asha, device)
    ravi = Caller(app, "rep-ravi", "field_rep", territory_ids=[])     # row filter: his own expenses
    boss = Caller(app, "sup-1", "supervisor", territory_ids=[])
    assert ravi.call("GET", f"/media/{ref}").status_code == 404
    assert "url" in boss.call("GET", f"/media/{ref}").get_json()
    # the record no longer holds it: nobody gets a link
    push(app, asha, device, [{"entity": "expense", "op": "update", "id": record_id, "base_version": 1,
                              "fields": {"receipt": None}}], seq0=2)
    assert asha.call("GET", f"/media/{ref}").status_code == 404


def test_size_and_type_are_checked_when_the_upload_completes(app):
    asha = Caller(app, "rep-asha", "field_rep", territory_ids=[])
    device = register(asha)
    # a PNG declared as a JPEG: the first bytes disagree
    ref, _, last = _upload_receipt(app, asha, device, data=PNG, content_type="image/jpeg")
    assert last.status_code == 415, last.get_json()
    with app.extensions["fieldsync"].engine.connect() as conn:
        row = conn.execute(sa.select(MEDIA).where(MEDIA.c.ref == ref)).mappings().one()
    assert row["state"] == "failed" and row["location"] is None
    # a type the field does not take is refused when the upload is asked for
    ref = new_ref()
    push(app, asha, device, [{"entity": "expense", "op": "insert", "id": str(uuid.uuid4()), "fields": expense(ref)}],
         seq0=2)
    r = asha.call("POST", f"/media/{ref}/upload", {"content_type": "text/html"})
    assert r.status_code == 415
    r = asha.call("POST", f"/media/{ref}/upload", {"content_type": "image/jpeg", "size": 10 * 1024 * 1024 + 1})
    assert r.status_code == 413


def test_phi_media_is_sealed_at_rest_and_audited(app, tmp_path):
    admin = Caller(app, "admin-1", "admin")
    north = admin.call("POST", "/territory", {"code": "N-1", "name": "North", "region": "north"}).get_json()
    shop = admin.call("POST", "/retailer", {"name": "Shop N", "territory_id": north["id"]}).get_json()
    pill = admin.call("POST", "/product", {"sku": "PILL", "name": "Pill", "category": "pharma",
                                           "unit_price": "2.50"}).get_json()
    asha = Caller(app, "rep-asha", "field_rep", territory_ids=[north["id"]])
    device = register(asha)
    ref = new_ref()
    image = JPEG + b"PATIENT-SECRET-MARKER" * 5000   # several chunks of 64 KiB
    results = push(app, asha, device, [{"entity": "prescription", "op": "insert", "id": str(uuid.uuid4()), "fields": {
        "retailer_id": shop["id"], "territory_id": north["id"], "patient_id": str(uuid.uuid4()),
        "patient_name": "A Patient", "patient_dob": "1970-01-01", "diagnosis": "flu", "product_id": pill["id"],
        "prescribed_at": "2026-11-20T09:00:00Z", "rx_image": ref}}])
    assert results[0]["status"] == "applied", results
    target = asha.call("POST", f"/media/{ref}/upload", {"content_type": "image/jpeg"}).get_json()["upload"]
    assert tus_upload(asha, target, image, cut=70000).status_code == 204
    stored = list((tmp_path / "media").rglob("*"))
    files = [p for p in stored if p.is_file()]
    assert len(files) == 1
    sealed = files[0].read_bytes()
    assert b"PATIENT-SECRET-MARKER" not in sealed and JPEG[:64] not in sealed
    info = asha.call("GET", f"/media/{ref}").get_json()
    assert _fetch(asha, info["url"]).data == image
    # a supervisor sees prescriptions with PHI masked: no link
    assert Caller(app, "sup-1", "supervisor").call("GET", f"/media/{ref}").status_code == 404
    reads = [e for e in app.extensions["fieldsync"].audit.entries()
             if e.action == "read" and e.entity == "prescription" and e.detail.get("media") == ref]
    assert len(reads) == 1 and reads[0].fields == ("rx_image",) and reads[0].actor == "rep-asha"
    # a flipped byte in the sealed file is refused, never served as content
    flipped = bytearray(sealed)
    flipped[-100] ^= 1
    files[0].write_bytes(bytes(flipped))
    try:
        body = _fetch(asha, asha.call("GET", f"/media/{ref}").get_json()["url"]).data
    except Exception:   # the stream fails while being sent
        body = b""
    assert body != image
    # damage in the first chunk: refused before any byte goes out
    flipped = bytearray(sealed)
    flipped[60] ^= 1
    files[0].write_bytes(bytes(flipped))
    r = _fetch(asha, asha.call("GET", f"/media/{ref}").get_json()["url"])
    assert r.status_code == 500 and r.get_json()["type"].endswith("/integrity-failure")
