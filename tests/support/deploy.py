"""Checks shared by the deployment tests (deploy/systemd, deploy/kubernetes): settings
files that the components would read, and read whole."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from fedhub.coordinator.settings import CoordinatorSettings
from fedhub.edge_proxy.settings import EdgeProxySettings
from fedhub.schemas.config import load_settings
from fedhub.site_agent.settings import SiteAgentSettings

# Each component's settings and the TOML table of its configuration file.
SETTINGS: dict[str, tuple[type[BaseSettings], str]] = {
    "coordinator": (CoordinatorSettings, "coordinator"),
    "edge-proxy": (EdgeProxySettings, "edge_proxy"),
    "site-agent": (SiteAgentSettings, "site_agent"),
}


def without_fedhub_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop the test machine's own FEDHUB_* variables, which would override the file."""
    for key in list(os.environ):
        if key.startswith("FEDHUB_"):
            monkeypatch.delenv(key)


def load_whole(component: str, path: Path) -> tuple[BaseSettings, dict[str, Any]]:
    """``component``'s settings from ``path``, and the file's table; fails on a key the
    component would ignore (a misspelt one is otherwise silently dropped)."""
    cls, section = SETTINGS[component]
    table: dict[str, Any] = tomllib.loads(path.read_text())[section]
    unknown = set(table) - set(cls.model_fields)
    assert not unknown, f"{path.name}: keys {component} would ignore: {sorted(unknown)}"
    return load_settings(cls, path), table


def is_setting(component: str, variable: str) -> bool:
    """True if ``FEDHUB_<NAME>`` names one of ``component``'s settings."""
    return variable.removeprefix("FEDHUB_").lower() in SETTINGS[component][0].model_fields
