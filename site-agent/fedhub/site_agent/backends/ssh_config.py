"""The ``[site_agent.backend_config]`` table of an SSH site, validated with clear errors."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedhub.site_agent.backends.base import validated_config
from fedhub.site_agent.errors import BackendError

_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*")
_USERNAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")


def _address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(value):
        raise ValueError(f"{value!r} is neither a host name nor an IP address")
    return value


def _no_control(value: str, what: str) -> str:
    if not value or any(ord(c) < 32 for c in value):
        raise ValueError(f"{what} must be non-empty and free of control characters")
    return value


class SSHHost(BaseModel):
    """One machine the site runs servers on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str  # what the agent connects to (SSH) and reaches Jupyter at (HTTP)
    port: int = Field(default=22, ge=1, le=65535)
    username: str
    # Where Jupyter listens on the remote host; default: ``address``. The edge proxy (or
    # the agent's tunnel) must reach ``address`` at the server's port.
    bind: str = ""

    @field_validator("address", "bind")
    @classmethod
    def _valid_address(cls, value: str) -> str:
        return _address(value) if value else value

    @field_validator("username")
    @classmethod
    def _valid_username(cls, value: str) -> str:
        if not _USERNAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a POSIX user name")
        return value

    @property
    def label(self) -> str:
        """``user@address:port``, for messages and as the key of the host in job states."""
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.username}@{host}:{self.port}"

    @property
    def listen(self) -> str:
        """The address Jupyter binds on the remote host."""
        return self.bind or self.address


class SSHConfig(BaseModel):
    """Everything the SSH backend needs besides the agent's own settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hosts: list[SSHHost] = Field(min_length=1)
    client_key: Path  # the site's private key (unencrypted; readable by the agent only)
    known_hosts: Path  # OpenSSH known_hosts with every host's key: host keys are checked
    python: str = "python3"  # the remote Python with jupyterlab and fedhub installed
    jupyter_command: list[str] = Field(default_factory=list)  # default: python -m jupyterlab
    remote_data_dir: str = ".local/share/fedhub"  # absolute, or relative to the home dir
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    command_timeout: float = Field(default=30.0, gt=0, le=600)
    stop_grace: float = Field(default=10.0, gt=0, le=300)

    @field_validator("client_key", "known_hosts")
    @classmethod
    def _readable_file(cls, value: Path) -> Path:
        path = value.expanduser()
        if not path.is_file():
            raise ValueError(f"{path} does not exist or is not a file")
        return path

    @field_validator("python", "remote_data_dir")
    @classmethod
    def _plain(cls, value: str) -> str:
        _no_control(value, "the value")
        if value.startswith("~"):
            raise ValueError("'~' is not expanded: give an absolute path or one relative "
                             "to the remote home directory")
        return value

    @field_validator("jupyter_command")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        for word in value:
            _no_control(word, "every word of jupyter_command")
        return value

    @property
    def command(self) -> list[str]:
        """The remote Jupyter command line, before the per-server flags."""
        return list(self.jupyter_command) or [self.python, "-m", "jupyterlab"]


def load_config(raw: dict[str, Any]) -> SSHConfig:
    """Validate ``backend_config``; raises BackendError listing every problem."""
    config = validated_config(SSHConfig, raw, "SSH")
    labels = [h.label for h in config.hosts]
    if len(set(labels)) != len(labels):
        raise BackendError("invalid SSH backend_config: hosts: the same host is listed twice")
    return config
