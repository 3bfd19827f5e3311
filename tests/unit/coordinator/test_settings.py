"""Coordinator settings: TOML file < FEDHUB_* environment < explicit overrides."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedhub.coordinator.settings import CoordinatorSettings
from fedhub.schemas.config import ConfigError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("FEDHUB_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fedhub.toml"
    path.write_text(text)
    return path


SECTION = """
[coordinator]
port = 9001
public_url = "https://hub.example.org/"
admin_user = "Root-Admin"
slow_spawn_timeout = 30

[edge_proxy]
port = 8000
"""


def test_reads_the_coordinator_table(tmp_path: Path) -> None:
    s = load_settings(CoordinatorSettings, write(tmp_path, SECTION))
    assert s.port == 9001
    assert s.public_url == "https://hub.example.org"  # trailing slash dropped
    assert s.admin_user == "root-admin"  # normalized like any user name
    assert s.slow_spawn_timeout == 30
    assert s.host == "127.0.0.1"  # untouched defaults stay


def test_reads_top_level_keys_without_a_table(tmp_path: Path) -> None:
    s = load_settings(CoordinatorSettings, write(tmp_path, 'port = 9100\nname = "hub-a"\n'))
    assert (s.port, s.name) == (9100, "hub-a")


def test_no_file_means_defaults(tmp_path: Path) -> None:
    s = load_settings(CoordinatorSettings)
    assert s.port == 8081
    assert s.db_url == f"sqlite:///{tmp_path / 'home' / '.local/share/fedhub/coordinator.sqlite'}"


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDHUB_PORT", "9555")
    monkeypatch.setenv("FEDHUB_DATABASE_URL", "postgresql://db/fedhub")
    s = load_settings(CoordinatorSettings, write(tmp_path, SECTION))
    assert s.port == 9555
    assert s.db_url == "postgresql://db/fedhub"
    assert s.public_url == "https://hub.example.org"  # not in the env: file still counts


def test_explicit_overrides_win_over_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDHUB_PORT", "9555")
    s = load_settings(CoordinatorSettings, write(tmp_path, SECTION), port=7000,
                      admin_user="Boss")
    assert (s.port, s.admin_user) == (7000, "boss")


def test_override_of_none_means_not_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A command-line flag that was not passed arrives as None and must not hide the file.
    s = load_settings(CoordinatorSettings, write(tmp_path, SECTION), port=None)
    assert s.port == 9001
    monkeypatch.setenv("FEDHUB_PORT", "9555")
    assert load_settings(CoordinatorSettings, write(tmp_path, SECTION), port=None).port == 9555


@pytest.mark.parametrize(
    ("toml", "field", "why"),
    [
        ("[coordinator]\nport = 70000\n", "port", "less than or equal to 65535"),
        ("[coordinator]\nport = -1\n", "port", "greater than or equal to 0"),
        ('[coordinator]\npublic_url = "ftp://x"\n', "public_url", "http:// or https://"),
        ('[coordinator]\nadmin_user = "../x"\n', "admin_user", "'/'"),
        ('[coordinator]\nadmin_user = ""\n', "admin_user", "must not be empty"),
        ("[coordinator]\ncookie_max_age = 0\n", "cookie_max_age", "greater than 0"),
        ('[coordinator]\nport = "high"\n', "port", "integer"),
    ],
)
def test_invalid_file_values_name_the_field(
    tmp_path: Path, toml: str, field: str, why: str
) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_settings(CoordinatorSettings, path)
    message = str(info.value)
    assert f"{field}:" in message
    assert why in message
    assert str(path) in message


def test_invalid_env_value_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDHUB_PORT", "70000")
    with pytest.raises(ConfigError, match="port:"):
        load_settings(CoordinatorSettings, write(tmp_path, SECTION))


def test_invalid_override_names_the_field() -> None:
    with pytest.raises(ConfigError, match="public_url:.*http:// or https://"):
        load_settings(CoordinatorSettings, public_url="hub.example.org")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"cannot read config file {path}"):
        load_settings(CoordinatorSettings, path)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "dir.toml"
    path.mkdir()  # reading a directory fails for every user, root included
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(CoordinatorSettings, path)


@pytest.mark.parametrize("text", ["[coordinator\nport = 1\n", "port = \n", "port = 1\nport = 2\n"])
def test_invalid_toml_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(CoordinatorSettings, write(tmp_path, text))
