"""Settings validation gives clear messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedhub.schemas.config import ConfigError, load_settings
from fedhub.site_agent.__main__ import main
from fedhub.site_agent.settings import SiteAgentSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(SiteAgentSettings)
    assert s.site == "local" and s.agent_id.endswith("-local")
    assert s.key_path.name == "site-agent-local.pem"


def test_toml_section_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "fedhub.toml"
    cfg.write_text('[site_agent]\nsite = "hpc"\npoll_interval = 9\n')
    monkeypatch.setenv("FEDHUB_POLL_INTERVAL", "3")
    s = load_settings(SiteAgentSettings, cfg, data_dir=tmp_path)
    assert (s.site, s.poll_interval, s.data_dir) == ("hpc", 3.0, tmp_path)


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"site": "my site"}, "invalid site name 'my site'"),
    ({"site": "HPC"}, "canonical form 'hpc'"),
    ({"poll_interval": 0}, "poll_interval: Input should be greater than 0"),
    ({"heartbeat_interval": -1}, "heartbeat_interval"),
    ({"nats_url": "http://x"}, "must start with nats://"),
])
def test_invalid_settings_are_explained(overrides: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(SiteAgentSettings, **overrides)
    assert fragment in str(err.value)


def test_cli_reports_config_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--site", "no spaces please", "--data-dir", str(tmp_path)]) == 2
    assert "invalid site name" in capsys.readouterr().err
