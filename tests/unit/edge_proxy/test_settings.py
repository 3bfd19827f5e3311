"""Settings: defaults, sources and readable validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedhub.edge_proxy.__main__ import main
from fedhub.edge_proxy.settings import EdgeProxySettings
from fedhub.schemas.config import ConfigError, load_settings


def test_defaults() -> None:
    settings = load_settings(EdgeProxySettings)
    assert settings.port == 8000 and settings.name == "edge"
    assert settings.key_path.name == "edge-proxy-edge.pem"


def test_toml_section_env_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "fedhub.toml"
    config.write_text('[edge_proxy]\nport = 9000\nhub_url = "http://hub:8081/"\nname = "e1"\n')
    monkeypatch.setenv("FEDHUB_NAME", "e2")
    settings = load_settings(EdgeProxySettings, config, host="0.0.0.0")
    assert (settings.port, settings.hub_url, settings.name, settings.host) == (
        9000, "http://hub:8081", "e2", "0.0.0.0")


@pytest.mark.parametrize("field, value, words", [
    ("port", 70000, "port"),
    ("hub_url", "hub:8081", "hub_url: Value error, must be an http(s) URL"),
    ("nats_url", "http://x", "nats_url"),
    ("name", "Edge One", "name"),
])
def test_invalid_values_are_named(field: str, value: object, words: str) -> None:
    with pytest.raises(ConfigError, match="invalid EdgeProxySettings") as info:
        load_settings(EdgeProxySettings, None, **{field: value})
    assert words in str(info.value)


def test_main_reports_bad_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedhub edge-proxy: invalid EdgeProxySettings") and "port" in err
