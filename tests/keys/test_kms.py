"""The AWS KMS key provider against moto in server mode (real HTTP on 127.0.0.1): data keys
come from KMS GenerateDataKey and unwrap through KMS Decrypt only with the same encryption
context; unknown, disabled, deleted and swapped keys fail with a KeyUnavailable that names the
key and never a key's bytes or the context's values."""

from __future__ import annotations

import socket

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from fieldsync.config import load_config
from fieldsync.errors import ConfigError, KeyUnavailable
from fieldsync.crypto.keys import LocalKeyProvider
from fieldsync.crypto.providers import key_provider_from_config
from fieldsync.crypto.kms import KmsKeyProvider
from fieldsync.queue.embedded import SqliteQueue
from fieldsync.queue.encrypted import EncryptedQueue

CONTEXT = {"entity": "prescription", "key_id": "dk-7", "purpose": "field"}


def test_round_trip_through_kms(kms, kms_key, provider_for):
    provider = provider_for(kms_key["Arn"])
    key, wrapped = provider.generate_data_key(context=CONTEXT)
    assert len(key) == 32 and wrapped.startswith(b"K1") and key not in wrapped
    assert provider.decrypt_data_key(wrapped, context=CONTEXT) == key
    # the wrapped key is KMS's own ciphertext: KMS itself opens it, under that key and context
    size = int.from_bytes(wrapped[2:4], "big")
    assert wrapped[4:4 + size].decode() == kms_key["Arn"]
    opened = kms.decrypt(CiphertextBlob=wrapped[4 + size:], EncryptionContext=CONTEXT)
    assert opened["Plaintext"] == key and opened["KeyId"] == kms_key["Arn"]


def test_a_key_id_or_alias_works_as_well_as_an_arn(kms, kms_key, provider_for):
    kms.create_alias(AliasName="alias/fieldsync-test-" + kms_key["KeyId"][:8], TargetKeyId=kms_key["KeyId"])
    for key_id in (kms_key["KeyId"], "alias/fieldsync-test-" + kms_key["KeyId"][:8]):
        provider = provider_for(key_id)
        key, wrapped = provider.generate_data_key(context=CONTEXT)
        assert provider.decrypt_data_key(wrapped, context=CONTEXT) == key


def test_data_keys_stay_readable_when_the_alias_moves_to_a_new_kms_key(kms, kms_key, provider_for):
    alias = "alias/fieldsync-rotating-" + kms_key["KeyId"][:8]
    kms.create_alias(AliasName=alias, TargetKeyId=kms_key["KeyId"])
    provider = provider_for(alias)
    old_key, old_wrapped = provider.generate_data_key(context=CONTEXT)
    new_kek = kms.create_key()["KeyMetadata"]
    kms.update_alias(AliasName=alias, TargetKeyId=new_kek["KeyId"])
    new_key, new_wrapped = provider.generate_data_key(context=CONTEXT)
    assert new_kek["Arn"].encode() in new_wrapped and kms_key["Arn"].encode() in old_wrapped
    assert provider.decrypt_data_key(old_wrapped, context=CONTEXT) == old_key
    assert provider.decrypt_data_key(new_wrapped, context=CONTEXT) == new_key


def test_another_context_fails_naming_the_key_not_the_values(kms_key, provider_for):
    provider = provider_for(kms_key["Arn"])
    key, wrapped = provider.generate_data_key(context=CONTEXT)
    for other in ({**CONTEXT, "key_id": "dk-8"}, None):
        with pytest.raises(KeyUnavailable, match="encryption context") as caught:
            provider.decrypt_data_key(wrapped, context=other)
        message = str(caught.value)
        assert kms_key["Arn"] in message
        assert key.hex() not in message and "dk-8" not in message and "prescription" not in message


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=st.dictionaries(st.sampled_from(["entity", "key_id", "purpose", "subject_key"]),
                             st.text(st.characters(codec="utf-8"), min_size=1, max_size=16), max_size=3),
       second=st.dictionaries(st.sampled_from(["entity", "key_id", "purpose"]), st.sampled_from(["a", "b"]),
                              max_size=2))
def test_only_the_same_context_unwraps(kms_key, provider_for, first, second):
    assume(first != second)
    provider = provider_for(kms_key["Arn"])
    key, wrapped = provider.generate_data_key(context=first)
    assert provider.decrypt_data_key(wrapped, context=first) == key
    with pytest.raises(KeyUnavailable):
        provider.decrypt_data_key(wrapped, context=second)


def test_an_unknown_key_fails_naming_it(provider_for):
    missing = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-4000-8000-000000000000"
    with pytest.raises(KeyUnavailable, match="no such KMS key") as caught:
        provider_for(missing).generate_data_key(context=CONTEXT)
    assert missing in str(caught.value)
    with pytest.raises(KeyUnavailable, match="alias/fieldsync-never-made"):
        provider_for("alias/fieldsync-never-made").generate_data_key()


def test_a_disabled_key_fails_both_ways_until_enabled(kms, kms_key, provider_for):
    provider = provider_for(kms_key["Arn"])
    key, wrapped = provider.generate_data_key(context=CONTEXT)
    kms.disable_key(KeyId=kms_key["KeyId"])
    with pytest.raises(KeyUnavailable, match="disabled") as caught:
        provider.generate_data_key(context=CONTEXT)
    assert kms_key["Arn"] in str(caught.value)
    with pytest.raises(KeyUnavailable, match="disabled"):
        provider.decrypt_data_key(wrapped, context=CONTEXT)
    kms.enable_key(KeyId=kms_key["KeyId"])
    assert provider.decrypt_data_key(wrapped, context=CONTEXT) == key


def test_a_key_pending_deletion_fails(kms, kms_key, provider_for):
    provider = provider_for(kms_key["Arn"])
    _, wrapped = provider.generate_data_key()
    kms.schedule_key_deletion(KeyId=kms_key["KeyId"], PendingWindowInDays=7)
    with pytest.raises(KeyUnavailable, match="current state"):
        provider.decrypt_data_key(wrapped)


def test_a_wrapped_key_pointing_at_another_kms_key_is_refused(kms, kms_key, provider_for):
    """The envelope names the key KMS must decrypt with; swap in another key and KMS refuses."""
    provider = provider_for(kms_key["Arn"])
    _, wrapped = provider.generate_data_key(context=CONTEXT)
    other = kms.create_key()["KeyMetadata"]["Arn"].encode()
    size = int.from_bytes(wrapped[2:4], "big")
    swapped = b"K1" + len(other).to_bytes(2, "big") + other + wrapped[4 + size:]
    with pytest.raises(KeyUnavailable, match="access denied|another KMS key") as caught:
        provider.decrypt_data_key(swapped, context=CONTEXT)
    assert other.decode() in str(caught.value)


def test_keys_of_another_provider_or_damaged_envelopes_fail_clearly(tmp_path, kms_key, provider_for):
    provider = provider_for(kms_key["Arn"])
    _, local_wrapped = LocalKeyProvider(tmp_path / "keys").generate_data_key()
    with pytest.raises(KeyUnavailable, match="wrapped by the local key provider, not by AWS KMS"):
        provider.decrypt_data_key(local_wrapped)
    for damaged in (b"K1", b"K1\x00\x05short", b"K1\x00\x03abc" + bytes(40)):
        with pytest.raises(KeyUnavailable, match="damaged K1 envelope"):
            provider.decrypt_data_key(damaged)
    _, wrapped = provider.generate_data_key()
    flipped = wrapped[:-1] + bytes([wrapped[-1] ^ 1])
    with pytest.raises(KeyUnavailable, match="altered wrapped key"):
        provider.decrypt_data_key(flipped)


def test_kms_out_of_reach_fails_naming_the_key(aws_session, kms_key):
    with socket.socket() as sock:   # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    from botocore.config import Config
    client = aws_session.client("kms", endpoint_url=closed, config=Config(retries={"max_attempts": 1}))
    with pytest.raises(KeyUnavailable, match="failed before KMS answered") as caught:
        KmsKeyProvider(kms_key["Arn"], client=client).generate_data_key()
    assert kms_key["Arn"] in str(caught.value)


def test_the_queue_envelope_works_on_kms(tmp_path, kms_key, provider_for):
    """The existing caller (queue/encrypted.py) seals and opens through the KMS provider."""
    queue = EncryptedQueue(SqliteQueue(tmp_path / "queue.db"), provider_for(kms_key["Arn"]))
    try:
        queue.send(b'{"patient_name": "Asha Rao"}', group="device-1")
        assert b"Asha Rao" not in (tmp_path / "queue.db").read_bytes()
        [message] = queue.receive(1)
        assert message.body == b'{"patient_name": "Asha Rao"}'
    finally:
        queue.close()


# -- configuration ------------------------------------------------------------------------------

def test_config_uses_the_standard_aws_endpoint_setting(monkeypatch, kms, kms_key, moto_endpoint, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    config = load_config(env={"FIELDSYNC_KEY_PROVIDER": "kms", "FIELDSYNC_KMS_KEY_ID": kms_key["KeyId"]})
    provider = key_provider_from_config(config)
    assert isinstance(provider, KmsKeyProvider) and provider.key_id == kms_key["KeyId"]
    key, wrapped = provider.generate_data_key(context=CONTEXT)
    assert kms.decrypt(CiphertextBlob=wrapped[4 + int.from_bytes(wrapped[2:4], "big"):],
                       EncryptionContext=CONTEXT)["Plaintext"] == key


def test_config_endpoint_and_region_from_the_key_arn(monkeypatch, aws_credentials, moto_endpoint, aws_session):
    """KMS_ENDPOINT_URL wins over the AWS endpoint settings; a key ARN's region wins over
    AWS_REGION / AWS_DEFAULT_REGION (a KMS key lives in one region)."""
    far = aws_session.client("kms", endpoint_url=moto_endpoint, region_name="ap-south-1")
    arn = far.create_key()["KeyMetadata"]["Arn"]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")   # wrong on purpose: the config wins
    monkeypatch.setenv("AWS_REGION", "us-east-2")
    provider = key_provider_from_config(load_config(env={}, overrides={
        "KEY_PROVIDER": "kms", "KMS_KEY_ID": arn, "KMS_ENDPOINT_URL": moto_endpoint}))
    key, wrapped = provider.generate_data_key()
    assert provider.decrypt_data_key(wrapped) == key
    assert far.decrypt(CiphertextBlob=wrapped[4 + len(arn):])["Plaintext"] == key


def test_config_without_a_key_or_a_region_is_refused(monkeypatch, aws_credentials):
    with pytest.raises(ConfigError, match="KEY_PROVIDER=kms needs KMS_KEY_ID"):
        key_provider_from_config(load_config(env={"FIELDSYNC_KEY_PROVIDER": "kms"}))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    provider = key_provider_from_config(load_config(env={"FIELDSYNC_KEY_PROVIDER": "kms",
                                                         "FIELDSYNC_KMS_KEY_ID": "alias/fieldsync"}))
    with pytest.raises(ConfigError, match="'alias/fieldsync' needs a region"):
        provider.generate_data_key()
