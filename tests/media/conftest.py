"""Fixtures for media: the example definitions plus a PHI prescription image, and an app on
SQLite with the local media store (helpers: media_support.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fieldsync.defs import load_model

from media_support import make_app
from moto_server import aws_credentials, moto_endpoint  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def media_model(tmp_path_factory):
    """The example definitions with a PHI image on prescriptions (`rx_image`)."""
    defs = tmp_path_factory.mktemp("defs") / "entity_defs"
    shutil.copytree(ROOT / "entity_defs", defs)
    rx = defs / "transactions" / "prescription.yaml"
    text = rx.read_text()
    text = text.replace("encryption:\n", "  rx_image:\n    type: media\n    max_bytes: 200000\n"
                                         "    content_types: [image/*]\nencryption:\n", 1)
    text = text.replace("    diagnosis:\n      mode: encrypt\n      phi: true\n",
                        "    diagnosis:\n      mode: encrypt\n      phi: true\n"
                        "    rx_image:\n      mode: encrypt\n      phi: true\n", 1)
    rx.write_text(text)
    return load_model(defs)


@pytest.fixture
def app(tmp_path, media_model):
    app = make_app(tmp_path, media_model)
    yield app
    app.extensions["fieldsync"].engine.dispose()
