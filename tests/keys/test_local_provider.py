"""The local key provider binds an encryption context to every wrapped data key: the same
context unwraps it, any other fails with KeyUnavailable, and keys wrapped before contexts
existed (no context) still unwrap."""

from __future__ import annotations

import os
import stat

import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from fieldsync.config import load_config
from fieldsync.errors import ConfigError, KeyUnavailable
from fieldsync.crypto.keys import LocalKeyProvider, canonical_context
from fieldsync.crypto.providers import key_provider_from_config

CONTEXT = {"entity": "prescription", "key_id": "dk-7", "purpose": "field"}
contexts = st.dictionaries(st.text(min_size=1, max_size=12), st.text(max_size=24), max_size=4)


@pytest.fixture
def local(tmp_path) -> LocalKeyProvider:
    return LocalKeyProvider(tmp_path / "keys")


def test_round_trip_with_a_context(local, tmp_path):
    key, wrapped = local.generate_data_key(context=CONTEXT)
    assert len(key) == 32 and wrapped.startswith(b"L1") and key not in wrapped
    assert local.decrypt_data_key(wrapped, context=dict(reversed(list(CONTEXT.items())))) == key
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "master.key").st_mode) == 0o600


def test_another_context_or_none_fails(local):
    key, wrapped = local.generate_data_key(context=CONTEXT)
    for other in ({**CONTEXT, "entity": "visit"}, {"entity": "prescription"}, None, {}):
        with pytest.raises(KeyUnavailable, match="encryption context") as caught:
            local.decrypt_data_key(wrapped, context=other)
        assert key.hex() not in str(caught.value)


def test_a_key_wrapped_without_context_unwraps_as_before(local):
    """The queue envelope wraps without a context; messages queued before this change still open."""
    key, wrapped = local.generate_data_key()
    assert local.decrypt_data_key(wrapped) == key == local.decrypt_data_key(wrapped, context={})
    with pytest.raises(KeyUnavailable):
        local.decrypt_data_key(wrapped, context={"purpose": "queue"})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=contexts, second=contexts)
def test_only_the_same_context_unwraps(local, first, second):
    assume(first != second)
    key, wrapped = local.generate_data_key(context=first)
    assert local.decrypt_data_key(wrapped, context=dict(sorted(first.items()))) == key
    with pytest.raises(KeyUnavailable):
        local.decrypt_data_key(wrapped, context=second)


def test_context_values_must_be_strings(local):
    with pytest.raises(TypeError, match="'version'"):
        local.generate_data_key(context={"version": 3})
    assert canonical_context(None) == {} == canonical_context({})


def test_another_master_key_fails(tmp_path, local):
    _, wrapped = local.generate_data_key(context=CONTEXT)
    with pytest.raises(KeyUnavailable, match="master key"):
        LocalKeyProvider(tmp_path / "other").decrypt_data_key(wrapped, context=CONTEXT)


def test_a_kms_wrapped_key_is_named_as_such(local):
    with pytest.raises(KeyUnavailable, match="wrapped by the AWS KMS key provider, not by the local"):
        local.decrypt_data_key(b"K1" + bytes(80))


def test_config_picks_local_by_default_and_names_unknown_providers(tmp_path):
    provider = key_provider_from_config(load_config(env={}, overrides={"DATA_DIR": str(tmp_path)}))
    assert isinstance(provider, LocalKeyProvider) and provider.directory == tmp_path / "keys"
    with pytest.raises(ConfigError, match="'vault' is not known; available: 'local', 'kms'"):
        key_provider_from_config(load_config(env={"FIELDSYNC_KEY_PROVIDER": "vault"}))
