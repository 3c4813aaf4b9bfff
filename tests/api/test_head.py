"""HEAD never writes (issue 10, item 2).

Flask answers HEAD on every GET route with the GET view. A view that treats "not GET" as a
write turned `HEAD /api/v1/visit/<id>` with If-Match and a JSON body into an update, and
`HEAD /api/v1/visit` with a body into a create. Here HEAD is sent to every rule of the app's
URL map, with path variables filled with real ids, a JSON body and If-Match, as an admin (who
may write everything) and as a field rep; nothing in the database may change and no answer
is a 5xx. HEAD answers as GET does, without a body.
"""

from __future__ import annotations

import json
import re
import time

import pytest
import sqlalchemy as sa

from fieldsync.auth import issue_token
from fieldsync.seed import load_seed

SECRET = "test-secret-key"  # the api fixture's (tests/api/conftest.py)
PUNE_CENTRAL = "270707fc-40e4-5205-8dad-51e11ccbfacf"

# tables a read may touch: the audit trail (a HEAD is audited as the GET it mirrors) and the
# token sessions (a request refreshes its session's last use; the first one starts it)
READ_BOOKKEEPING = re.compile(r"fs_audit_.*|fs_sessions")


def _dump(engine) -> dict[str, list]:
    """Every row of every table but the read bookkeeping, in a stable order."""
    meta = sa.MetaData()
    meta.reflect(engine)
    out = {}
    with engine.connect() as conn:
        for name, table in sorted(meta.tables.items()):
            if READ_BOOKKEEPING.fullmatch(name):
                continue
            rows = conn.execute(sa.select(table)).all()
            out[name] = sorted((tuple(str(v) for v in r) for r in rows))
    return out


@pytest.fixture
def seeded(app):
    """The example seed plus one record of every entity that has none, and a device."""
    state = app.extensions["fieldsync"]
    load_seed(state.config, "examples/seed", store=state.store)
    store = state.store
    retailer = next(r for r in store.list("retailer", limit=100).items if r["territory_id"] == PUNE_CENTRAL)
    product = store.list("product", limit=1).items[0]
    visit = store.create("visit", {"retailer_id": retailer["id"], "territory_id": PUNE_CENTRAL,
                                   "visited_at": "2026-11-27T09:00:00Z", "purpose": "order", "notes": "hello"},
                         server_values={"rep_id": "rep-1"})
    store.create("order", {"retailer_id": retailer["id"], "territory_id": PUNE_CENTRAL, "visit_id": visit["id"],
                           "ordered_at": "2026-11-27T09:10:00Z"}, server_values={"rep_id": "rep-1"},
                 children={"lines": [{"product_id": product["id"], "quantity": 2, "unit_price": "3.00"}]})
    store.create("prescription", {"retailer_id": retailer["id"], "territory_id": PUNE_CENTRAL,
                                  "patient_id": "0190a4c2-7d1e-7a3b-9c4d-5e6f7a8b9c0d", "patient_name": "P",
                                  "patient_dob": "1970-01-01", "diagnosis": "d", "product_id": product["id"],
                                  "prescribed_at": "2026-11-27T09:20:00Z"}, server_values={"rep_id": "rep-1"})
    store.create("expense", {"spent_on": "2026-11-27", "category": "travel", "amount": "12.00"},
                 server_values={"rep_id": "rep-1"})
    token = issue_token(SECRET, "rep-1", "field_rep", {"territory_ids": [PUNE_CENTRAL]}, ttl=3600, now=time.time())
    r = app.test_client().post("/api/v1/sync/devices", json={"install_id": "i-1", "schema_version": 1},
                               headers={"Authorization": f"Bearer {token}", "Fieldsync-Protocol": "1"})
    assert r.status_code == 201, r.get_json()
    return {"device_id": r.get_json()["device_id"], "rep_token": token}


def _write_body(entity, record) -> dict:
    """A body that would create (or, with If-Match, update) a record like `record`."""
    system = {"id", "version", "created_at", "updated_at", "deleted"}
    return {k: v for k, v in record.items()
            if k not in system and k != entity.owner and k != entity.parent_field and not isinstance(v, list)}


def _targets(app, seeded):
    """(path, body, if_match) for every rule of the URL map that answers HEAD, each path
    variable filled with every real value it can take."""
    state = app.extensions["fieldsync"]
    model, store = state.model, state.store
    out = []
    for rule in app.url_map.iter_rules():
        if "HEAD" not in rule.methods:
            continue
        if rule.endpoint.startswith("fieldsync_transfer."):
            continue   # tus HEAD is a method of its own (the upload's offset), tested in tests/transfer
        names = set(rule.arguments)
        if not names:
            out.append((rule.rule, {"anything": 1}, "*"))
            continue
        if names == {"filename"}:
            out.append((rule.rule.replace("<path:filename>", "x.txt"), {}, "*"))
            continue
        if names == {"rest"}:   # the sync blueprint's catch-all: 404/405 for unknown paths
            out.append((rule.rule.replace("<path:rest>", "no/such/endpoint"), {"anything": 1}, "*"))
            continue
        if names == {"device_id"}:
            out.append((rule.rule.replace("<device_id>", seeded["device_id"]), {}, "*"))
            continue
        if names == {"bundle_id"}:   # a snapshot bundle (protocol §14): reading it writes nothing
            out.append((rule.rule.replace("<bundle_id>", "0b3c6f1e-0000-4000-8000-000000000000"), {}, "*"))
            continue
        if names == {"ref"}:   # media objects: a reference nobody bound (404), and a signed-link path (403)
            out.append((rule.rule.replace("<path:ref>", "fsmedia:0192a6c4-1e80-7000-8000-000000000001"), {}, "*"))
            continue
        assert names <= {"name", "record_id", "collection_name"}, f"a rule this test cannot fill: {rule.rule}"
        for entity in model.entities:
            records = store.list(entity.name, limit=1).items
            assert records, f"no {entity.name} record to aim HEAD at"
            record = records[0]
            path = rule.rule.replace("<name>", entity.name).replace("<record_id>", record["id"])
            body = _write_body(entity, record)
            if "collection_name" in names:
                for child_name in entity.children:
                    child = model.entity(child_name)
                    child_body = _write_body(child, store.list(child_name, limit=1).items[0])
                    out.append((path.replace("<collection_name>", child.collection), child_body,
                                f'"{record["version"]}"'))
            else:
                out.append((path, body, f'"{record["version"]}"'))
    return out


def test_head_to_every_route_writes_nothing(app, seeded):
    admin = issue_token(SECRET, "admin-1", "admin", {}, ttl=3600, now=time.time())
    client = app.test_client()
    engine = app.extensions["fieldsync"].engine
    targets = _targets(app, seeded)
    assert any(p.startswith("/api/v1/visit/") for p, _, _ in targets)   # the rule that wrote before
    before = _dump(engine)
    for token in (admin, seeded["rep_token"]):
        for path, body, if_match in targets:
            query = f"?device_id={seeded['device_id']}" if path.endswith("/results") else ""
            r = client.open(path + query, method="HEAD", data=json.dumps(body),
                            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                                     "If-Match": if_match, "Fieldsync-Protocol": "1"})
            assert r.status_code < 500, (path, r.status_code)
            assert r.data == b"", (path, r.status_code)
            get = client.get(path + query, headers={"Authorization": f"Bearer {token}", "Fieldsync-Protocol": "1"})
            assert r.status_code == get.status_code, (path, r.status_code, get.status_code)
    assert _dump(engine) == before


def test_head_answers_as_get_without_a_body(app, seeded):
    admin = issue_token(SECRET, "admin-1", "admin", {}, ttl=3600, now=time.time())
    client = app.test_client()
    store = app.extensions["fieldsync"].store
    visit = store.list("visit", limit=1).items[0]
    headers = {"Authorization": f"Bearer {admin}"}
    get = client.get(f"/api/v1/visit/{visit['id']}", headers=headers)
    head = client.head(f"/api/v1/visit/{visit['id']}", headers=headers)
    assert (head.status_code, head.headers["ETag"], head.data) == (200, get.headers["ETag"], b"")
    # a conditional HEAD is answered like a conditional GET
    head = client.head(f"/api/v1/visit/{visit['id']}", headers={**headers, "If-None-Match": get.headers["ETag"]})
    assert head.status_code == 304
