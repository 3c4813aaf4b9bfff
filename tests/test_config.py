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


def test_secret_key_created_once_with_mode_0600(tmp_path):
    config = load_config(env={}, overrides={"DATA_DIR": str(tmp_path / "data")})
    first = config.secret_key()
    assert len(first) >= 32 and config.secret_key() == first
    mode = stat.S_IMODE(os.stat(tmp_path / "data" / "secret.key").st_mode)
    assert mode == 0o600


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
