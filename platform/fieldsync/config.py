"""Configuration in layers: defaults, then a file, then `FIELDSYNC_*` environment variables,
then explicit overrides (what `create_app(config)` or a CLI flag passes).

Keys are upper case, and every key is one of DEFAULTS: an unknown key in any layer is a
ConfigError naming it and the closest known key, so a typo never passes for a setting (issue 11,
property 7). `FIELDSYNC_TEST_*` variables belong to the test suite and are not settings. Nothing
here opens a database or reads a key at import time, and reading a setting writes nothing.
"""

from __future__ import annotations

import difflib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Mapping

import yaml

from fieldsync.errors import ConfigError

DEFAULTS: dict[str, Any] = {
    "DATA_DIR": "var",                 # SQLite database, secret key file, media (embedded defaults)
    "DEFS_DIR": "entity_defs",         # the YAML definitions
    "DATABASE_URL": None,              # None: sqlite:///<DATA_DIR>/fieldsync.db
    "SECRET_KEY": None,                # None: <DATA_DIR>/secret.key (mode 0600), created when the server is set up
    "TOKEN_TTL_SECONDS": 12 * 3600,
    "TOKEN_IDLE_SECONDS": 900,         # a user token unused this long is refused (HIPAA automatic logoff)
    "DEVICE_TOKEN_IDLE_SECONDS": 14 * 86400,   # a device token's idle limit: devices are offline for days
    "DEVICE_TOKEN_TTL_SECONDS": 30 * 86400,    # lifetime of a device token issued at registration
    "AUTH_FAILURE_LIMIT": 10,          # failed authentications per client address (and per device) ...
    "AUTH_FAILURE_WINDOW_SECONDS": 60,  # ... within this many seconds; beyond: 429 with Retry-After
    "MAX_BODY_BYTES": 4 * 1024 * 1024,
    "TRANSFER_MAX_BYTES": 1024 ** 3,  # Tus-Max-Size: the largest resumable upload (/api/v1/transfer/), 413 above
    "TRANSFER_EXPIRES_SECONDS": 7 * 86400,  # an upload idle this long expires (Upload-Expires); then swept
    "PAGE_SIZE_DEFAULT": 50,
    "PAGE_SIZE_MAX": 1000,
    "AUTO_MIGRATE": True,              # additive migrations when the server starts
    "DATABASE_CONNECT_TIMEOUT": 5,     # PostgreSQL: seconds to open a connection (libpq connect_timeout, TCP keepalive)
    "DATABASE_POOL_TIMEOUT": 5,        # seconds a request waits for a pooled connection; then 503
    "DATABASE_STATEMENT_TIMEOUT": None,   # PostgreSQL statement_timeout in seconds (None: none; see docs/operations.md)
    "DATABASE_LOCK_TIMEOUT": None,     # PostgreSQL lock_timeout in seconds (None: none)
    "QUEUE_URL": None,                 # None: sqlite:///<DATA_DIR>/queue.db (the embedded queue)
    "QUEUE_ENCRYPTION": True,          # seal every queued payload with AES-256-GCM (invariant 7)
    "READY_TIMEOUT_SECONDS": 2.0,      # GET /api/v1/ready waits this long for the database before answering 503
    "QUEUE_SEND_TIMEOUT": 3.0,         # seconds a push waits for the queue; then its batch is spooled in the database
    "QUEUE_RETRY_SECONDS": 5.0,        # while the queue fails, one push tries it again this often (the rest are spooled)
    "KEY_PROVIDER": "local",           # where data keys come from: local = a master key in KEYS_DIR
    "KEYS_DIR": None,                  # None: <DATA_DIR>/keys (mode 0700; master.key 0600)
    "KMS_KEY_ID": None,                # KEY_PROVIDER=kms: the KMS key (id, key ARN, alias name or alias ARN)
    "KMS_ENDPOINT_URL": None,          # KEY_PROVIDER=kms: another endpoint (None: AWS_ENDPOINT_URL[_KMS], else AWS)
    "KMS_CONNECT_TIMEOUT": 2,          # seconds to connect to KMS; then the key operation fails (503 where a request needed it)
    "KMS_READ_TIMEOUT": 3,             # seconds to wait for KMS's answer
    "KMS_MAX_ATTEMPTS": 2,             # attempts per KMS call (botocore's retries), the first included
    "KMS_RETRY_SECONDS": 2,            # after KMS did not answer, key operations fail at once for this long
    "KEY_CACHE_SECONDS": 5,            # unwrapped data keys are cached this long; rotations and shreds reach every server within it
    "KEY_RETIRE_GRACE_SECONDS": None,  # None: KEY_CACHE_SECONDS + 120; a retired key is destroyed no sooner
    "KEY_MAINTENANCE_SECONDS": 300,    # the server re-encrypts values under retired keys this often
    "SYNC_LISTENERS": 2,               # threads applying pushed batches; 0: this process only receives
    "SYNC_VISIBILITY_TIMEOUT": 60,     # seconds a claimed batch stays hidden; a dead worker's comes back after it
    "SYNC_MAX_MUTATIONS": 1000,        # per push request (413 above)
    "SYNC_MAX_PULL_LIMIT": 10000,      # changes per pull page
    "PUSH_BUNDLE_MAX_MUTATIONS": 100000,   # per outbox bundle (POST /api/v1/sync/push-bundle; 413 above)
    "SYNC_BUNDLES": True,              # snapshots (first sync, rescope, reset) as bundles for devices that ask
    "BUNDLE_MIN_ROWS": 500,            # below this many rows a snapshot comes as pull pages
    "BUNDLE_MAX_AGE_SECONDS": 3600,    # a bundle older than this is rebuilt rather than handed out
    "BUNDLE_MAX_LAG": 10000,           # ... and so is one whose cursor is this many positions behind the head
    "BUNDLE_FRAME_BYTES": 1024 * 1024,  # rows per chunk: about this many bytes before compression
    "BUNDLE_REFRESH_SECONDS": 60,      # how often `fieldsync serve` rebuilds stale bundles devices still take
    "RETENTION_DAYS": 90,              # change log and tombstones; older devices get a typed reset
    "PROCESSING_LOG_DAYS": 14,         # days of fs_processing_log kept (one row per handled push batch)
    "AUDIT_RETENTION_DAYS": 2192,      # audit entries kept (6 years, HIPAA 164.316(b)(2)); `fieldsync audit purge`
    "AUDIT_CHECKPOINT_EVERY": 1000,    # sign an Ed25519 checkpoint every this many audit entries (0: only on demand)
    "AUDIT_SIGNING_KEY": None,         # None: <KEYS_DIR>/audit-signing.key (Ed25519, mode 0600, created on first use)
    "AUDIT_ANCHOR_DIR": None,          # None: the signing key's directory; audit-anchor.json: the last checkpoint
    "AUDIT_ANCHOR_S3": None,           # s3://<bucket>[/<key>]: a second copy of the anchor in an object store
    "AUDIT_ANCHOR_S3_ENDPOINT_URL": None,  # another S3 endpoint (None: boto3's, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
    "MEDIA_STORE": "local",            # local: <DATA_DIR>/media, served by signed links; s3://bucket/prefix: presigned S3
    "MEDIA_URL_TTL": 300,              # seconds a media download link (signed or presigned) and an S3 upload form are valid
    "MEDIA_KMS_KEY_ID": None,          # S3: the KMS key PHI media is encrypted with (SSE-KMS); None: the bucket's aws/s3 key
    "MEDIA_S3_ENDPOINT_URL": None,     # another S3 endpoint for media (None: boto3's, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)
    "HOST": "127.0.0.1",
    "PORT": 8000,
    "TLS_CERT": None,                  # serve HTTPS with this PEM certificate chain (with TLS_KEY)
    "TLS_KEY": None,                   # the PEM private key of TLS_CERT (keep it mode 0600)
    "BEHIND_TLS_PROXY": False,         # serve plain HTTP beyond loopback: a proxy in front terminates TLS
    "ADMIN_UI": True,                  # mount the admin UI (the fieldsync_admin package) at /admin
    "ADMIN_IDLE_SECONDS": 900,         # an admin UI session unused this long is logged off (HIPAA automatic logoff)
}

ENV_PREFIX = "FIELDSYNC_"
TEST_PREFIX = ENV_PREFIX + "TEST_"   # the test suite's own variables (tests/), never settings


class Config(dict):
    """A plain dict of settings with helpers for the derived ones."""

    @property
    def data_dir(self) -> Path:
        return Path(self["DATA_DIR"])

    @property
    def database_url(self) -> str:
        url = self.get("DATABASE_URL")
        if url:
            return url
        return f"sqlite:///{(self.data_dir / 'fieldsync.db').resolve()}"

    @property
    def queue_url(self) -> str:
        """The push queue's URL: configured, or the embedded SQLite queue in the data directory."""
        url = self.get("QUEUE_URL")
        return url if url else f"sqlite:///{self.data_dir / 'queue.db'}"

    @property
    def secret_key_file(self) -> Path:
        """Where the token-signing secret lives when SECRET_KEY is not set."""
        return self.data_dir / "secret.key"

    def secret_key(self) -> bytes:
        """The token-signing secret: configured, or read from the data directory. Reading writes
        nothing: without either, a ConfigError says how to get one (`create_secret_key`)."""
        configured = self.get("SECRET_KEY")
        if configured:
            return configured.encode() if isinstance(configured, str) else configured
        path = self.secret_key_file
        try:
            return path.read_text().strip().encode()
        except FileNotFoundError:
            raise ConfigError(f"no token-signing secret: SECRET_KEY is not set and {path} does not exist; the "
                              "server creates it when it starts on this data directory (fieldsync run, serve, "
                              "worker), or set SECRET_KEY") from None

    def create_secret_key(self) -> bytes:
        """The token-signing secret, created once in the data directory (mode 0600) when SECRET_KEY
        is not set and the file is not there yet. Only setting up a server calls this (create_app)."""
        if not self.get("SECRET_KEY"):
            path = self.secret_key_file
            self.data_dir.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w") as fh:
                    fh.write(secrets.token_urlsafe(48))
        return self.secret_key()


def _coerce(raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"expected true or false, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"expected a whole number, got {raw!r}") from None
    try:
        return json.loads(raw) if raw[:1] in "[{" else raw
    except ValueError:
        return raw


def _known(key: str, shown: str, where: str) -> str:
    """`key` when it is a setting; else a ConfigError naming it (as `shown`) and the closest setting."""
    if key in DEFAULTS:
        return key
    closest = difflib.get_close_matches(key, DEFAULTS, n=1, cutoff=0.0)[0]
    suggestion = shown[:len(shown) - len(key)] + closest
    raise ConfigError(f"unknown setting {shown} ({where}); did you mean {suggestion}? "
                      "(docs/configuration.md lists every setting)")


def load_config(file: str | Path | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
    """Merge defaults, an optional YAML/JSON file, FIELDSYNC_* variables and overrides; an
    unknown key in any of them is a ConfigError."""
    config = Config(DEFAULTS)
    env = os.environ if env is None else env
    file = file or env.get(ENV_PREFIX + "CONFIG")
    if file:
        path = Path(file)
        try:
            loaded = yaml.safe_load(path.read_text("utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the configuration file must hold a mapping of settings")
        config.update({_known(str(k).upper(), str(k), f"in {path}"): v for k, v in loaded.items()})
    for key, raw in env.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "CONFIG" and not key.startswith(TEST_PREFIX):
            name = _known(key[len(ENV_PREFIX):], key, "an environment variable")
            try:
                config[name] = _coerce(raw, DEFAULTS[name])
            except ConfigError as exc:
                raise ConfigError(f"{key}: {exc}") from None
    if overrides:
        config.update({_known(k.upper(), k, "passed to the configuration"): v for k, v in overrides.items()})
    return config
