"""The SDK hands back the typed models generated from the definitions when asked for them."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path

from fieldsync.client import Client, WsgiTransport

ROOT = Path(__file__).resolve().parents[2]


def load_models():
    spec = importlib.util.spec_from_file_location("fieldsync_models", ROOT / "generated/sdk/python/fieldsync_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module        # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_get_and_query_return_generated_models(tmp_path):
    models = load_models()
    schema = json.loads((ROOT / "generated/device/schema.json").read_text())
    client = Client(tmp_path / "d.db", WsgiTransport(object()), "token-unused", schema=schema)
    visit_id = client.insert(models.Visit, {"retailer_id": "2fd6ae15-929b-509f-9c04-01a819382ca2",
                                            "territory_id": "270707fc-40e4-5205-8dad-51e11ccbfacf",
                                            "visited_at": "2026-11-27T09:30:00Z", "purpose": "order"})
    visit = client.get(models.Visit, visit_id)
    assert isinstance(visit, models.Visit)
    assert visit.visited_at == dt.datetime(2026, 11, 27, 9, 30, tzinfo=dt.timezone.utc)
    assert [v.id for v in client.query(models.Visit, where={"purpose": "order"})] == [visit_id]
    assert client.get("visit", visit_id)["visited_at"].startswith("2026-11-27T09:30:00")   # names give dicts
    client.close()
