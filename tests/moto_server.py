"""One moto server in server mode (real HTTP on 127.0.0.1) per test process, shared by every
test that talks to AWS: SQS and S3 (tests/queue), KMS (tests/keys), S3 media (tests/media). moto missing is a failure,
never a skip.

Import what you need (`from moto_server import aws_credentials, moto_endpoint`; the tests
directory is on sys.path through its conftest). Fixtures:

    moto_endpoint     the server's URL (session scope; every service on one port)
    aws_credentials   fake credentials and region for boto3's normal chain, and no endpoint,
                      profile or config file of this machine

Where moto falls short of AWS in a way our tests depend on, the server is corrected here, once
per process, and each correction says which AWS behaviour it restores.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import pytest

__all__ = ["REGION", "aws_credentials", "moto_endpoint", "moto_endpoint_url", "shared"]

REGION = "eu-west-1"

_server_lock = threading.Lock()
_server: dict[str, object] = {}     # the server, its URL, shared clients and loaders: one per process


def _lock_moto_deletes() -> None:
    """moto's Queue.delete_message rebuilds the queue's message list without the lock that
    add_message takes, so a message sent while another is deleted can vanish inside moto (a
    loss our invariant tests would blame on the backend). Hold that lock (a reentrant
    Condition) around deletes."""
    from moto.sqs.models import Queue
    original = Queue.delete_message
    if getattr(original, "fieldsync_locked", False):
        return

    def delete_message(self, receipt_handle):
        with self._messages_lock:
            return original(self, receipt_handle)

    delete_message.fieldsync_locked = True
    Queue.delete_message = delete_message


def _enforce_kms_key_states() -> None:
    """moto's KMS encrypts and decrypts under a disabled key or one pending deletion; AWS
    refuses both (DisabledException, KMSInvalidStateException: "<key ARN> is disabled." /
    "… is pending deletion."). Restore that for Encrypt/GenerateDataKey and Decrypt."""
    from moto.core.exceptions import JsonRESTError
    from moto.kms.models import KmsBackend
    if getattr(KmsBackend.encrypt, "fieldsync_states", False):
        return
    original_encrypt, original_decrypt = KmsBackend.encrypt, KmsBackend.decrypt

    def usable(backend, key_id: str) -> None:
        key = backend.keys.get(key_id)
        if key is not None and key.key_state == "Disabled":
            raise JsonRESTError("DisabledException", f"{key.arn} is disabled.")
        if key is not None and key.key_state == "PendingDeletion":
            raise JsonRESTError("KMSInvalidStateException", f"{key.arn} is pending deletion.")

    def encrypt(self, key_id, plaintext, encryption_context):
        usable(self, self.any_id_to_key_id(key_id))
        return original_encrypt(self, key_id, plaintext, encryption_context)

    def decrypt(self, ciphertext_blob, encryption_context, key_id=None):
        plaintext, arn = original_decrypt(self, ciphertext_blob, encryption_context, key_id)
        usable(self, arn.split(":key/", 1)[-1])
        return plaintext, arn

    encrypt.fieldsync_states = True
    KmsBackend.encrypt, KmsBackend.decrypt = encrypt, decrypt


def _enforce_s3_post_policy() -> None:
    """moto's S3 stores a browser-based POST upload without reading its policy: no expiry, no
    `content-length-range`, no field conditions, and the form's `x-amz-server-side-encryption`
    is dropped. AWS refuses such a POST (400 EntityTooLarge / EntityTooSmall outside the length
    range; 403 AccessDenied "Invalid according to Policy" for an expired policy, a failed
    condition or a form field no condition covers) and stores the object with the form's
    encryption. Restore that (the signature itself is not checked here)."""
    import base64
    import datetime as dt
    import json

    from moto.s3.responses import S3Response
    original = S3Response._bucket_response_post
    if getattr(original, "fieldsync_policy", False):
        return

    def refuse(status: int, code: str, message: str):
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return status, {"Content-Type": "application/xml"}, body

    def check(form: dict, bucket: str, size: int):
        try:
            policy = json.loads(base64.b64decode(form["policy"]))
            expires = dt.datetime.fromisoformat(policy["expiration"].replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError):
            return refuse(400, "InvalidPolicyDocument", "Invalid Policy: Invalid JSON.")
        if expires < dt.datetime.now(dt.timezone.utc):
            return refuse(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        fields = {k.lower(): v for k, v in form.items()}
        fields["bucket"] = bucket
        covered = {"policy", "x-amz-signature", "file"}
        for cond in policy.get("conditions", []):
            if isinstance(cond, dict):
                cond = ["eq", *next(iter(cond.items()))]
            op, name = cond[0].lower(), str(cond[1]).lstrip("$").lower()
            if op == "content-length-range":
                if size > int(cond[2]):
                    return refuse(400, "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size")
                if size < int(cond[1]):
                    return refuse(400, "EntityTooSmall", "Your proposed upload is smaller than the minimum allowed size")
                continue
            covered.add(name)
            value = fields.get(name)
            if (op == "eq" and value != cond[2]) or (op == "starts-with" and not str(value or "").startswith(cond[2])):
                return refuse(403, "AccessDenied", f"Invalid according to Policy: Policy Condition failed: {cond}")
        extra = [k for k in fields if k not in covered and k != "bucket" and not k.startswith("x-ignore-")]
        if extra:
            return refuse(403, "AccessDenied", f"Invalid according to Policy: Extra input fields: {extra[0]}")
        return None

    def post(self, request, bucket_name):
        form = dict(request.form.items())
        if "policy" not in form or "key" not in form:
            return original(self, request, bucket_name)
        body = self.body if isinstance(self.body, (bytes, bytearray)) else str(self.body or "").encode()
        refused = check(form, bucket_name, len(body))
        if refused is not None:
            return refused
        answer = original(self, request, bucket_name)
        lowered = {k.lower(): v for k, v in form.items()}
        if lowered.get("x-amz-server-side-encryption"):
            stored = self.backend.get_object(bucket_name, form["key"])
            stored.encryption = lowered["x-amz-server-side-encryption"]
            stored.kms_key_id = lowered.get("x-amz-server-side-encryption-aws-kms-key-id")
        return answer

    post.fieldsync_policy = True
    S3Response._bucket_response_post = post


def moto_endpoint_url() -> str:
    """Start moto's threaded server once per process; its URL."""
    with _server_lock:
        if "endpoint" not in _server:
            try:
                from moto.server import ThreadedMotoServer
            except ImportError as exc:
                pytest.fail(f"moto[server] is not installed ({exc}); the AWS tests need it: "
                            ".venv/bin/pip install -e '.[test]'")
            # moto logs every request at INFO through werkzeug; failures show up in the tests
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
            _lock_moto_deletes()
            _enforce_kms_key_states()
            _enforce_s3_post_policy()
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            try:
                server.start()
            except OSError as exc:
                pytest.fail(f"the moto server could not listen on 127.0.0.1: {exc}")
            host, port = server.get_host_and_port()
            _server["server"] = server
            _server["endpoint"] = f"http://{host}:{port}"
        return str(_server["endpoint"])


def shared(name: str, make: Callable):
    """One object per process under `name` (clients, loaded service models), made on first use."""
    with _server_lock:
        if name not in _server:
            _server[name] = make()
        return _server[name]


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """The moto server's URL (every AWS service on one port)."""
    return moto_endpoint_url()


@pytest.fixture
def aws_credentials(monkeypatch):
    """Fake credentials for boto3's normal chain; no profile, config file or endpoint of this
    machine."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                 "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_KMS", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/aws-config")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/aws-credentials")
