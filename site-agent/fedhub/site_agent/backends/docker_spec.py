"""Pure parts of the Docker backend: its configuration, container specs, labels, names.

Nothing here talks to dockerd, so all of it is unit-tested. Only validated values reach a
container spec: names are derived with :func:`docker_token`, options come normalized from
the agent's validator and are checked again against the chosen profile here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedhub.schemas.names import subject_token
from fedhub.schemas.resources import OptionKind, OptionSpec, parse_memory
from fedhub.site_agent.backends.base import JobReport, JobStatus, ServerSpec, validated_config
from fedhub.site_agent.backends.server_flags import SERVER_FLAGS
from fedhub.site_agent.errors import BackendError

LABEL_SITE = "fedhub.site"
LABEL_USER = "fedhub.user"
LABEL_SERVER = "fedhub.server"
LABEL_SPAWN = "fedhub.spawn_id"
KEYS_MOUNT = "/etc/fedhub"  # the agent's trusted-keys directory, read-only
KEYS_FILE = "trusted-keys.json"
PORT = 8888  # inside the container; published on an ephemeral host port

_PROFILE = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}")
_NETWORK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DOCKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{1,200}")
_PATH = re.compile(r"(/[A-Za-z0-9._-]+)+")
_USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}|\d{1,9}(:\d{1,9})?")
_TOKEN_MAX = 40


class Profile(BaseModel):
    """One kind of container users may choose: an image and its resource limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str
    cpus: float = Field(gt=0, le=1024)
    memory: int = Field(description="MiB; '4G', '512M' are accepted")
    description: str = ""

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not _IMAGE.fullmatch(value):
            raise ValueError(f"{value!r} is not an image reference such as fedhub-singleuser:1")
        return value

    @field_validator("memory", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> int:
        mib = parse_memory(value)
        if mib < 64:
            raise ValueError("must be at least 64 MiB (Jupyter does not start in less)")
        return mib


class DockerConfig(BaseModel):
    """``[site_agent.backend_config]`` of a Docker site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    docker_url: str = ""  # "" means DOCKER_HOST or the local socket
    profiles: dict[str, Profile] = Field(min_length=1)
    default_profile: str = ""  # "" means the first profile
    network: str = "bridge"
    publish_host: str = "127.0.0.1"
    volume_template: str = "fedhub-{site}-{user}"
    home: str = "/home/jovyan"
    user: str = ""  # "" keeps the image's USER
    user_limits: bool = True  # offer cpus/memory options below the profile's limits
    pids_limit: int = Field(default=2048, ge=64)
    stop_timeout: int = Field(default=10, ge=0, le=300)
    cleanup_grace: float = Field(default=60.0, ge=0)

    @field_validator("profiles")
    @classmethod
    def _profile_names(cls, value: dict[str, Profile]) -> dict[str, Profile]:
        for name in value:
            if not _PROFILE.fullmatch(name):
                raise ValueError(f"profile name {name!r}: use 1-32 of a-z, 0-9, '_', '-'")
        return value

    @field_validator("docker_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not value.startswith(("unix://", "tcp://", "http://", "https://")):
            raise ValueError("must start with unix://, tcp://, http:// or https://")
        return value

    @field_validator("network")
    @classmethod
    def _network(cls, value: str) -> str:
        if not _NETWORK.fullmatch(value):
            raise ValueError(f"{value!r} is not a Docker network name")
        if value in ("host", "none") or value.startswith("container:"):
            raise ValueError(f"network {value!r} cannot publish the server's port")
        return value

    @field_validator("publish_host")
    @classmethod
    def _publish_host(cls, value: str) -> str:
        try:
            addr = ipaddress.ip_address(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address") from exc
        if addr.is_unspecified:
            raise ValueError("publish on one address the proxy or agent uses, not on all")
        return value

    @field_validator("volume_template")
    @classmethod
    def _template(cls, value: str) -> str:
        fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        if not fields <= {"site", "user"} or "user" not in fields:
            raise ValueError("must contain {user} and may contain {site}, nothing else in {}")
        if not _DOCKER_NAME.fullmatch(value.format(site="s", user="u")):
            raise ValueError("must give a Docker volume name (letters, digits, '_', '.', '-')")
        return value

    @field_validator("home")
    @classmethod
    def _home(cls, value: str) -> str:
        if not _PATH.fullmatch(value) or "/../" in f"{value}/" or "/./" in f"{value}/":
            raise ValueError(f"{value!r} is not a plain absolute path")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if value and not _USER.fullmatch(value):
            raise ValueError(f"{value!r} is not a user name or uid[:gid]")
        return value

    @model_validator(mode="after")
    def _default(self) -> DockerConfig:
        if not self.default_profile:
            object.__setattr__(self, "default_profile", next(iter(self.profiles)))
        elif self.default_profile not in self.profiles:
            raise ValueError(f"default_profile {self.default_profile!r} is not one of the "
                             f"profiles ({', '.join(self.profiles)})")
        return self


def parse_config(raw: Mapping[str, Any]) -> DockerConfig:
    """The validated config; raises BackendError naming every problem."""
    return validated_config(DockerConfig, raw, "Docker")


def docker_token(name: str) -> str:
    """A Docker-name-safe, injective, bounded form of a user, server or site name.

    A long name is cut and given a digest after a ``.``, which no short form contains
    (subject tokens never do), so no name can be chosen to share another's volume.
    """
    token = subject_token(name)
    if len(token) <= _TOKEN_MAX:
        return token
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{token[:_TOKEN_MAX - 17]}.{digest}"


def volume_name(config: DockerConfig, site: str, user: str) -> str:
    """The user's persistent volume at this site (the same for all their servers)."""
    return config.volume_template.format(site=docker_token(site), user=docker_token(user))


def container_name(site: str, spec: ServerSpec) -> str:
    """Readable and unique per spawn: site, user, server and a digest of the spawn id."""
    spawn = hashlib.sha256(spec.spawn_id.encode()).hexdigest()[:10]
    server = docker_token(spec.server) if spec.server else "default"
    return f"fedhub-{docker_token(site)}-{docker_token(spec.user)}-{server}-{spawn}"


def labels(site: str, spec: ServerSpec) -> dict[str, str]:
    """Labels that find a site's containers again (status, cleanup, operators)."""
    return {LABEL_SITE: site, LABEL_USER: spec.user, LABEL_SERVER: spec.server,
            LABEL_SPAWN: spec.spawn_id}


@dataclass(frozen=True)
class Owner:
    """Who a labelled container belongs to."""

    site: str
    user: str
    server: str
    spawn_id: str


def parse_labels(raw: Any) -> Owner | None:
    """The owner from a container's labels; None unless it carries a site label."""
    if not isinstance(raw, Mapping):
        return None
    site = raw.get(LABEL_SITE)
    if not isinstance(site, str) or not site:
        return None
    def get(key: str) -> str:
        value = raw.get(key, "")
        return value if isinstance(value, str) else ""
    return Owner(site, get(LABEL_USER), get(LABEL_SERVER), get(LABEL_SPAWN))


def declared_options(config: DockerConfig) -> list[OptionSpec]:
    """The profile choice and, if ``user_limits``, CPUs and memory below its limits."""
    described = "; ".join(
        f"{name}: {p.description + ', ' if p.description else ''}{p.cpus:g} CPUs, "
        f"{p.memory} MiB" for name, p in config.profiles.items())
    out = [OptionSpec(name="profile", label="Container profile", kind=OptionKind.CHOICE,
                      choices=tuple(config.profiles), default=config.default_profile,
                      help=described)]
    if config.user_limits:
        profiles = config.profiles.values()
        out.append(OptionSpec(name="cpus", label="CPUs", kind=OptionKind.INTEGER, minimum=1,
                              maximum=max(math.ceil(p.cpus) for p in profiles),
                              help="empty for the profile's limit; at most the profile's"))
        out.append(OptionSpec(name="memory", label="Memory", kind=OptionKind.MEMORY,
                              minimum=64, maximum=max(p.memory for p in profiles),
                              help="e.g. 2G; empty for the profile's limit; at most the "
                                   "profile's"))
    return out


@dataclass(frozen=True)
class Resources:
    """What one container gets."""

    profile: str
    image: str
    cpus: float
    memory: int  # MiB


def resources(config: DockerConfig, options: Mapping[str, Any]) -> Resources:
    """The profile and limits for validated ``options``; BackendError if they exceed it."""
    name = options.get("profile") or config.default_profile
    profile = config.profiles.get(str(name))
    if profile is None:
        raise BackendError(f"unknown profile {str(name)[:40]!r}; choose one of "
                           f"{', '.join(config.profiles)}")
    cpus, memory = profile.cpus, profile.memory
    want_cpus, want_memory = options.get("cpus"), options.get("memory")
    if want_cpus is not None and config.user_limits:
        if not isinstance(want_cpus, int) or want_cpus < 1 or want_cpus > profile.cpus:
            raise BackendError(f"profile {name} allows at most {profile.cpus:g} CPUs")
        cpus = float(want_cpus)
    if want_memory is not None and config.user_limits:
        if not isinstance(want_memory, int) or want_memory < 64 or want_memory > profile.memory:
            raise BackendError(f"profile {name} allows at most {profile.memory} MiB of memory")
        memory = want_memory
    return Resources(str(name), profile.image, cpus, memory)


def jupyter_command(config: DockerConfig, spec: ServerSpec) -> list[str]:
    """The single-user server's argv: assertion identity only, as the local backend."""
    return [
        "jupyter", "lab",
        *SERVER_FLAGS,
        "--ServerApp.ip=0.0.0.0",
        f"--ServerApp.port={PORT}",
        f"--ServerApp.base_url={spec.prefix}",
        f"--ServerApp.root_dir={config.home}",
        # Harmless for the default uid 1000; lets operators run images as root.
        "--ServerApp.allow_root=True",
    ]


def container_body(config: DockerConfig, site: str, spec: ServerSpec, res: Resources,
                   keys_dir: str) -> dict[str, Any]:
    """The Docker Engine API ``POST /containers/create`` body for one server."""
    owner = labels(site, spec)
    body: dict[str, Any] = {
        "Image": res.image,
        "Cmd": jupyter_command(config, spec),
        "Env": [
            f"FEDHUB_TRUSTED_KEYS={KEYS_MOUNT}/{KEYS_FILE}",
            f"FEDHUB_SERVER_PREFIX={spec.prefix}",
            f"FEDHUB_SERVER_USER={spec.user}",
        ],
        "WorkingDir": config.home,
        "Labels": owner,
        "ExposedPorts": {f"{PORT}/tcp": {}},
        "HostConfig": {
            "NanoCpus": int(res.cpus * 1e9),
            "Memory": res.memory * 1024 * 1024,
            "MemorySwap": res.memory * 1024 * 1024,  # no swap beyond the limit
            "PidsLimit": config.pids_limit,
            "Init": True,  # reaps kernels' children and forwards SIGTERM
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "NetworkMode": config.network,
            "PortBindings": {f"{PORT}/tcp": [{"HostIp": config.publish_host, "HostPort": ""}]},
            "RestartPolicy": {"Name": "no"},
            "Mounts": [
                {"Type": "volume", "Source": volume_name(config, site, spec.user),
                 "Target": config.home,
                 "VolumeOptions": {"Labels": {LABEL_SITE: site, LABEL_USER: spec.user}}},
                {"Type": "bind", "Source": keys_dir, "Target": KEYS_MOUNT, "ReadOnly": True},
            ],
        },
    }
    if config.user:
        body["User"] = config.user
    return body


def published_port(info: Mapping[str, Any]) -> int | None:
    """The host port of the server from ``GET /containers/<id>/json``; None if not yet."""
    ports = (info.get("NetworkSettings") or {}).get("Ports") or {}
    for binding in ports.get(f"{PORT}/tcp") or []:
        try:
            return int(binding["HostPort"])
        except (KeyError, TypeError, ValueError):
            continue
    return None


def report_for(listed: Mapping[str, Any] | None) -> JobReport:
    """A job report from one ``GET /containers/json`` entry (None: the container is gone)."""
    if listed is None:
        return JobReport(JobStatus.GONE, "container no longer exists")
    state = str(listed.get("State", "")).lower()
    if state == "running":
        return JobReport(JobStatus.RUNNING)
    if state in ("created", "restarting", "paused"):
        return JobReport(JobStatus.PENDING, f"container is {state}")
    if state in ("exited", "dead", "removing"):
        status = str(listed.get("Status", state))
        hint = " (killed: out of memory?)" if "(137)" in status else ""
        return JobReport(JobStatus.GONE, f"container {status}{hint}")
    return JobReport(JobStatus.UNKNOWN, f"container in unexpected state {state!r}")
