"""The device store's key derivation and its clear header (docs/device-store.md): the same
inputs give the same key, another device, secret, PIN or salt another key; the header holds
identifiers and KDF parameters only, never the secret or the key."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings, strategies as st

from fieldsync.client import ClientError, StoreKey
from fieldsync.client.store_key import StoreHeader, derive_store_key

N = 16   # scrypt cost for property tests: the derivation's shape, not its price, is under test
SETTINGS = dict(max_examples=60, deadline=None, database=None)

secrets = st.binary(min_size=32, max_size=32)
device_ids = st.uuids().map(str)
pins = st.text(min_size=1, max_size=12)
salts = st.binary(min_size=16, max_size=16)


def derive(secret, device_id, pin, salt):
    return derive_store_key(secret, device_id, pin=pin, salt=salt, scrypt_n=N)


@settings(**SETTINGS)
@given(secrets, device_ids, st.none() | pins, salts)
def test_same_inputs_give_the_same_32_byte_key(secret, device_id, pin, salt):
    key = derive(secret, device_id, pin, salt)
    assert len(key) == 32
    assert derive(bytes(secret), str(device_id), pin, bytes(salt)) == key
    assert key != secret   # the secret is input keying material, never the key itself


@settings(**SETTINGS)
@given(secrets, device_ids, device_ids, st.none() | pins, salts)
def test_another_device_gives_another_key(secret, first, second, pin, salt):
    if first != second:
        assert derive(secret, first, pin, salt) != derive(secret, second, pin, salt)


@settings(**SETTINGS)
@given(secrets, device_ids, pins, pins, salts)
def test_another_pin_gives_another_key(secret, device_id, pin, other, salt):
    with_pin = derive(secret, device_id, pin, salt)
    assert with_pin != derive(secret, device_id, None, salt)   # a PIN always changes the key
    if pin != other:
        assert with_pin != derive(secret, device_id, other, salt)


@settings(**SETTINGS)
@given(secrets, secrets, device_ids, st.none() | pins, salts, salts)
def test_another_secret_or_salt_gives_another_key(secret, other_secret, device_id, pin, salt, other_salt):
    key = derive(secret, device_id, pin, salt)
    if other_secret != secret:
        assert derive(other_secret, device_id, pin, salt) != key
    if other_salt != salt:
        assert derive(secret, device_id, pin, other_salt) != key


def test_a_pin_is_compared_after_unicode_normalisation():
    secret, salt = bytes(range(32)), bytes(16)
    composed, decomposed = "caf\u00e9", "cafe\u0301"   # the same text typed two ways
    assert derive(secret, "d", composed, salt) == derive(secret, "d", decomposed, salt)


def test_the_default_pin_cost_is_the_documented_scrypt_setting():
    header = StoreHeader.new("device", "install")
    assert (header.scrypt_n, header.scrypt_r, header.scrypt_p) == (2 ** 15, 8, 1)
    # the default cost really runs (hashlib's default maxmem of 32 MiB would refuse it)
    assert len(header.derive(StoreKey(bytes(32), pin="2468"))) == 32


def test_store_key_hides_its_secret_and_pin_and_checks_them():
    key = StoreKey(b"\x07" * 32, pin="4711")
    assert "4711" not in repr(key) and "\\x07" not in repr(key) and "<set>" in repr(key)
    with pytest.raises(ValueError, match="32 bytes"):
        StoreKey(b"short")
    with pytest.raises(ValueError, match="non-empty"):
        StoreKey(bytes(32), pin="")


def test_header_round_trip_holds_no_key_material(tmp_path):
    store = tmp_path / "device.db"
    header = StoreHeader.new("01a2-device", "install-1", scrypt_n=1024)
    header.write(store)
    path = tmp_path / "device.db.header"
    assert StoreHeader.path_for(store) == path
    assert StoreHeader.read(store) == header
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    secret = bytes(range(32))
    key = header.derive(StoreKey(secret, pin="1234"))
    text = path.read_text()
    document = json.loads(text)
    assert set(document) == {"format", "device_id", "install_id", "salt", "pin", "scrypt"}
    for material in (secret, key):
        assert material.hex() not in text and base64.b64encode(material).decode() not in text
    assert not list(tmp_path.glob("*.tmp"))   # written through a temporary file, renamed


def test_header_pin_flag_is_rewritten_without_changing_the_salt(tmp_path):
    store = tmp_path / "device.db"
    header = StoreHeader.new("device", "install", scrypt_n=1024)
    header.write(store)
    header.with_pin(True).write(store)
    again = StoreHeader.read(store)
    assert again.pin is True and again.salt == header.salt


def test_a_missing_header_is_none_and_a_damaged_one_is_a_clear_error(tmp_path):
    store = tmp_path / "device.db"
    assert StoreHeader.read(store) is None
    StoreHeader.path_for(store).write_text('{"format": 1, "device_id": "d"}')
    with pytest.raises(ClientError, match=r"device\.db\.header is not a fieldsync store header"):
        StoreHeader.read(store)
    StoreHeader.path_for(store).write_text("{not json")
    with pytest.raises(ClientError, match=r"device\.db\.header cannot be read"):
        StoreHeader.read(store)
