"""The same push flows end to end through each backend: received durably into the queue,
applied by the server's listeners, its results pulled by the device — sealed on the way."""

from __future__ import annotations

import time

from fieldsync.api import create_app
from fieldsync.auth.tokens import issue_token
from fieldsync.seed import load_seed
from fieldsync.ids import new_id

SECRET = "b" * 32
PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"


def test_push_is_applied_through_the_backend(queue_url, tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "SECRET_KEY": SECRET, "SYNC_LISTENERS": 2,
                      "DATABASE_URL": f"sqlite:///{tmp_path / 'server.db'}", "QUEUE_URL": queue_url})
    state = app.extensions["fieldsync"]
    load_seed(state.config, "examples/seed")
    client = app.test_client()
    headers = {"Authorization": "Bearer " + issue_token(SECRET, "rep-asha", "field_rep",
                                                        {"territory_ids": [PUNE_CENTRAL]}),
               "Fieldsync-Protocol": "1"}
    device = client.post("/api/v1/sync/devices", json={"install_id": "e2e", "schema_version": 1},
                         headers=headers).json["device_id"]
    retailer = next(r for r in state.store.list("retailer", limit=50).items if r["territory_id"] == PUNE_CENTRAL)
    ids = [new_id() for _ in range(60)]
    try:
        for start in (0, 20, 40):                # three pushes: three messages of one group
            batch = [{"seq": start + i + 1, "entity": "visit", "op": "insert", "id": ids[start + i],
                      "base_version": None, "client_time": "2026-11-27T09:00:00Z",
                      "fields": {"retailer_id": retailer["id"], "territory_id": PUNE_CENTRAL,
                                 "visited_at": "2026-11-27T09:00:00Z", "purpose": "order"}}
                     for i in range(20)]
            batch[-1]["fields"]["notes"] = f"batch {start}"
            r = client.post("/api/v1/sync/push", json={"device_id": device, "schema_version": 1,
                                                       "mutations": batch}, headers=headers)
            assert r.status_code == 202 and len(r.json["received"]) == 20
        # the listeners work in the background; the device asks for its results
        deadline = time.monotonic() + 60
        results: list[dict] = []
        while time.monotonic() < deadline:
            answer = client.get(f"/api/v1/sync/results?device_id={device}&after_seq=0", headers=headers).json
            results = answer["results"]
            if len(results) == 60 and answer["unsettled"] == 0:
                break
            time.sleep(0.2)   # polling the API the way a device would; the deadline bounds a failure
        assert [r["seq"] for r in results] == list(range(1, 61))
        assert {r["status"] for r in results} == {"applied"}
        stored = {v["id"] for v in state.store.list("visit", limit=100).items}
        assert stored == set(ids)
    finally:
        state.sync.close()
