"""Configuration layers: defaults < file < FIELDSYNC_* environment < explicit overrides."""

from __future__ import annotations

import os
import stat

import pytest

from fieldsync.config import DEFAULTS, load_config
from fieldsync.errors import ConfigError


def test_layers_override_in_order(tmp_path):
    file = tmp_path / "fieldsync.yaml"
    file.write_text("port: 9000\npage_size_max: 200\ndefs_dir: from-file\n")
    env = {"FIELDSYNC_PORT": "9100", "FIELDSYNC_AUTO_MIGRATE": "false", "UNRELATED": "x"}
    config = load_config(file=file, env=env, overrides={"defs_dir": "from-code"})
    assert config["PORT"] == 9100                 # env beats file
    assert config["PAGE_SIZE_MAX"] == 200         # file beats default
    assert config["DEFS_DIR"] == "from-code"      # overrides beat everything
    assert config["AUTO_MIGRATE"] is False
    assert config["MAX_BODY_BYTES"] == DEFAULTS["MAX_BODY_BYTES"]
    assert "UNRELATED" not in config


def test_config_file_from_environment(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("database_url: postgresql://db.example/fs\n")
    config = load_config(env={"FIELDSYNC_CONFIG": str(file)})
    assert config.database_url == "postgresql://db.example/fs"


def test_default_database_is_sqlite_in_the_data_dir(tmp_path):
    config = load_config(env={}, overrides={"DATA_DIR": str(tmp_path)})
    assert config.database_url == f"sqlite:///{tmp_path.resolve() / 'fieldsync.db'}"


def test_reading_the_secret_key_writes_nothing(tmp_path):
    config = load_config(env={}, overrides={"DATA_DIR": str(tmp_path / "data")})
    with pytest.raises(ConfigError, match="no token-signing secret"):
        config.secret_key()
    assert not (tmp_path / "data").exists()
    assert load_config(env={"FIELDSYNC_SECRET_KEY": "s3"}).secret_key() == b"s3"


def test_secret_key_created_once_with_mode_0600(tmp_path):
    config = load_config(env={}, overrides={"DATA_DIR": str(tmp_path / "data")})
    first = config.create_secret_key()
    assert len(first) >= 32 and config.create_secret_key() == first and config.secret_key() == first
    mode = stat.S_IMODE(os.stat(tmp_path / "data" / "secret.key").st_mode)
    assert mode == 0o600


def test_the_server_set_up_creates_the_secret_key(tmp_path):
    from fieldsync.api import create_app
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "SYNC_LISTENERS": 0})
    state = app.extensions["fieldsync"]
    try:
        assert (tmp_path / "data" / "secret.key").read_text().strip().encode() == state.secret_bytes
    finally:
        state.sync.close()
        state.engine.dispose()


@pytest.mark.parametrize("layer,message", [
    ({"env": {"FIELDSYNC_DATABSE_URL": "sqlite://"}},
     "unknown setting FIELDSYNC_DATABSE_URL (an environment variable); did you mean FIELDSYNC_DATABASE_URL?"),
    ({"env": {}, "overrides": {"retention_dayz": 3}},
     "unknown setting retention_dayz (passed to the configuration); did you mean RETENTION_DAYS?"),
    ({"env": {"FIELDSYNC_QUEUE": "sqs://x"}}, "did you mean FIELDSYNC_QUEUE_URL?"),
])
def test_an_unknown_key_is_named_with_the_closest_known_one(layer, message):
    with pytest.raises(ConfigError) as caught:
        load_config(**layer)
    assert message in str(caught.value)


def test_an_unknown_key_in_the_file_is_an_error(tmp_path):
    file = tmp_path / "fieldsync.yaml"
    file.write_text("port: 9000\nsync_listener: 4\n")
    with pytest.raises(ConfigError, match=f"unknown setting sync_listener \\(in {file}\\); did you mean "
                                          "SYNC_LISTENERS"):
        load_config(file=file, env={})


def test_the_test_suites_variables_are_not_settings():
    assert "TEST_PG_URL" not in load_config(env={"FIELDSYNC_TEST_PG_URL": "postgresql://x"})


def test_create_app_refuses_an_unknown_key(tmp_path):
    from fieldsync.api import create_app
    with pytest.raises(ConfigError, match="did you mean SYNC_LISTENERS"):
        create_app({"DATA_DIR": str(tmp_path), "SYNC_LISTENER": 1})
    assert not (tmp_path / "secret.key").exists()


@pytest.mark.parametrize("env,message", [
    ({"FIELDSYNC_PORT": "eighty"}, "FIELDSYNC_PORT: expected a whole number"),
    ({"FIELDSYNC_AUTO_MIGRATE": "maybe"}, "FIELDSYNC_AUTO_MIGRATE: expected true or false"),
])
def test_bad_environment_values_are_named(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_bad_file_is_a_config_error(tmp_path):
    file = tmp_path / "bad.yaml"
    file.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(file=file, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(file=tmp_path / "missing.yaml", env={})
