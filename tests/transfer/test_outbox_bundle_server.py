"""POST /api/v1/sync/push-bundle (docs/protocol.md §4.7): a committed outbox bundle is received
like a push — the same ledger, so it applies exactly once however often it comes, and mixed
with plain pushes of the same seqs — and a bundle that is changed, moved, cut, foreign or
malformed is refused whole, with a 4xx, before any of it is received."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fieldsync.transfer.chunks import key_text, new_key

from outbox_support import (TRANSFER, commit, drain, ledger_count, push, register, reseal_manifest, seal,
                            seeded_app, upload, visit_mutations, visits_of)

PROBLEMS = "https://fieldsync.dev/problems/"


@pytest.fixture(scope="module")
def app(tmp_path_factory, example_model):
    app = seeded_app(tmp_path_factory.mktemp("outbox-bundle-server"), example_model)
    yield app
    app.extensions["fieldsync"].engine.dispose()


_users = iter(range(10 ** 6))


@pytest.fixture
def device(app):
    """A device of a user of its own: the module's server is shared, every count is per user."""
    return register(app, f"rep-bundle-{next(_users)}")


def _transfer_dir(app):
    return app.extensions["fieldsync"].transfer.root


# -- exactly once ------------------------------------------------------------------------------------

def test_a_committed_bundle_answers_like_a_push_and_applies(app, device):
    mutations = visit_mutations(1, 230)
    bundle = seal(mutations)
    upload_id = upload(app, device, bundle.data)
    answer = commit(app, device, upload_id, bundle)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["received"] == list(range(1, 231)) and body["results"] == []
    assert body["mutations"] == 230 and body["bundle_id"] == bundle.manifest["bundle_id"]
    assert not (_transfer_dir(app) / f"{upload_id}.bin").exists()   # the ciphertext is gone once durable
    drain(app)
    assert sorted(visits_of(app, device.user)) == sorted(m["id"] for m in mutations)
    assert ledger_count(app, device) == (230, 0)


def test_the_same_bundle_uploaded_and_committed_twice_applies_once(app, device):
    mutations = visit_mutations(1, 120)
    bundle = seal(mutations)
    first, second = upload(app, device, bundle.data), upload(app, device, bundle.data)
    assert commit(app, device, first, bundle).status_code == 202
    drain(app)
    again = commit(app, device, second, bundle)
    assert again.status_code == 202
    body = again.get_json()
    assert body["received"] == []
    assert [r["seq"] for r in body["results"]] == list(range(1, 121))
    assert {r["status"] for r in body["results"]} == {"duplicate"}
    drain(app)
    assert sorted(visits_of(app, device.user)) == sorted(m["id"] for m in mutations)


def test_a_second_commit_before_apply_is_deduplicated_by_the_ledger(app, device):
    mutations = visit_mutations(1, 60)
    bundle = seal(mutations)
    for upload_id in (upload(app, device, bundle.data), upload(app, device, bundle.data)):
        assert commit(app, device, upload_id, bundle).status_code == 202   # both received: neither applied yet
    drain(app)   # the queue holds the batch twice; the ledger applies it once
    assert sorted(visits_of(app, device.user)) == sorted(m["id"] for m in mutations)
    assert ledger_count(app, device) == (60, 0)


def test_an_upload_committed_already_is_gone(app, device):
    bundle = seal(visit_mutations(1, 10))
    upload_id = upload(app, device, bundle.data)
    assert commit(app, device, upload_id, bundle).status_code == 202
    again = commit(app, device, upload_id, bundle)
    assert again.status_code == 404   # the device sends the same seqs again by plain push (§4.7)


def test_mutations_pushed_plainly_first_are_applied_once(app, device):
    mutations = visit_mutations(1, 150)
    assert push(app, device, mutations[:40]).status_code == 202
    drain(app)
    assert push(app, device, mutations[40:70]).status_code == 202   # received, not yet applied
    bundle = seal(mutations)
    answer = commit(app, device, upload(app, device, bundle.data), bundle)
    assert answer.status_code == 202
    body = answer.get_json()
    assert [r["seq"] for r in body["results"]] == list(range(1, 41))   # the applied ones: duplicates
    assert body["received"] == list(range(41, 151))
    drain(app)
    assert sorted(visits_of(app, device.user)) == sorted(m["id"] for m in mutations)


def test_a_bundle_over_the_push_limit_goes_in_push_sized_batches(app, device, monkeypatch):
    monkeypatch.setitem(app.extensions["fieldsync"].config, "SYNC_MAX_MUTATIONS", 25)
    mutations = visit_mutations(1, 110)
    bundle = seal(mutations, per_frame=7)
    answer = commit(app, device, upload(app, device, bundle.data), bundle)
    assert answer.status_code == 202 and answer.get_json()["received"] == list(range(1, 111))
    drain(app)
    assert len(visits_of(app, device.user)) == 110


def test_the_key_is_never_at_rest_nor_logged(app, device, caplog):
    bundle = seal(visit_mutations(1, 30))
    upload_id = upload(app, device, bundle.data)
    with caplog.at_level(logging.DEBUG):
        refused = commit(app, device, upload_id, bundle, manifest={**bundle.manifest, "kind": "snapshot"})
        assert commit(app, device, upload_id, bundle).status_code == 202
    assert bundle.key not in refused.get_data(as_text=True)
    assert bundle.key not in caplog.text
    data_dir = app.extensions["fieldsync"].config.data_dir
    for path in data_dir.rglob("*"):
        if path.is_file() and path.suffix not in (".db", ".db-wal", ".db-shm"):
            content = path.read_bytes()
            assert bundle.key.encode() not in content, path
    drain(app)


# -- refused whole ------------------------------------------------------------------------------------

def _refused(app, device, answer, status: int, slug: str) -> None:
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert answer.get_json()["type"] == PROBLEMS + slug
    drain(app)
    assert visits_of(app, device.user) == []
    assert ledger_count(app, device) == (0, 0)   # nothing received, nothing applied


def _flipped(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at] ^= 0x01
    return bytes(changed)


def test_a_flipped_byte_refuses_the_bundle(app, device):
    bundle = seal(visit_mutations(1, 200))
    tampered = _flipped(bundle.data, len(bundle.data) // 2)
    _refused(app, device, commit(app, device, upload(app, device, tampered), bundle), 422, "bundle-refused")


def test_a_flipped_byte_with_a_matching_manifest_is_refused_by_the_aead(app, device):
    bundle = seal(visit_mutations(1, 200))
    chunks = bundle.chunks()
    chunks[1] = _flipped(chunks[1], 5)
    import hashlib
    infos = [dict(i) for i in bundle.manifest["chunks"]]
    infos[1]["sha256"] = hashlib.sha256(chunks[1]).hexdigest()
    manifest = reseal_manifest(bundle.manifest, chunks, infos)
    answer = commit(app, device, upload(app, device, b"".join(chunks)), bundle, manifest=manifest)
    _refused(app, device, answer, 422, "bundle-refused")


def test_reordered_chunks_are_refused(app, device):
    bundle = seal(visit_mutations(1, 200))
    chunks, infos = bundle.chunks(), list(bundle.manifest["chunks"])
    chunks[0], chunks[1] = chunks[1], chunks[0]
    infos[0], infos[1] = infos[1], infos[0]
    manifest = reseal_manifest(bundle.manifest, chunks, infos)   # digests agree: the nonce's index does not
    answer = commit(app, device, upload(app, device, b"".join(chunks)), bundle, manifest=manifest)
    _refused(app, device, answer, 422, "bundle-refused")


def test_a_truncated_bundle_is_refused(app, device):
    bundle = seal(visit_mutations(1, 200))
    chunks, infos = bundle.chunks()[:-1], list(bundle.manifest["chunks"])[:-1]
    manifest = reseal_manifest(bundle.manifest, chunks, infos)   # no last-chunk flag on its last chunk
    answer = commit(app, device, upload(app, device, b"".join(chunks)), bundle, manifest=manifest)
    _refused(app, device, answer, 422, "bundle-refused")


def test_bytes_missing_from_the_upload_are_refused(app, device):
    bundle = seal(visit_mutations(1, 100))
    answer = commit(app, device, upload(app, device, bundle.data[:-40]), bundle)
    _refused(app, device, answer, 422, "bundle-refused")


@pytest.mark.parametrize("change", ["wrong key", "wrong kind", "whole digest", "no key", "no manifest",
                                    "manifest not an object", "key not text"])
def test_a_manifest_or_key_that_does_not_fit_is_refused(app, device, change):
    bundle = seal(visit_mutations(1, 60))
    override = {"wrong key": {"key": key_text(new_key())},
                "wrong kind": {"manifest": {**bundle.manifest, "kind": "snapshot"}},
                "whole digest": {"manifest": {**bundle.manifest, "sha256": "0" * 64}},
                "no key": {"key": None}, "no manifest": {"manifest": None},
                "manifest not an object": {"manifest": [1, 2]}, "key not text": {"key": 12}}[change]
    answer = commit(app, device, upload(app, device, bundle.data), bundle, **override)
    _refused(app, device, answer, 422, "bundle-refused")


def test_content_that_is_not_push_mutations_is_refused(app, device):
    for frames, status, slug in (([b"not json"], 422, "bundle-refused"), ([b'{"seq": 1}'], 422, "bundle-refused"),
                                 ([json.dumps(visit_mutations(5, 2) + visit_mutations(1, 2)).encode()], 400,
                                  "malformed-request"),
                                 ([json.dumps([{**visit_mutations(1, 1)[0], "entity": "vi\u0000sit"}]).encode()], 400,
                                  "malformed-request")):
        bundle = seal([], frames=frames)
        _refused(app, device, commit(app, device, upload(app, device, bundle.data), bundle), status, slug)


def test_a_bundle_over_the_limit_is_refused(app, device, monkeypatch):
    monkeypatch.setitem(app.extensions["fieldsync"].config, "PUSH_BUNDLE_MAX_MUTATIONS", 50)
    bundle = seal(visit_mutations(1, 51))
    answer = commit(app, device, upload(app, device, bundle.data), bundle)
    _refused(app, device, answer, 413, "payload-too-large")
    assert answer.get_json()["max_mutations"] == 50


def test_an_unfinished_upload_cannot_be_committed(app, device):
    bundle = seal(visit_mutations(1, 100))
    upload_id = upload(app, device, bundle.data, send=len(bundle.data) // 2)
    answer = commit(app, device, upload_id, bundle)
    _refused(app, device, answer, 409, "bundle-incomplete")
    assert answer.get_json()["offset"] == len(bundle.data) // 2


def test_an_upload_of_another_purpose_is_refused(app, device):
    bundle = seal(visit_mutations(1, 20))
    _refused(app, device, commit(app, device, upload(app, device, bundle.data, purpose="file"), bundle),
             422, "bundle-refused")


def test_another_device_cannot_commit_my_upload(app, device):
    bundle = seal(visit_mutations(1, 20))
    upload_id = upload(app, device, bundle.data)
    sibling = register(app, device.user, install="install-2")       # the same user's other device
    stranger = register(app, device.user + "-other")
    for other in (sibling, stranger):
        answer = commit(app, other, upload_id, bundle)
        assert answer.status_code == 404, answer.get_data(as_text=True)
        assert visits_of(app, other.user) == [] and ledger_count(app, other) == (0, 0)
    # nor with its own device id in the body and my device's upload
    answer = commit(app, stranger, upload_id, bundle, device_id=device.device_id)
    assert answer.status_code == 404
    drain(app)
    assert visits_of(app, device.user) == []
    assert commit(app, device, upload_id, bundle).status_code == 202   # still mine to commit


@pytest.mark.parametrize("value", [None, 12, "", "../../etc/passwd", "0" * 31, "g" * 32, f"{TRANSFER}/"])
def test_a_malformed_upload_reference_is_a_400(app, device, value):
    bundle = seal(visit_mutations(1, 3))
    answer = commit(app, device, "0" * 32, bundle, upload=value)
    assert answer.status_code == 400 and answer.get_json()["type"] == PROBLEMS + "malformed-request"


def test_an_unknown_upload_is_a_404(app, device):
    bundle = seal(visit_mutations(1, 3))
    assert commit(app, device, "0" * 32, bundle).status_code == 404


_json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_hostile_commit_bodies_get_a_4xx(app, device, data):
    bundle = seal(visit_mutations(1, 5))
    if not hasattr(device, "upload_id"):
        device.upload_id = upload(app, device, bundle.data)
    manifest = dict(bundle.manifest)
    for name in data.draw(st.lists(st.sampled_from(sorted(manifest)), max_size=3)):
        manifest[name] = data.draw(_json_values)
    override = {"manifest": manifest}
    if data.draw(st.booleans()):
        override["key"] = data.draw(_json_values)
    if data.draw(st.booleans()):
        override[data.draw(st.sampled_from(["schema_version", "device_id", "sent_at", "clock_offset_ms"]))] = \
            data.draw(_json_values)
    answer = commit(app, device, device.upload_id, bundle, **override)
    assert answer.status_code < 500, answer.get_data(as_text=True)
    if answer.status_code == 202:   # the fuzz left every member that matters as it was
        device.upload_id = upload(app, device, bundle.data)


def test_a_bundle_of_bad_seqs_names_a_hundred_of_them(app, device):
    bundle = seal([{**m, "seq": 5} for m in visit_mutations(1, 300)])
    answer = commit(app, device, upload(app, device, bundle.data), bundle)
    _refused(app, device, answer, 400, "malformed-request")
    assert len(answer.get_json()["errors"]) == 100
