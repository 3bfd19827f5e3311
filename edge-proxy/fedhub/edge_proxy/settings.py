"""Settings of one edge proxy instance (``FEDHUB_*`` variables, ``[edge_proxy]`` in TOML)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedhub.schemas.config import default_data_dir
from fedhub.schemas.names import subject_token


class EdgeProxySettings(BaseSettings):
    """Where the proxy listens, where the log and the coordinator are, and its identity."""

    model_config = SettingsConfigDict(env_prefix="FEDHUB_", extra="ignore")
    toml_section: ClassVar[str] = "edge_proxy"

    nats_url: str = "nats://127.0.0.1:4222"
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    hub_url: str = "http://127.0.0.1:8081"
    data_dir: Path = Field(default_factory=default_data_dir)
    name: str = "edge"
    admin_access: bool = False
    upstream_timeout: float = Field(default=30.0, gt=0)
    access_log: bool = False  # one log line per request costs throughput; off by default
    # SSH endpoint for site agents' tunnels: port 0 picks a free port, -1 turns it off.
    tunnel_host: str = "127.0.0.1"
    tunnel_port: int = Field(default=0, ge=-1, le=65535)
    tunnel_advertise_host: str = ""  # what agents dial; empty: tunnel_host
    tunnel_keepalive: float = Field(default=15.0, gt=0)  # seconds; 3 missed answers: gone

    @field_validator("hub_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL with a host, not {value!r}")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"must not carry a path, query or fragment: {value!r}")
        return value.rstrip("/")

    @field_validator("nats_url")
    @classmethod
    def _nats_url(cls, value: str) -> str:
        for server in value.split(","):
            parts = urlsplit(server.strip())
            if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
                raise ValueError(f"must be a nats:// (or tls://, ws://) URL, not {server!r}")
        return value

    @field_validator("name")
    @classmethod
    def _instance_name(cls, value: str) -> str:
        # The name appears in a key file name and in the key's published identity.
        if not value or subject_token(value) != value:
            raise ValueError("must be non-empty lowercase letters, digits and '-'")
        return value

    @property
    def key_path(self) -> Path:
        """This instance's private signing key (created on first start)."""
        return self.data_dir / "keys" / f"edge-proxy-{self.name}.pem"
