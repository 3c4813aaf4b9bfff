"""docs/protocol.md §7.2: `GET /api/v1/sync/schema` answers the generated device schema,
byte for byte `generated/device/schema.json` (its `$comment` included)."""

from __future__ import annotations

import gzip
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_schema_endpoint_is_the_generated_file_byte_for_byte(lite_app):
    generated = (ROOT / "generated" / "device" / "schema.json").read_bytes()
    r = lite_app.client.get("/api/v1/sync/schema", headers={"Authorization": f"Bearer {lite_app.rep_token()}"})
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert r.data == generated
    # compressed for a client that accepts it, the same bytes once decoded
    r = lite_app.client.get("/api/v1/sync/schema?from=1", headers={"Authorization": f"Bearer {lite_app.rep_token()}",
                                                                    "Accept-Encoding": "gzip"})
    assert r.headers["Content-Encoding"] == "gzip" and gzip.decompress(r.data) == generated
