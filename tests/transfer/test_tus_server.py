"""The tus 1.0 server, `/api/v1/transfer/` (docs/protocol.md "Transfer"): discovery, creation,
offsets, checksums, termination, expiry and the sweep, ownership, the write lock, and the
completion hooks. Requests go through the Flask test client (the wire-level interop is
test_tus_interop.py)."""

from __future__ import annotations

import base64
import hashlib
import threading

import pytest

from fieldsync.errors import Problem, ProblemType
from fieldsync.transfer import tus
from fieldsync.transfer.tus import READ_SIZE, UploadStore

from tus_support import TRANSFER_MAX, make_app, make_token

BASE = "/api/v1/transfer"
OCTETS = "application/offset+octet-stream"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory, example_model):
    """One server for the module (each test makes its own uploads)."""
    app = make_app(tmp_path_factory.mktemp("tus-server"), example_model)
    yield app
    app.extensions["fieldsync"].engine.dispose()


@pytest.fixture
def app(shared_app):
    shared_app.extensions["fieldsync"].transfer.clock = Clock()   # each test starts at the same time
    return shared_app


@pytest.fixture
def client(app):
    return app.test_client()


def headers(user: str = "rep-asha", device: str | None = None, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user, device)}", "Tus-Resumable": "1.0.0", **extra}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def create(client, length: int, metadata: str | None = None, **kw) -> str:
    extra = {"Upload-Length": str(length)}
    if metadata is not None:
        extra["Upload-Metadata"] = metadata
    answer = client.post(BASE + "/", headers=headers(**kw, **extra))
    assert answer.status_code == 201, answer.get_json()
    return answer.headers["Location"]


def patch(client, url: str, offset: int, data: bytes, *, checksum: str | None = None, **kw):
    extra = {"Upload-Offset": str(offset), "Content-Type": OCTETS}
    if checksum is not None:
        extra["Upload-Checksum"] = checksum
    return client.patch(url, headers=headers(**kw, **extra), data=data)


def digest(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


def stored(app, url: str) -> bytes:
    return app.extensions["fieldsync"].transfer.data_path(url.rsplit("/", 1)[1]).read_bytes()


# -- discovery, version, authentication ----------------------------------------------------------

def test_options_answers_discovery_without_a_token(client):
    answer = client.options(BASE + "/")
    assert answer.status_code == 204
    assert answer.headers["Tus-Version"] == "1.0.0"
    assert set(answer.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "checksum", "termination", "expiration"}
    assert answer.headers["Tus-Max-Size"] == str(TRANSFER_MAX)
    assert answer.headers["Tus-Checksum-Algorithm"] == "sha1,sha256"


def test_every_other_method_needs_a_token(client):
    url = create(client, 3)
    for method in ("POST", "HEAD", "PATCH", "DELETE", "GET"):
        target = BASE + "/" if method == "POST" else url
        answer = client.open(target, method=method, headers={"Tus-Resumable": "1.0.0", "Upload-Length": "3"})
        assert answer.status_code == 401, method


def test_a_missing_or_other_tus_version_is_412_naming_the_supported_one(client):
    token = {"Authorization": f"Bearer {make_token()}", "Upload-Length": "3"}
    for version in (None, "0.2.2", "1.0"):
        sent = dict(token, **({"Tus-Resumable": version} if version else {}))
        answer = client.post(BASE + "/", headers=sent)
        assert answer.status_code == 412
        assert answer.headers["Tus-Version"] == "1.0.0"
        assert answer.get_json()["type"].endswith("/tus-version-unsupported")


# -- creation --------------------------------------------------------------------------------------

def test_creation_answers_location_offset_and_expiry(app, client):
    answer = client.post(BASE + "/", headers=headers(**{"Upload-Length": "10",
                                                        "Upload-Metadata": f"filename {b64('bill.jpg')},empty"}))
    assert answer.status_code == 201
    url = answer.headers["Location"]
    assert url.startswith(BASE + "/") and answer.headers["Upload-Offset"] == "0"
    assert answer.headers["Upload-Expires"].endswith("GMT")
    head = client.head(url, headers=headers())
    assert head.status_code == 200 and head.headers["Cache-Control"] == "no-store"
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == ("0", "10")
    assert head.headers["Upload-Metadata"] == f"filename {b64('bill.jpg')},empty"


def test_creation_with_upload_stores_the_first_bytes(app, client):
    data = b"first bytes and the rest"
    answer = client.post(BASE, headers=headers(**{"Upload-Length": str(len(data)), "Content-Type": OCTETS,
                                                  "Upload-Checksum": digest("sha256", data[:11])}), data=data[:11])
    assert answer.status_code == 201 and answer.headers["Upload-Offset"] == "11"
    url = answer.headers["Location"]
    assert patch(client, url, 11, data[11:]).status_code == 204
    assert stored(app, url) == data


@pytest.mark.parametrize("length, status", [(TRANSFER_MAX + 1, 413), (None, 400), ("-1", 400), ("1e9", 400),
                                            ("12345678901234567890", 400), ("0x10", 400)])
def test_creation_refuses_a_bad_or_too_large_upload_length(client, length, status):
    sent = headers(**({"Upload-Length": str(length)} if length is not None else {}))
    answer = client.post(BASE + "/", headers=sent)
    assert answer.status_code == status
    assert answer.content_type == "application/problem+json"


@pytest.mark.parametrize("metadata", ["filename not*base64", "filename YQ", "filename YQ==,filename Yg==",
                                      "a b c", "bad key YQ==", "filename /w==", ",", "purpose " + b64("nonesuch"),
                                      "k " + b64("nul\x00")])
def test_creation_refuses_metadata_that_is_not_strict(client, metadata):
    answer = client.post(BASE + "/", headers=headers(**{"Upload-Length": "1", "Upload-Metadata": metadata}))
    assert answer.status_code == 400, metadata
    assert answer.get_json()["type"].endswith("/bad-request")


# -- core: offsets and checksums -------------------------------------------------------------------

def test_patches_append_at_the_offset_and_a_wrong_offset_is_409(app, client):
    url = create(client, 10)
    assert patch(client, url, 0, b"hello").headers["Upload-Offset"] == "5"
    wrong = patch(client, url, 3, b"xx")
    assert wrong.status_code == 409 and wrong.get_json()["offset"] == 5
    assert patch(client, url, 5, b"world").status_code == 204
    assert stored(app, url) == b"helloworld"
    late = patch(client, url, 10, b"!")
    assert late.status_code == 413   # past Upload-Length
    assert stored(app, url) == b"helloworld"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
def test_a_checksum_mismatch_is_460_and_discards_the_bytes(app, client, algorithm):
    url = create(client, 8)
    assert patch(client, url, 0, b"good", checksum=digest(algorithm, b"good")).status_code == 204
    flipped = patch(client, url, 4, b"bad!", checksum=digest(algorithm, b"bad?"))
    assert flipped.status_code == 460
    assert flipped.get_json()["type"].endswith("/checksum-mismatch")
    assert client.head(url, headers=headers()).headers["Upload-Offset"] == "4"
    assert stored(app, url) == b"good"


@pytest.mark.parametrize("value", ["md5 " + base64.b64encode(hashlib.md5(b"x").digest()).decode(),
                                   "sha256 not-base64", "sha256 " + base64.b64encode(b"short").decode(), "sha256"])
def test_a_checksum_of_another_algorithm_or_form_is_400(client, value):
    url = create(client, 1)
    assert patch(client, url, 0, b"x", checksum=value).status_code == 400


def test_a_patch_needs_the_offset_stream_content_type(client):
    url = create(client, 1)
    answer = client.patch(url, headers=headers(**{"Upload-Offset": "0", "Content-Type": "application/json"}), data=b"x")
    assert answer.status_code == 415


def test_the_body_is_streamed_in_pieces_never_whole(tmp_path):
    """A 200 MiB PATCH must not sit in memory: the store reads at most READ_SIZE at a time."""
    store = UploadStore(tmp_path, max_bytes=1 << 30, expires_after=60)
    principal = type("P", (), {"user_id": "u", "device_id": None})()
    upload = store.create(principal, 5 * READ_SIZE, {})

    class Body:
        reads: list[int] = []
        left = 5 * READ_SIZE

        def read(self, n: int) -> bytes:
            self.reads.append(n)
            n = min(n, self.left)
            self.left -= n
            return b"x" * n

    body = Body()
    done = store.append(upload.id, principal, 0, body, content_length=None, checksum=None)
    assert done.offset == 5 * READ_SIZE and done.completed
    assert max(body.reads) <= READ_SIZE + 1 and len(body.reads) >= 5


def test_a_body_cut_short_keeps_what_arrived_unless_a_checksum_covers_it(tmp_path):
    store = UploadStore(tmp_path, max_bytes=1 << 20, expires_after=60)
    principal = type("P", (), {"user_id": "u", "device_id": None})()
    upload = store.create(principal, 100, {})

    class Cut:
        def __init__(self):
            self.sent = False

        def read(self, n: int) -> bytes:
            if self.sent:
                raise OSError("connection reset")
            self.sent = True
            return b"a" * 30

    with pytest.raises(Problem):
        store.append(upload.id, principal, 0, Cut(), content_length=100, checksum=("sha256", b"\0" * 32))
    assert (tmp_path / f"{upload.id}.bin").stat().st_size == 0
    with pytest.raises(Problem):
        store.append(upload.id, principal, 0, Cut(), content_length=100, checksum=None)
    assert store.find(upload.id, principal).offset == 30


# -- ownership, termination, the lock -----------------------------------------------------------

def test_another_principal_gets_404_for_every_method(client):
    url = create(client, 4)
    for other in ({"user": "rep-ravi"}, {"device": "dev-1"}):
        assert client.head(url, headers=headers(**other)).status_code == 404
        assert patch(client, url, 0, b"abcd", **other).status_code == 404
        assert client.get(url, headers=headers(**other)).status_code == 404
        assert client.delete(url, headers=headers(**other)).status_code == 404
    assert client.head(url, headers=headers()).headers["Upload-Offset"] == "0"


def test_a_device_token_owns_its_uploads(client):
    url = create(client, 2, device="dev-7")
    assert patch(client, url, 0, b"ok", device="dev-7").status_code == 204
    assert client.head(url, headers=headers()).status_code == 404   # the same user's own token: another principal


def test_termination_removes_the_upload(app, client):
    url = create(client, 4)
    patch(client, url, 0, b"ab")
    assert client.delete(url, headers=headers()).status_code == 204
    assert client.head(url, headers=headers()).status_code == 404
    assert not app.extensions["fieldsync"].transfer.data_path(url.rsplit("/", 1)[1]).exists()


def test_a_patch_while_another_writes_is_423_and_changes_nothing(app, client):
    url = create(client, 4)
    store = app.extensions["fieldsync"].transfer
    answers = []
    with store.locked(url.rsplit("/", 1)[1]):   # as a PATCH in another thread holds it
        writer = threading.Thread(target=lambda: answers.append(patch(app.test_client(), url, 0, b"abcd")))
        writer.start()
        writer.join()
    assert answers[0].status_code == 423 and answers[0].headers["Retry-After"] == "1"
    assert client.head(url, headers=headers()).headers["Upload-Offset"] == "0"
    assert patch(client, url, 0, b"abcd").status_code == 204


def test_unknown_paths_and_methods(client):
    url = create(client, 1)
    assert client.put(url, headers=headers()).status_code == 405
    assert client.post(url, headers=headers()).status_code == 405
    assert client.get(BASE + "/" + "0" * 32, headers=headers()).status_code == 404
    assert client.head(BASE + "/../etc", headers=headers()).status_code == 404
    assert client.get(url + "/more", headers=headers()).status_code == 404


# -- expiry and the sweep --------------------------------------------------------------------------

def test_an_expired_upload_is_410_then_swept_to_404(app, client):
    store = app.extensions["fieldsync"].transfer
    url = create(client, 4)
    patch(client, url, 0, b"ab")
    store.clock.now += store.expires_after - 1
    assert patch(client, url, 2, b"c").status_code == 204      # a PATCH renews the expiry
    store.clock.now += store.expires_after - 1
    assert client.head(url, headers=headers()).status_code == 200
    store.clock.now += 2
    gone = patch(client, url, 3, b"d")
    assert gone.status_code == 410 and gone.get_json()["type"].endswith("/upload-expired")
    assert client.head(url, headers=headers()).status_code == 410
    kept = create(client, 1)
    removed = store.sweep()
    assert url.rsplit("/", 1)[1] in removed and kept.rsplit("/", 1)[1] not in removed
    assert client.head(url, headers=headers()).status_code == 404
    assert client.head(kept, headers=headers()).status_code == 200


def test_the_sweep_command_removes_expired_uploads(tmp_path, example_model):
    from click.testing import CliRunner
    from fieldsync.cli import fieldsync as cli
    app = make_app(tmp_path, example_model, TRANSFER_EXPIRES_SECONDS=0)
    url = create(app.test_client(), 1)
    upload_id = url.rsplit("/", 1)[1]
    app.extensions["fieldsync"].engine.dispose()
    result = CliRunner().invoke(cli, ["transfer", "sweep", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "removed 1 expired upload(s)" in result.output
    assert not (tmp_path / "transfer" / f"{upload_id}.json").exists()


# -- completion hooks ------------------------------------------------------------------------------

calls: list[str] = []


@tus.on_complete("test-result")
def _record(upload, path, principal):
    calls.append(upload.id)
    return {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "by": principal.user_id}


@tus.on_complete("test-refused")
def _refuse(upload, path, principal):
    raise Problem(ProblemType.VALIDATION, "not a receipt", extra={"reason": "content_type"})


def test_a_handler_runs_once_and_its_result_is_readable_by_the_owner(client):
    url = create(client, 6, f"purpose {b64('test-result')}")
    assert patch(client, url, 0, b"abc").status_code == 204
    assert client.get(url, headers=headers()).get_json()["complete"] is False
    assert patch(client, url, 3, b"def").status_code == 204
    assert patch(client, url, 6, b"").status_code == 204   # nothing left: no second call
    described = client.get(url, headers=headers()).get_json()
    assert described["complete"] is True and described["state"] == "complete"
    assert described["result"] == {"sha256": hashlib.sha256(b"abcdef").hexdigest(), "by": "rep-asha"}
    assert described["purpose"] == "test-result" and described["offset"] == described["length"] == 6
    assert calls.count(url.rsplit("/", 1)[1]) == 1


def test_racing_final_patches_call_the_handler_exactly_once(app, client):
    url = create(client, 1, f"purpose {b64('test-result')}")
    upload_id = url.rsplit("/", 1)[1]
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def race():
        barrier.wait()
        statuses.append(app.test_client().patch(url, headers=headers(**{"Upload-Offset": "0", "Content-Type": OCTETS}),
                                                data=b"z").status_code)

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(204) == 1 and set(statuses) <= {204, 409, 423}
    assert calls.count(upload_id) == 1


def test_a_handler_problem_fails_the_upload_with_that_problem(client):
    url = create(client, 2, f"purpose {b64('test-refused')}")
    final = patch(client, url, 0, b"no")
    assert final.status_code == 422 and final.get_json()["reason"] == "content_type"
    described = client.get(url, headers=headers()).get_json()
    assert described["state"] == "failed" and described["complete"] is False
    assert described["problem"]["detail"] == "not a receipt"


def test_metadata_without_a_purpose_is_a_plain_file(app, client):
    url = create(client, 3, f"filename {b64('notes.txt')}")
    assert patch(client, url, 0, b"abc").status_code == 204
    described = client.get(url, headers=headers()).get_json()
    assert described["purpose"] == "file" and described["complete"] is True and "result" not in described
    assert stored(app, url) == b"abc"


def test_non_ascii_metadata_round_trips(client):
    url = create(client, 1, f"filename {b64('रसीद नं ५.jpg')}")
    assert client.head(url, headers=headers()).headers["Upload-Metadata"] == f"filename {b64('रसीद नं ५.jpg')}"
    assert client.get(url, headers=headers()).get_json()["metadata"] == {"filename": "रसीद नं ५.jpg"}


def test_the_server_sweeps_expired_uploads_on_its_own(app, client):
    state = app.extensions["fieldsync"]
    url = create(client, 1)
    state.transfer.clock.now += state.transfer.expires_after + 1
    state.transfer_swept[0] = float("-inf")   # the last sweep was long ago
    client.options(BASE + "/")                # discovery does not sweep (no token)
    assert (state.transfer.root / f"{url.rsplit('/', 1)[1]}.json").exists()
    assert client.head(BASE + "/" + "0" * 32, headers=headers()).status_code == 404
    assert not (state.transfer.root / f"{url.rsplit('/', 1)[1]}.json").exists()
    assert client.head(url, headers=headers()).status_code == 404


def test_the_lock_is_reentrant_in_its_thread_and_exclusive_across_threads(app, client):
    """A handler or a caller holding the lock may terminate the upload; another thread may not write."""
    store = app.extensions["fieldsync"].transfer
    url = create(client, 1)
    upload_id = url.rsplit("/", 1)[1]
    principal = type("P", (), {"user_id": "rep-asha", "device_id": None})()
    refused: list[int] = []
    with store.locked(upload_id):
        other = threading.Thread(target=lambda: refused.append(patch(app.test_client(), url, 0, b"x").status_code))
        other.start()
        other.join()
        store.terminate(upload_id, principal)
    assert refused == [423]
    assert client.head(url, headers=headers()).status_code == 404
