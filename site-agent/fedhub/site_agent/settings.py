"""Settings of the site agent: ``FEDHUB_*`` variables and the ``[site_agent]`` TOML table."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedhub.schemas.config import default_data_dir
from fedhub.schemas.names import InvalidName, normalize_user_name


def _default_jupyter_command() -> list[str]:
    return [sys.executable, "-m", "jupyterlab"]


class SiteAgentSettings(BaseSettings):
    """Everything one site agent needs; load with ``fedhub.schemas.config.load_settings``."""

    model_config = SettingsConfigDict(env_prefix="FEDHUB_", extra="ignore")
    toml_section: ClassVar[str] = "site_agent"

    nats_url: str = "nats://127.0.0.1:4222"
    site: str = "local"
    data_dir: Path = Field(default_factory=default_data_dir)
    agent_id: str = ""
    heartbeat_interval: float = Field(default=5.0, gt=0)
    poll_interval: float = Field(default=2.0, gt=0)
    ready_timeout: float = Field(default=120.0, gt=0)
    stop_servers_on_exit: bool = False
    credentials: Path | None = None  # bundle from `fedhub site add`: site, NATS, key
    tunnel: bool = False  # servers reachable only through the agent's outbound tunnels
    tunnel_keepalive: float = Field(default=15.0, gt=0)  # s; 3 missed answers: reconnect
    backend: str = "local"  # local | slurm | docker | ssh | htcondor
    backend_config: dict[str, Any] = Field(default_factory=dict)  # [site_agent.backend_config]
    jupyter_command: list[str] = Field(default_factory=_default_jupyter_command, min_length=1)

    @field_validator("site")
    @classmethod
    def _valid_site(cls, value: str) -> str:
        try:
            name = normalize_user_name(value)
        except InvalidName as exc:
            raise ValueError(f"invalid site name {value!r}: {exc}") from exc
        if name != value:
            raise ValueError(f"site name {value!r} must be written in canonical form {name!r}")
        return name

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from fedhub.site_agent.backends.registry import BACKENDS

        if value not in BACKENDS:
            raise ValueError(f"unknown backend {value!r}; choose one of {', '.join(BACKENDS)}")
        return value

    @field_validator("nats_url")
    @classmethod
    def _valid_nats_url(cls, value: str) -> str:
        if not value.startswith(("nats://", "tls://", "ws://", "wss://")):
            raise ValueError(f"NATS URL {value!r} must start with nats://, tls://, ws:// or wss://")
        return value

    @model_validator(mode="after")
    def _fill_agent_id(self) -> SiteAgentSettings:
        if not self.agent_id:
            self.agent_id = f"{socket.gethostname()}-{self.site}"
        self.data_dir = self.data_dir.expanduser()
        return self

    @property
    def key_path(self) -> Path:
        """Where the agent's private Ed25519 key lives."""
        return self.data_dir / "keys" / f"site-agent-{self.site}.pem"

    @property
    def trusted_keys_path(self) -> Path:
        """The edge proxies' public keys, read by every single-user server."""
        return self.data_dir / "trusted-keys.json"
