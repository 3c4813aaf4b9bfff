"""Media fields in the definition language: max_bytes and content_types, checked with file:line
errors; the values a media field takes; the limits the platform reads from a field."""

from __future__ import annotations

import textwrap

import pytest

from fieldsync.defs import DefinitionErrors, build_model
from fieldsync.defs.model import Field
from fieldsync.defs.values import (DEFAULT_MEDIA_MAX_BYTES, content_type_allowed, is_media_ref, media_max_bytes,
                                   normalize_value)
from fieldsync.errors import ValueProblem

APP = "app: demo\nschema_version: 1\n"
ROLES = "roles:\n  rep: {}\n"


def _build(fields: str, encryption: str = ""):
    entity = textwrap.dedent("""\
        entity: claim
        kind: transaction
        fields:
        """) + textwrap.indent(textwrap.dedent(fields), "  ") + textwrap.dedent(encryption)
    return build_model({"app.yaml": APP, "roles.yaml": ROLES, "transactions/claim.yaml": entity})


def _errors(fields: str, encryption: str = "") -> list:
    with pytest.raises(DefinitionErrors) as info:
        _build(fields, encryption)
    return info.value.errors


def test_a_media_field_takes_limits_and_phi():
    model = _build("""\
        photo:
          type: media
          max_bytes: 1048576
          content_types: [image/jpeg, image/*, application/pdf]
        scan:
          type: media
        """, """\
        encryption:
          fields:
            scan: {mode: encrypt, phi: true}
        """)
    photo, scan = model.entity("claim").field("photo"), model.entity("claim").field("scan")
    assert (photo.max_bytes, photo.content_types, photo.phi) == (1048576, ("image/jpeg", "image/*", "application/pdf"),
                                                                 False)
    assert (scan.max_bytes, scan.content_types, scan.phi) == (None, (), True)
    assert media_max_bytes(scan) == DEFAULT_MEDIA_MAX_BYTES and media_max_bytes(photo) == 1048576


def test_bad_limits_are_errors_with_file_and_line():
    errs = _errors("""\
        photo:
          type: media
          max_bytes: 6000000000
          content_types: [image/jpeg, "Image/PNG", "jpeg", "*/*"]
        name:
          type: string
          max_bytes: 10
          content_types: [text/plain]
        """)
    messages = {(e.path, e.line): e.message for e in errs}
    assert any(p == "fields.photo.max_bytes" and line == 6 and "5 GiB" in m for (p, line), m in messages.items())
    assert {p for p, _ in messages if p.startswith("fields.photo.content_types.")} == {
        "fields.photo.content_types.1", "fields.photo.content_types.2", "fields.photo.content_types.3"}
    assert "applies to media fields, not string" in messages[("fields.name.max_bytes", 10)]
    assert ("fields.name.content_types", 11) in messages
    assert all(str(e).startswith("entity_defs/transactions/claim.yaml:") for e in errs)
    errs = _errors("photo:\n  type: media\n  max_bytes: 0\n")
    assert [e.path for e in errs] == ["fields.photo.max_bytes"]


def test_a_media_field_is_encrypted_or_plain_only():
    errs = _errors("scan:\n  type: media\n", "encryption:\n  fields:\n    scan: {mode: blind_index, phi: true}\n")
    assert [e.path for e in errs] == ["encryption.fields.scan.mode"] and "mode encrypt" in errs[0].message


def test_media_values_and_content_types():
    f = Field(name="photo", type="media", content_types=("image/*", "application/pdf"))
    ref = "fsmedia:0192a6c4-1e80-7000-8000-000000000001"
    assert normalize_value(f, ref) == ref and is_media_ref(ref)
    for bad in ("fsmedia:0192A6C4-1E80-7000-8000-000000000001", "fsmedia:x", "fsmedia:" + "0" * 36):
        assert not is_media_ref(bad)
        with pytest.raises(ValueProblem):
            normalize_value(f, bad)
    assert not is_media_ref("https://example.com/x.jpg")
    assert content_type_allowed(f, "image/jpeg") and content_type_allowed(f, "IMAGE/PNG; q=1")
    assert content_type_allowed(f, "application/pdf")
    assert not content_type_allowed(f, "image/") and not content_type_allowed(f, "text/html")
    assert not content_type_allowed(f, "application/pdfx")
    anything = Field(name="doc", type="media")
    assert content_type_allowed(anything, "text/plain") and not content_type_allowed(anything, "nonsense")
