"""The server computes pins itself (it does not import the SDK); they must be the pins the SDK checks."""

from cryptography.hazmat.primitives.asymmetric import ec

from fieldsync.client.pinning import public_key_pin as sdk_pin
from fieldsync.crypto.devcert import public_key_pin as server_pin


def test_the_server_and_the_sdk_compute_the_same_pin():
    for _ in range(3):
        key = ec.generate_private_key(ec.SECP256R1()).public_key()
        assert server_pin(key) == sdk_pin(key)
        assert server_pin(key).startswith("sha256/")
