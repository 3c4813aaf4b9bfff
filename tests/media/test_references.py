"""Media references in pushes: only platform references, first binding wins, and a refused
reference rejects its own mutation with the field and reason while the batch applies."""

from __future__ import annotations

import uuid

import sqlalchemy as sa

from fieldsync.store.sync_tables import MEDIA

from media_support import Caller, expense, new_ref, push, register


def _insert(receipt, **kw):
    return {"entity": "expense", "op": "insert", "id": str(uuid.uuid4()), "fields": expense(receipt), **kw}


def test_foreign_urls_and_scripts_are_refused_naming_the_field_and_the_rest_applies(app):
    asha = Caller(app, "rep-asha", "field_rep", territory_ids=[])
    device = register(asha)
    good = new_ref()
    results = push(app, asha, device, [
        _insert("javascript:alert(1)"), _insert("https://evil.example/x.jpg"), _insert("receipts/r-1.jpg"),
        _insert(good), _insert(None)])
    assert [r["status"] for r in results] == ["rejected", "rejected", "rejected", "applied", "applied"]
    for r in results[:3]:
        assert [e["field"] for e in r["errors"]] == ["receipt"], r
        assert "platform issued" in r["errors"][0]["reason"] or "media reference" in r["errors"][0]["reason"]
    with app.extensions["fieldsync"].engine.connect() as conn:
        row = conn.execute(sa.select(MEDIA).where(MEDIA.c.ref == good)).mappings().one()
    assert (row["user_id"], row["device_id"], row["entity"], row["field"], row["state"]) == (
        "rep-asha", device, "expense", "receipt", "pending")
    assert row["record_id"] == results[3]["id"]


def test_someone_elses_reference_is_refused_and_first_binding_wins(app):
    asha = Caller(app, "rep-asha", "field_rep", territory_ids=[])
    ravi = Caller(app, "rep-ravi", "field_rep", territory_ids=[])
    a_dev, r_dev = register(asha, "a"), register(ravi, "r")
    ref = new_ref()
    first = push(app, asha, a_dev, [_insert(ref)])
    assert first[0]["status"] == "applied"
    # another user, another record of the same user, and the same batch naming it twice
    stolen = push(app, ravi, r_dev, [_insert(ref), _insert(None)])
    assert [r["status"] for r in stolen] == ["rejected", "applied"]
    assert stolen[0]["errors"] == [{"field": "receipt",
                                    "reason": "refers to a media object issued to another user or device"}]
    moved = push(app, asha, a_dev, [_insert(ref)], seq0=2)
    assert moved[0]["errors"][0]["reason"] == "refers to a media object that belongs to another record"
    twice_ref = new_ref()
    twice = push(app, asha, a_dev, [_insert(twice_ref), _insert(twice_ref)], seq0=3)
    assert [r["status"] for r in twice] == ["applied", "rejected"]
    # the owner's own update of the record keeps its reference
    kept = push(app, asha, a_dev, [{"entity": "expense", "op": "update", "id": first[0]["id"], "base_version": 1,
                                    "fields": {"receipt": ref, "amount": "13.00"}}], seq0=5)
    assert kept[0]["status"] == "applied", kept
    with app.extensions["fieldsync"].engine.connect() as conn:
        row = conn.execute(sa.select(MEDIA).where(MEDIA.c.ref == ref)).mappings().one()
    assert (row["user_id"], row["record_id"]) == ("rep-asha", first[0]["id"])


def test_an_upload_request_before_the_push_binds_the_reference_to_its_device(app):
    asha = Caller(app, "rep-asha", "field_rep", territory_ids=[])
    ravi = Caller(app, "rep-ravi", "field_rep", territory_ids=[])
    a_dev, r_dev = register(asha, "a"), register(ravi, "r")
    ref = new_ref()
    r = asha.call("POST", f"/media/{ref}/upload", {"entity": "expense", "field": "receipt",
                                                   "content_type": "image/jpeg", "size": 10})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["upload"]["method"] == "tus"
    # Ravi cannot use it in a record nor ask for its upload
    assert push(app, ravi, r_dev, [_insert(ref)])[0]["status"] == "rejected"
    assert ravi.call("POST", f"/media/{ref}/upload", {"content_type": "image/jpeg"}).status_code == 404
    assert push(app, asha, a_dev, [_insert(ref)])[0]["status"] == "applied"


def test_hostile_references_get_4xx(app):
    asha = Caller(app, "rep-asha", "field_rep", territory_ids=[])
    for ref in ("../../etc/passwd", "fsmedia:" + "f" * 5000, "fsmedia:\u00e9\u4e2d", "%2e%2e/x", "javascript:x",
                "fsmedia:00000000-0000-0000-0000-00000000000G", new_ref()):
        for method, path, body in (("GET", f"/media/{ref}", None), ("POST", f"/media/{ref}/complete", None),
                                   ("POST", f"/media/{ref}/upload", {"content_type": "image/jpeg"}),
                                   ("GET", f"/media/blob/{ref}?exp=1&sig=00", None)):
            r = asha.call(method, path, body)
            assert 400 <= r.status_code < 500, (method, path, r.status_code)
    assert asha.client.get(f"/api/v1/media/{new_ref()}").status_code == 401


def test_rest_writes_bind_platform_references_and_keep_urls(app):
    asha = Caller(app, "rep-asha", "field_rep", territory_ids=[])
    ravi = Caller(app, "rep-ravi", "field_rep", territory_ids=[])
    ref = new_ref()
    created = asha.call("POST", "/expense", expense(ref))
    assert created.status_code == 201, created.get_json()
    with app.extensions["fieldsync"].engine.connect() as conn:
        row = conn.execute(sa.select(MEDIA).where(MEDIA.c.ref == ref)).mappings().one()
    assert (row["user_id"], row["device_id"], row["record_id"]) == ("rep-asha", None, created.get_json()["id"])
    # another user, or another record of the same user: 422 naming the field, nothing written
    for caller in (ravi, asha):
        r = caller.call("POST", "/expense", expense(ref))
        assert r.status_code == 422 and [e["field"] for e in r.get_json()["errors"]] == ["receipt"]
    # REST keeps http(s) URLs and object keys (the platform does not serve those)
    assert asha.call("POST", "/expense", expense("https://cdn.example.com/r.jpg")).status_code == 201
