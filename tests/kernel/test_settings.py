"""Settings: defaults that run on one machine, TOML then environment, secrets masked."""

from pathlib import Path

import pytest

from alliance.errors import ConfigError
from alliance.settings import MASK, load_settings


def test_defaults_are_local_store_and_sqlite_under_dot_alliance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(env={})
    assert settings.effective_store_url == (tmp_path / ".alliance" / "store").as_uri()
    assert settings.effective_catalog_url == f"sqlite:///{tmp_path / '.alliance' / 'catalog.db'}"
    assert settings.runner.runner == "FnApiRunner"
    assert settings.source == "defaults"


def test_environment_wins_over_toml(tmp_path):
    config = tmp_path / "alliance.toml"
    config.write_text('store_url = "s3://from-toml/x"\ncatalog_url = "sqlite:///toml.db"\n'
                      '[s3]\nendpoint_url = "http://toml:9000"\npart_size_mb = 16\n[runner]\ndirect_num_workers = 3\n')
    settings = load_settings(env={"ALLIANCE_STORE": "s3://from-env/y", "ALLIANCE_S3_PART_SIZE_MB": "32"},
                             config_file=config)
    assert settings.store_url == "s3://from-env/y"
    assert settings.catalog_url == "sqlite:///toml.db"
    assert settings.s3.endpoint_url == "http://toml:9000"
    assert settings.s3.part_size_mb == 32
    assert settings.runner.workers() == 3
    assert settings.source == f"defaults < {config} < env"


def test_settings_are_frozen():
    settings = load_settings(env={})
    with pytest.raises(Exception):
        settings.store_url = "file:///elsewhere"  # type: ignore[misc]


def test_secrets_are_masked():
    settings = load_settings(env={"ALLIANCE_S3_ACCESS_KEY_ID": "AKIAEXAMPLEKEY123", "ALLIANCE_S3_SECRET_ACCESS_KEY": "s3cr3t",
                                  "ALLIANCE_CATALOG": "postgresql+psycopg://bob:hunter2@db:5432/alliance"})
    shown = settings.masked()
    assert shown["s3"]["secret_access_key"] == MASK
    assert shown["s3"]["access_key_id"] == "AKIA" + MASK
    assert "hunter2" not in shown["catalog_url"] and "bob:" + MASK in shown["catalog_url"]
    assert "s3cr3t" not in repr(settings)


def test_unknown_toml_setting_names_the_file_and_key(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[s3]\nendpoint = 'x'\n")
    with pytest.raises(ConfigError, match=r"bad.toml: unknown setting \[s3\].endpoint"):
        load_settings(env={}, config_file=config)


def test_malformed_number_is_a_clear_error():
    with pytest.raises(ConfigError, match="ALLIANCE_BEAM_WORKERS: expected int"):
        load_settings(env={"ALLIANCE_BEAM_WORKERS": "two"})


def test_missing_config_file_named_by_env_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_settings(env={"ALLIANCE_CONFIG": str(tmp_path / "nope.toml")})
