"""Key provider fixtures: the shared moto server (tests/moto_server.py, real HTTP) for KMS, a
KMS client of the tests' own for setting keys up and checking what KMS holds, and a fresh KMS
key per test."""

from __future__ import annotations

import pytest

from moto_server import REGION, aws_credentials, moto_endpoint, shared  # noqa: F401  (fixtures)
from fieldsync.crypto.kms import KmsKeyProvider


@pytest.fixture
def aws_session(aws_credentials):
    """A boto3 Session on the fake credentials, sharing loaded service models across tests."""
    import boto3
    import botocore.session
    core = botocore.session.get_session()
    core.register_component("data_loader", shared("loader", lambda: core.get_component("data_loader")))
    return boto3.session.Session(botocore_session=core, region_name=REGION)


@pytest.fixture
def kms(aws_session, moto_endpoint):
    """A raw boto3 KMS client on the moto server: the tests' own view of KMS."""
    return aws_session.client("kms", endpoint_url=moto_endpoint)


@pytest.fixture
def kms_key(kms) -> dict:
    """A fresh symmetric KMS key (KeyMetadata: KeyId, Arn)."""
    return kms.create_key(Description="fieldsync test key-encryption key")["KeyMetadata"]


@pytest.fixture
def provider_for(aws_session, moto_endpoint):
    """`provider_for(key_id)`: a KmsKeyProvider for that key on the moto server."""
    def make(key_id: str, **kwargs) -> KmsKeyProvider:
        kwargs.setdefault("endpoint_url", moto_endpoint)
        kwargs.setdefault("session", aws_session)
        return KmsKeyProvider(key_id, **kwargs)
    return make
