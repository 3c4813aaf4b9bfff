"""The key provider a configuration names (`KEY_PROVIDER`): `local` (`fieldsync.crypto.keys`)
or `kms` (`fieldsync.crypto.kms`). Apart from both so that the KMS provider, which builds on the
protocol in `keys`, is not imported back by it.
"""

from __future__ import annotations

from fieldsync.crypto.keys import KeyProvider, LocalKeyProvider
from fieldsync.errors import ConfigError

__all__ = ["key_provider_from_config"]


def key_provider_from_config(config, *, session=None) -> KeyProvider:
    """The key provider the configuration names (`KEY_PROVIDER`: `local` or `kms`). `session`
    (a boto3 Session) is used by the KMS provider; None: boto3's usual credential chain."""
    kind = str(config.get("KEY_PROVIDER") or "local").strip().lower()
    if kind == "local":
        return LocalKeyProvider(config.get("KEYS_DIR") or (config.data_dir / "keys"))
    if kind == "kms":
        from fieldsync.crypto.kms import kms_provider_from_config
        return kms_provider_from_config(config, session=session)
    raise ConfigError(f"KEY_PROVIDER {kind!r} is not known; available: 'local', 'kms'")
