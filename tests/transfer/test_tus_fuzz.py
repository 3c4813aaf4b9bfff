"""No hostile tus request makes the server answer 5xx: odd sizes (`-1`, `1e9`, 20-digit
numbers), metadata that is not strict base64 or not UTF-8, non-ASCII header text, unknown
checksum algorithms and content types, on creation and on PATCH. Every refusal is a 4xx
problem document (HEAD answers carry no body), and a refused PATCH leaves the upload as it was."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tus_support import make_app, make_token

EXAMPLES = int(os.environ.get("FIELDSYNC_TEST_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BASE = "/api/v1/transfer/"

# header text as WSGI carries it: latin-1, no line breaks
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=40)
sizes = st.one_of(st.sampled_from(["-1", "1e9", "+5", " 5", "0x10", "", "٣", "9" * 19, "9" * 20, "1.0", "00"]),
                  st.integers(-10, 10 ** 22).map(str), header_text)
b64 = st.binary(max_size=24).map(lambda b: base64.b64encode(b).decode())
metadata = st.one_of(header_text, st.lists(st.tuples(st.sampled_from(["filename", "purpose", "k", "é", "a b", ""]),
                                                      st.one_of(b64, header_text)), max_size=4)
                     .map(lambda pairs: ",".join(f"{k} {v}" for k, v in pairs)))
checksums = st.one_of(st.none(), header_text, st.tuples(st.sampled_from(["sha1", "sha256", "md5", "SHA256"]), b64)
                      .map(lambda t: f"{t[0]} {t[1]}"))


@pytest.fixture(scope="module")
def server(tmp_path_factory, example_model):
    app = make_app(tmp_path_factory.mktemp("fuzz"), example_model)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {make_token()}", "Tus-Resumable": "1.0.0"}
    answer = client.post(BASE, headers={**auth, "Upload-Length": "8"})
    yield app, client, auth, answer.headers["Location"]
    app.extensions["fieldsync"].engine.dispose()


def _assert_4xx(answer, method: str) -> None:
    assert 200 <= answer.status_code < 500, (answer.status_code, answer.data[:300])
    if answer.status_code >= 400 and method != "HEAD":
        document = answer.get_json(force=True)
        assert document["status"] == answer.status_code and document["type"].startswith("https://fieldsync.dev/")


def _headers(auth, **values):
    return {**auth, **{k: v for k, v in values.items() if v is not None}}


@FUZZ
@given(length=sizes, meta=metadata, version=st.one_of(st.just("1.0.0"), header_text),
       checksum=checksums, body=st.binary(max_size=16))
def test_creation_never_fails_on_any_headers(server, length, meta, version, checksum, body):
    app, client, auth, _ = server
    sent = _headers(auth, **{"Upload-Length": length, "Upload-Metadata": meta, "Tus-Resumable": version,
                             "Upload-Checksum": checksum,
                             "Content-Type": "application/offset+octet-stream" if body else None})
    _assert_4xx(client.post(BASE, headers=sent, data=body), "POST")


@FUZZ
@given(offset=sizes, checksum=checksums, kind=st.one_of(st.just("application/offset+octet-stream"), header_text),
       body=st.binary(max_size=16), method=st.sampled_from(["PATCH", "HEAD", "GET", "DELETE", "PUT", "OPTIONS"]),
       suffix=st.one_of(st.just(""), header_text.map(lambda t: "x" + t.replace("?", "").replace("#", ""))))
def test_patch_and_friends_never_fail_and_a_refused_patch_changes_nothing(server, offset, checksum, kind, body,
                                                                          method, suffix):
    app, client, auth, url = server
    before = client.head(url, headers=auth).headers.get("Upload-Offset")
    sent = _headers(auth, **{"Upload-Offset": offset, "Upload-Checksum": checksum, "Content-Type": kind})
    if method == "DELETE" and not suffix:
        method = "HEAD"   # keep the shared upload
    answer = client.open(url + suffix, method=method, headers=sent, data=body if method == "PATCH" else None)
    _assert_4xx(answer, method)
    if method == "PATCH" and answer.status_code != 204:
        assert client.head(url, headers=auth).headers.get("Upload-Offset") == before
