"""Coordinator settings (env prefix ``FEDHUB_``, TOML table ``[coordinator]``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fedhub.schemas.config import default_data_dir
from fedhub.schemas.names import InvalidName, normalize_user_name


class CoordinatorSettings(BaseSettings):
    """Everything the coordinator needs; secrets stay in files under ``data_dir``."""

    model_config = SettingsConfigDict(env_prefix="FEDHUB_", extra="ignore")
    toml_section: ClassVar[str] = "coordinator"

    nats_url: str = "nats://127.0.0.1:4222"  # several: comma-separated (one cluster)
    # Servers of the NATS cluster that keep a copy of the log (3 for a 3-node cluster: the
    # log survives the loss of any one); an existing stream is scaled up to it.
    stream_replicas: int = Field(1, ge=1, le=5)
    host: str = "127.0.0.1"
    port: int = Field(8081, ge=0, le=65535)
    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str = ""  # default: SQLite in data_dir
    public_url: str = "http://127.0.0.1:8000"
    name: str = "coordinator"
    admin_user: str = "admin"
    admin_password: str = ""  # set on first start only; never logged
    cli_token_file: Path | None = None
    cookie_max_age: float = Field(14 * 24 * 3600, gt=0)
    slow_spawn_timeout: float = Field(10.0, ge=0)
    site_offline_after: float = Field(15.0, gt=0)  # no heartbeat for this long: unreachable
    site_lost_after: float = Field(3600.0, gt=0)  # unreachable this long: its servers are lost
    health_interval: float = Field(2.0, gt=0)
    max_body_bytes: int = Field(1 << 20, gt=0)
    # Failed logins allowed per user name and per client address within the window (0: no
    # limit); beyond them, logins are refused with 429 until the oldest failure is older.
    login_failures_per_user: int = Field(10, ge=0)
    login_failures_per_address: int = Field(30, ge=0)
    login_failure_window: float = Field(600.0, gt=0)
    # Hosts whose X-Forwarded-For names the client (the edge proxies), comma-separated.
    trusted_proxies: str = "127.0.0.1,::1"

    @field_validator("admin_user")
    @classmethod
    def _admin_name(cls, value: str) -> str:
        try:
            return normalize_user_name(value)
        except InvalidName as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL (SQLite under data_dir unless database_url is set)."""
        return self.database_url or f"sqlite:///{self.data_dir / 'coordinator.sqlite'}"
