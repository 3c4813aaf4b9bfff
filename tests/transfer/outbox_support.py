"""Helpers of the outbox bundle tests: a seeded server whose pushes are applied on demand
(`SYNC_LISTENERS=0`, `drain()`), devices registered through the sync API, bundles sealed as
the SDK seals them, and tus uploads through Flask's test client."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fieldsync.auth import issue_token
from fieldsync.defs.values import format_datetime
from fieldsync.ids import new_id
from fieldsync.seed import load_seed
from fieldsync.store.sync_tables import LEDGER, RECEIVED
from fieldsync.transfer.chunks import Manifest, key_text, new_key, write_payload

from tus_support import SECRET, make_app

ROOT = Path(__file__).resolve().parents[2]
PUNE = "270707fc-40e4-5205-8dad-51e11ccbfacf"
SAI = "2fd6ae15-929b-509f-9c04-01a819382ca2"      # a seed retailer in PUNE
SYNC = "/api/v1/sync"
TRANSFER = "/api/v1/transfer"
JSON_LIMIT = 4 * 1024 * 1024


def seeded_app(data_dir: Path, model, **config):
    """A server on SQLite with the example seed; pushes wait in the queue until `drain`."""
    app = make_app(data_dir, model, MAX_BODY_BYTES=JSON_LIMIT, **config)
    state = app.extensions["fieldsync"]
    load_seed(state.config, ROOT / "examples" / "seed", store=state.store)
    return app


def user_token(user: str) -> str:
    return issue_token(SECRET, user, "field_rep", {"territory_ids": [PUNE]}, ttl=3600)


def sync_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Fieldsync-Protocol": "1"}


@dataclass
class Device:
    user: str
    device_id: str
    token: str          # the device token

    @property
    def headers(self) -> dict[str, str]:
        return sync_headers(self.token)


def register(app, user: str, install: str = "install-1") -> Device:
    answer = app.test_client().post(f"{SYNC}/devices", headers=sync_headers(user_token(user)),
                                    json={"install_id": install, "schema_version": 1})
    assert answer.status_code in (200, 201), answer.get_data(as_text=True)
    body = answer.get_json()
    return Device(user, body["device_id"], body["device_token"])


def visit_mutations(first_seq: int, count: int) -> list[dict[str, Any]]:
    """`count` visit inserts with seqs from `first_seq`, as a device pushes them."""
    now = dt.datetime(2026, 11, 26, 10, tzinfo=dt.timezone.utc)
    return [{"seq": seq, "entity": "visit", "op": "insert", "id": new_id(now), "base_version": None,
             "client_time": format_datetime(now),
             "fields": {"retailer_id": SAI, "territory_id": PUNE, "visited_at": format_datetime(now),
                        "purpose": "order"}}
            for seq in range(first_seq, first_seq + count)]


@dataclass
class Bundle:
    data: bytes
    manifest: dict[str, Any]
    key: str

    def chunks(self) -> list[bytes]:
        out, at = [], 0
        for info in self.manifest["chunks"]:
            out.append(self.data[at:at + info["size"]])
            at += info["size"]
        return out


def seal(mutations: list[dict[str, Any]], *, per_frame: int = 50, kind: str = "outbox",
         frames: list[bytes] | None = None) -> Bundle:
    """A sealed outbox bundle of `mutations` (JSON arrays of `per_frame`), or of raw `frames`."""
    if frames is None:
        frames = [json.dumps(mutations[i:i + per_frame]).encode() for i in range(0, len(mutations), per_frame)]
    rows = [len(json.loads(f)) if f.startswith(b"[") else 0 for f in frames]
    key = new_key()
    out = io.BytesIO()
    manifest = write_payload(out, zip(frames, rows, [None] * len(frames)), key=key, bundle_id=new_id(),
                             kind=kind)
    return Bundle(out.getvalue(), manifest.to_dict(), key_text(key))


def reseal_manifest(manifest: dict[str, Any], chunks: list[bytes], infos: list[dict[str, Any]]) -> dict[str, Any]:
    """`manifest` naming `chunks` (with `infos`) instead: sizes, digests and the whole's digest
    agree with the bytes, so only the AEAD can tell the chunks were moved or cut."""
    import hashlib
    changed = dict(manifest, chunks=infos, sha256=hashlib.sha256(b"".join(chunks)).hexdigest(),
                   size=sum(len(c) for c in chunks))
    Manifest.from_dict(changed)   # still a well-formed manifest
    return changed


def upload(app, device: Device, data: bytes, *, purpose: str = "outbox", send: int | None = None) -> str:
    """A tus upload of `data` (the first `send` bytes only when given); its id."""
    metadata = "purpose " + base64.b64encode(purpose.encode()).decode()
    body = data if send is None else data[:send]
    answer = app.test_client().post(TRANSFER + "/", data=body, headers={
        "Authorization": f"Bearer {device.token}", "Tus-Resumable": "1.0.0", "Upload-Length": str(len(data)),
        "Upload-Metadata": metadata, "Content-Type": "application/offset+octet-stream"})
    assert answer.status_code == 201, answer.get_data(as_text=True)
    return answer.headers["Location"].rsplit("/", 1)[1]


def commit(app, device: Device, upload_id: str, bundle: Bundle, **override):
    body = {"device_id": device.device_id, "schema_version": 1, "sent_at": "2026-11-26T10:00:00Z",
            "upload": f"{TRANSFER}/{upload_id}", "key": bundle.key, "manifest": bundle.manifest, **override}
    return app.test_client().post(f"{SYNC}/push-bundle", headers=device.headers, json=body)


def push(app, device: Device, mutations: list[dict[str, Any]]):
    return app.test_client().post(f"{SYNC}/push", headers=device.headers, json={
        "device_id": device.device_id, "schema_version": 1, "mutations": mutations})


def drain(app) -> None:
    app.extensions["fieldsync"].sync.drain()


def visits_of(app, user: str) -> list[str]:
    """The ids of the server's visits of `user`, one per row (duplicates would repeat)."""
    state = app.extensions["fieldsync"]
    table = state.store.table(state.store.model.entity("visit"))
    with state.engine.connect() as conn:
        return list(conn.execute(sa.select(table.c.id).where(table.c.rep_id == user)).scalars())


def ledger_count(app, device: Device) -> tuple[int, int]:
    """(ledger rows, received-and-unprocessed rows) of `device`."""
    state = app.extensions["fieldsync"]
    with state.engine.connect() as conn:
        processed = conn.execute(sa.select(sa.func.count()).select_from(LEDGER)
                                 .where(LEDGER.c.device_id == device.device_id)).scalar_one()
        waiting = conn.execute(sa.select(sa.func.count()).select_from(RECEIVED)
                               .where(RECEIVED.c.device_id == device.device_id)).scalar_one()
    return processed, waiting


def offline_writes(client, n: int) -> list[str]:
    """`n` visit inserts in `client`'s store as `Client.insert` makes them (validated fields,
    row and outbox entry), in one local transaction instead of `n`: days of offline work
    without `n` fsyncs in the test. Returns the ids."""
    from fieldsync.client import outbox
    from fieldsync.client.schema import quote

    store = client._store
    table = store.table("visit")
    now = dt.datetime(2026, 11, 26, 10, tzinfo=dt.timezone.utc)
    clean = outbox.check_fields(table, {"retailer_id": SAI, "territory_id": PUNE, "visited_at": "2026-11-26T10:00:00Z",
                                        "purpose": "order"}, partial=False)
    names = ["id", *clean, "_version", "_dirty"]
    ids = []
    with store.transaction() as conn:
        for _ in range(n):
            record_id = new_id(now)
            conn.execute(f"INSERT INTO {quote(table.table)} ({', '.join(quote(c) for c in names)}) "
                         f"VALUES ({', '.join('?' for _ in names)})",
                         [record_id, *(table.column(k).to_storage(v) for k, v in clean.items()), 0, 1])
            outbox._add_entry(conn, table, "insert", record_id, None, clean, now)
            ids.append(record_id)
    return ids
