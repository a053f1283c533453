"""Configuration: precedence, validation messages, and config.example.toml kept complete."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mldropd.errors import ConfigError
from mldropd.settings import Settings, describe, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_example_config_lists_every_setting_with_its_default() -> None:
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    documented = {(s, k): v for s, keys in example.items() for k, v in keys.items()}
    declared = {(s, k): default for s, k, default, _ in describe()}
    assert documented == declared


def test_example_config_loads(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text((ROOT / "config.example.toml").read_text())
    settings = load_settings(config, env={})
    assert settings.server.port == 8080
    assert settings.database.path == str(tmp_path / "mldropd.db")  # relative to the file


def test_precedence_defaults_file_env_flags(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n[dq]\npsi_warn = 0.2\n')
    env = {"MLDROPD_SERVER__PORT": "9100", "MLDROPD_EMAIL__STARTTLS": "false"}
    settings = load_settings(config, env=env, overrides={"server": {"port": 9200}})
    assert settings.server.port == 9200
    assert settings.server.host == "0.0.0.0"
    assert settings.dq.psi_warn == 0.2 and settings.dq.psi_alert == 0.25
    assert settings.email.starttls is False
    assert load_settings(config, env=env).server.port == 9100


@pytest.mark.parametrize(
    ("text", "env", "words"),
    [
        ("[server]\nprot = 1\n", {}, "unknown key 'prot' in [server]"),
        ("[serve]\nport = 1\n", {}, "unknown section [serve]"),
        ("[server]\nport = 'abc'\n", {}, "[server] port"),
        ("[server]\nport = \n", {}, "is not valid TOML"),
        ("", {"MLDROPD_ENGINE__BATCH_ROWS": "many"}, "[engine] batch_rows (from environment)"),
        ("", {"MLDROPD_ENGINE__NOPE": "1"}, "unknown key 'nope' in [engine] (environment)"),
        ("[storage]\nkind = 'ftp'\n", {}, "[storage] kind = 'ftp' is not one of"),
        ("[scheduler]\nsweep = '0 25 * * *'\n", {}, "[scheduler] sweep"),
        ("[scheduler]\ntimezone = 'Mars/Olympus'\n", {}, "not a known time zone"),
        ("[storage]\nkind = 's3'\n", {}, "[storage] bucket must be set"),
        ("[dq]\nsamples_days = -1\n", {}, "[dq] samples_days must be 0"),
    ],
)
def test_wrong_config_names_the_key(
    tmp_path: Path, text: str, env: dict[str, str], words: str
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config, env=env)
    assert words in str(info.value)


def test_missing_explicit_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})


def test_settings_round_trip_for_the_batch_job(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[engine]\nbatch_rows = 123\n")
    settings = load_settings(config, env={})
    again = Settings.from_dict(settings.to_dict())
    assert again.to_dict() == settings.to_dict()


def test_engine_and_store_that_cannot_work_together_are_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[engine]\ndefault = "spark"\n[features]\nkind = "duckdb"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, env={})
    assert '[engine] default = "spark"' in str(caught.value)
    assert '[features] kind = "duckdb"' in str(caught.value)
    config.write_text('[engine]\ndefault = "local"\n[features]\nkind = "spark_table"\n')
    with pytest.raises(ConfigError, match=r'\[features\] kind = "spark_table"'):
        load_settings(config, env={})
    check = subprocess.run(
        [sys.executable, "-m", "mldropd", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 1 and '[engine] default = "local" cannot read' in check.stderr
