"""The sync cycle against a fake server: registration, push batches, retries with the same
seqs, the recoverable answers (401, 404, 409, 410, 413, 400 invalid-resume) and the ones that
reach the caller, all without losing or duplicating an outbox entry."""

from __future__ import annotations

import json

import pytest

from fieldsync.client import (DeviceRevoked, ProtocolError, SchemaTooNew, ServerUnavailable, TransportError)
from fieldsync.errors import ClientError

PROBLEMS = "https://fieldsync.dev/problems/"


def answer(status, name=None, headers=None, **extra):
    body = {"type": PROBLEMS + name, "status": status, "detail": name, **extra} if name else extra
    return status, dict(headers or {}), json.dumps(body).encode()


def on(server, route, response, times=1, when=lambda body: True):
    """Answer the next `times` requests to `route` (matching `when`) with `response`."""
    left = [times]

    def hook(method, path, body, headers):
        if path.endswith(route) and left[0] > 0 and when(body):
            left[0] -= 1
            return response() if callable(response) else response
    server.hooks.append(hook)


class CutAfterDelivery:
    """Delivers the request to the server, then loses the answer (a connection cut in a tunnel)."""

    def __init__(self, inner, route, times=1):
        self.inner, self.route, self.times = inner, route, times

    def request(self, method, path, *, headers, body):
        status, answer_headers, data = self.inner.request(method, path, headers=headers, body=body)
        if path.endswith(self.route) and self.times > 0:
            self.times -= 1
            raise TransportError("connection reset after the request was sent")
        return status, answer_headers, data


def test_first_sync_registers_once_with_a_stable_install_id(make_client, server):
    client = make_client(server, install_info={"platform": "android 14", "app_version": "2.3.0"})
    on(server, "/devices", answer(503, "unavailable"))
    with pytest.raises(ServerUnavailable):
        client.sync()
    client.sync()
    client.sync()
    registrations = server.bodies("/devices")
    assert len(registrations) == 2  # the failed one and the retry; later syncs reuse the id
    assert registrations[0]["install_id"] == registrations[1]["install_id"]
    assert registrations[1]["platform"] == "android 14" and registrations[1]["schema_version"] == 1
    assert client.status().device_id == "device-1"
    assert server.paths()[-4:] == ["/pull", "/ack", "/pull", "/ack"]  # nothing to push


def test_push_sends_ascending_seqs_in_batches(make_client, server, visit, clock):
    client = make_client(server, push_batch=3)
    ids = [client.insert("visit", visit(notes=str(i))) for i in range(7)]
    client.update("visit", ids[0], {"notes": "changed"})
    clock.advance(60)
    report = client.sync()
    pushes = server.bodies("/push")
    assert [len(p["mutations"]) for p in pushes] == [3, 3, 2]
    seqs = [m["seq"] for p in pushes for m in p["mutations"]]
    assert seqs == sorted(seqs) == list(range(1, 9))
    last = pushes[-1]["mutations"][-1]
    assert last == {"seq": 8, "entity": "visit", "op": "update", "id": ids[0], "base_version": 0,
                    "client_time": "2026-11-27T09:00:00.000000Z", "fields": {"notes": "changed"}}
    assert pushes[0]["sent_at"] == "2026-11-27T09:01:00.000000Z" and pushes[0]["device_id"] == "device-1"
    assert report.pushed == 8 and report.applied == 8 and report.complete
    assert client.status().pending == 0 and client.get("visit", ids[0])["version"] == 2


def test_the_batch_read_during_a_push_is_sent_only_after_a_full_answer(make_client, server, visit):
    """The next batch is read while a push is in flight; entries the app writes meanwhile, a
    413 that halves the batch and an answer that leaves seqs out all still give ascending,
    gap-free pushes with each seq applied once."""
    client = make_client(server, push_batch=3)
    for i in range(7):
        client.insert("visit", visit(notes=str(i)))
    calls = []

    def meanwhile(method, path, body, headers):
        if not path.endswith("/push"):
            return None
        calls.append([m["seq"] for m in body["mutations"]])
        if len(calls) == 1:
            client.insert("visit", visit(notes="written during the first push"))   # seq 8
        if len(calls) == 2:   # a 202 that leaves seqs out: the batch read ahead is dropped
            status, whole = server._push(body)
            return status, {}, json.dumps(dict(whole, received=whole["received"][:1])).encode()
        if len(calls) == 3:
            return answer(413, "payload-too-large", max_bytes=100_000)
        return None
    server.hooks.append(meanwhile)
    with pytest.raises(ProtocolError):
        client.sync()
    report = client.sync()
    assert calls[:4] == [[1, 2, 3], [4, 5, 6], [5, 6, 7], [5]]
    sent = [seq for batch in calls for seq in batch]
    assert all(b == sorted(b) for b in calls) and set(sent) == set(range(1, 9))
    assert report.complete and client.status().pending == 0 and client.status().sent == 0
    assert sorted(seq for _, seq in server.ledger) == list(range(1, 9))


def test_a_push_whose_answer_is_lost_is_resent_with_the_same_seqs(make_client, server, visit):
    transport = CutAfterDelivery(server, "/push")
    client = make_client(transport)
    record_id = client.insert("visit", visit())
    with pytest.raises(TransportError):
        client.sync()
    status = client.status()
    assert (status.pending, status.sent) == (0, 1)  # unknown outcome: kept as sent
    report = client.sync()
    first, second = server.bodies("/push")
    assert first["mutations"] == second["mutations"]    # same seq, same payload
    assert report.applied == 1 and client.status().sent == 0
    assert len([k for k in server.records if k[1] == record_id]) == 1
    assert client.get("visit", record_id)["version"] == 1


def test_a_lost_push_answer_after_a_restart_is_resent_too(make_client, server, visit):
    client = make_client(CutAfterDelivery(server, "/push"))
    client.insert("visit", visit())
    with pytest.raises(TransportError):
        client.sync()
    client.close()
    again = make_client(server, schema=None)   # the app restarted
    again.sync()
    assert [m["seq"] for p in server.bodies("/push") for m in p["mutations"]] == [1, 1]
    assert len(server.ledger) == 1 and again.status().unsettled == 0


def test_413_halves_the_batch_and_quarantines_a_lone_mutation_too_large(make_client, server, visit):
    client = make_client(server, push_batch=8)
    big = None
    for i in range(6):
        record_id = client.insert("visit", visit(notes=("x" * 3000) if i == 4 else str(i)))
        big = record_id if i == 4 else big

    def too_large(method, path, body, headers):
        if path.endswith("/push") and (len(body["mutations"]) > 2
                                       or any(len(m["fields"].get("notes", "")) > 1000 for m in body["mutations"])):
            return answer(413, "payload-too-large", max_bytes=1000)
    server.hooks.append(too_large)
    report = client.sync()
    sizes = [len(p["mutations"]) for p in server.bodies("/push")]
    assert sizes[:3] == [6, 3, 1] and max(sizes[3:]) <= 2
    assert report.rejected == 1 and report.applied == 5
    [q] = client.quarantined()
    assert q.record_id == big and q.code == PROBLEMS + "payload-too-large" and "1000 bytes" in q.reason
    assert client.status().pending == 0
    # the record was never received: it was refetched, and the server does not know it
    assert {"entity": "visit", "id": big} in server.bodies("/pull")[0]["refetch"]


def test_401_asks_the_token_callable_once_more(make_client, server):
    class Tokens:
        """The app's token source: expired at first; renewing gives a fresh one."""

        def __init__(self):
            self.current, self.calls = "expired", 0

        def __call__(self):
            self.calls += 1
            value = self.current
            self.current = "fresh"
            return value

    tokens = Tokens()
    server.valid_tokens = {"fresh"}
    client = make_client(server, token=tokens)
    client.sync()
    assert server.tokens_seen[:2] == ["expired", "fresh"] and set(server.tokens_seen[2:]) == {"fresh"}
    server.valid_tokens = set()
    seen = len(server.requests)
    with pytest.raises(ProtocolError) as caught:
        client.sync()
    assert caught.value.status == 401 and len(server.requests) == seen + 2  # one retry, then give up


def test_a_fixed_token_is_not_retried(make_client, server):
    server.valid_tokens = set()
    client = make_client(server, token="static")
    with pytest.raises(ProtocolError):
        client.sync()
    assert len(server.requests) == 1


def test_schema_upgrade_required_migrates_and_pulls_again(make_client, server, schema, visit):
    client = make_client(server)
    kept = client.insert("visit", visit(notes="offline"))
    newer = json.loads(json.dumps(schema))
    newer["schema_version"], newer["fingerprint"] = 2, "v2"
    for entity in newer["entities"]:
        if entity["name"] == "visit":
            entity["columns"].append({"name": "mood", "sqlite_type": "TEXT", "type": "string", "storage": "text",
                                      "required": False, "primary_key": False})
    server.schema_document = newer
    on(server, "/pull", answer(409, "schema-upgrade-required", schema_version=2,
                               schema_url="/api/v1/sync/schema?from=1"), when=lambda b: b["schema_version"] == 1)
    client.sync()
    assert "/schema?from=1" in server.paths()
    assert server.bodies("/pull")[-1]["schema_version"] == 2
    assert server.bodies("/push")[0]["schema_version"] == 1  # pushes of an older device are accepted
    assert client.get("visit", kept)["notes"] == "offline" and client.get("visit", kept)["mood"] is None
    client.update("visit", kept, {"mood": "good"})


def test_schema_too_new_keeps_everything(make_client, server, visit):
    client = make_client(server)
    client.insert("visit", visit())
    on(server, "/push", answer(409, "schema-too-new", schema_version=0))
    with pytest.raises(SchemaTooNew) as caught:
        client.sync()
    assert caught.value.server_version == 0 and caught.value.device_version == 1
    assert client.status().sent == 1   # resent later with the same seq
    client.sync()
    assert client.status().unsettled == 0


def test_revoked_device_raises_and_keeps_the_outbox(make_client, server, visit):
    client = make_client(server)
    client.sync()
    client.insert("visit", visit())
    on(server, "/push", answer(403, "device-revoked"))
    with pytest.raises(DeviceRevoked):
        client.sync()
    assert client.status().sent == 1


def test_unknown_device_with_entries_reregisters_under_the_old_id(make_client, server, visit):
    client = make_client(server)
    client.sync()
    client.insert("visit", visit())
    server.devices.clear()
    on(server, "/push", answer(404, "unknown-device"))
    client.sync()
    assert server.bodies("/devices")[-1]["device_id"] == "device-1"
    assert client.status().device_id == "device-1" and client.status().unsettled == 0


def test_unknown_device_with_an_empty_outbox_starts_afresh(make_client, server):
    server.server_insert("product", "0192a000-0000-7000-8000-000000000501", sku="A", name="A", category="pharma",
                         unit_price="1.00")
    client = make_client(server)
    client.sync()
    assert len(client.query("product")) == 1
    server.devices.clear()
    on(server, "/pull", answer(404, "unknown-device"))
    client.sync()
    registration = server.bodies("/devices")[-1]
    assert "device_id" not in registration
    assert server.bodies("/pull")[-1]["cursor"] == 0          # a fresh snapshot
    assert client.status().device_id == "device-2" and len(client.query("product")) == 1


def test_server_errors_reach_the_caller_and_keep_the_cursor(make_client, server):
    server.server_insert("product", "0192a000-0000-7000-8000-000000000501", sku="A", name="A", category="pharma",
                         unit_price="1.00")
    client = make_client(server)
    on(server, "/pull", answer(429, "rate-limited", headers={"retry-after": "12"}))
    with pytest.raises(ServerUnavailable) as caught:
        client.sync()
    assert caught.value.status == 429 and caught.value.retry_after == 12
    assert client.status().cursor == 0
    on(server, "/pull", answer(500, "internal"))
    with pytest.raises(TransportError):
        client.sync()
    client.sync()
    assert client.status().cursor == 1


def test_other_4xx_are_protocol_errors_and_delete_nothing(make_client, server, visit):
    client = make_client(server)
    client.insert("visit", visit())
    on(server, "/push", answer(400, "malformed-request", errors=[{"field": "mutations", "reason": "bad"}]))
    with pytest.raises(ProtocolError) as caught:
        client.sync()
    assert caught.value.name == "malformed-request" and caught.value.problem["errors"][0]["field"] == "mutations"
    assert client.status().sent == 1 and client.quarantined() == []


def test_invalid_resume_drops_it(make_client, server):
    client = make_client(server)
    first = {"device_id": "device-1", "cursor": 0, "resume": "r1.bogus", "scope_hash": None, "has_more": True,
             "remaining": 5, "head": 0, "changes": [], "results": [], "windows": {}}
    on(server, "/pull", (200, {}, json.dumps(first).encode()))
    on(server, "/pull", answer(400, "invalid-resume"), when=lambda b: b["resume"] == "r1.bogus")
    client.sync()
    resumes = [b["resume"] for b in server.bodies("/pull")]
    assert resumes == [None, "r1.bogus", None]


def test_progress_pages_ack_and_status(make_client, server, clock):
    for i in range(5):
        server.server_insert("product", f"0192a000-0000-7000-8000-00000000050{i}", sku=str(i), name="P",
                             category="pharma", unit_price="1.00")
    client = make_client(server, pull_limit=2)
    seen = []
    client.on_progress(lambda pulled, remaining: seen.append((pulled, remaining)))
    report = client.sync(max_pages=2)
    assert seen == [(2, 3), (4, 1)] and report.pages == 2 and not report.complete
    assert client.status().last_sync_at is None and client.status().lag == 1
    clock.advance(30)
    report = client.sync()
    assert report.complete and report.cursor == 5 and client.status().lag == 0
    assert client.status().last_sync_at == "2026-11-27T09:00:30.000000Z"
    assert server.acks[-1] == {"device_id": "device-1", "cursor": 5, "results_through": 0,
                               "outbox": {"pending": 0, "sent": 0, "received": 0}, "quarantined": 0}


def test_results_after_is_the_lowest_unsettled_seq_minus_one(make_client, server, visit):
    client = make_client(server)
    server.auto_process = False
    for _ in range(3):
        client.insert("visit", visit())
    client.sync()
    assert server.bodies("/pull")[-1]["results_after"] == 0
    server.process()
    client.sync()
    assert server.bodies("/pull")[-1]["results_after"] == 0 and client.status().unsettled == 0
    client.sync()
    assert server.bodies("/pull")[-1]["results_after"] == 3 and server.acks[-1]["results_through"] == 3


def test_duplicate_with_a_different_payload_is_quarantined_as_seq_reused(make_client, server, visit):
    client = make_client(server)
    record_id = client.insert("visit", visit())
    client.sync()
    client.update("visit", record_id, {"notes": "new"})
    server.ledger[("device-1", 2)] = {"seq": 2, "status": "applied", "entity": "visit", "id": record_id,
                                      "position": 9, "version": 1, "row": None}
    on(server, "/push", lambda: answer(202, None, device_id="device-1", received=[],
                                       results=[{"seq": 2, "status": "duplicate", "payload_mismatch": True,
                                                 "first": server.ledger[("device-1", 2)]}]))
    client.sync()
    [q] = client.quarantined()
    assert q.name == "seq-reused" and q.seq == 2


def test_resubmit_and_discard(make_client, server, visit):
    client = make_client(server)
    server.reject = lambda m: "validation" if m["fields"].get("notes") == "REJECT" else None
    a = client.insert("visit", visit(notes="REJECT"))
    b = client.insert("visit", visit(notes="REJECT"))
    client.sync()
    assert {q.record_id for q in client.quarantined()} == {a, b}
    assert client.get("visit", a) is None
    first, second = client.quarantined()
    new_seq = client.resubmit(first.seq, {"notes": "fixed"})
    assert new_seq > second.seq and client.get("visit", a)["notes"] == "fixed"
    client.discard(second.seq)
    assert client.quarantined() == []
    with pytest.raises(ClientError):
        client.discard(second.seq)
    client.sync()
    assert client.get("visit", a)["version"] == 1 and client.get("visit", a)["notes"] == "fixed"
    assert {"entity": "visit", "id": b} in server.bodies("/pull")[-1]["refetch"]
    assert client.status().quarantined == 0 and client.status().pending == 0


def test_an_empty_or_incomplete_answer_is_not_taken_for_one(make_client, server):
    server.server_insert("product", "0192a000-0000-7000-8000-000000000501", sku="A", name="A", category="pharma",
                         unit_price="1.00")
    client = make_client(server)
    on(server, "/pull", (200, {}, b""))
    with pytest.raises(TransportError):
        client.sync()
    on(server, "/pull", (200, {}, b'{"device_id": "device-1", "changes": []'))
    with pytest.raises(TransportError):
        client.sync()
    on(server, "/pull", (200, {}, json.dumps({"device_id": "device-1", "has_more": False, "changes": [
        {"kind": "upsert", "entity": "product", "id": "0192a000-0000-7000-8000-000000000501", "version": 1,
         "row": {"name": "A"}}]}).encode()))
    with pytest.raises(ProtocolError, match="cursor"):
        client.sync()
    assert client.query("product") == [] and client.status().cursor == 0
    assert client.sync().complete and len(client.query("product")) == 1
