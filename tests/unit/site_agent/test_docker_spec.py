"""Pure parts of the Docker backend: config validation, container specs, labels, reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedhub.schemas.names import normalize_user_name, server_prefix
from fedhub.schemas.resources import InvalidOptions, validate_options
from fedhub.site_agent.backends.base import JobStatus, ServerSpec
from fedhub.site_agent.backends.docker import DockerBackend, from_settings
from fedhub.site_agent.backends.docker_spec import (
    container_body,
    container_name,
    declared_options,
    docker_token,
    parse_config,
    parse_labels,
    published_port,
    report_for,
    resources,
    volume_name,
)
from fedhub.site_agent.errors import BackendError
from fedhub.site_agent.settings import SiteAgentSettings

RAW: dict[str, Any] = {
    "profiles": {
        "small": {"image": "fedhub-singleuser:1", "cpus": 0.5, "memory": "1G"},
        "big": {"image": "registry.example/fedhub/gpu:2@sha256:ab", "cpus": 4, "memory": 8192},
    },
}


def spec(user: str = "alice", server: str = "", options: dict[str, Any] | None = None
         ) -> ServerSpec:
    return ServerSpec(user, server, "spawn-1", server_prefix(user, server), options or {})


def config(**extra: Any) -> Any:
    return parse_config({**RAW, **extra})


def test_defaults_and_memory_in_mib() -> None:
    cfg = config()
    assert cfg.default_profile == "small"
    assert cfg.profiles["small"].memory == 1024 and cfg.profiles["big"].memory == 8192
    assert cfg.publish_host == "127.0.0.1" and cfg.network == "bridge"


@pytest.mark.parametrize(("extra", "message"), [
    ({"profiles": {}}, "profiles"),
    ({"default_profile": "huge"}, "default_profile 'huge' is not one of the profiles"),
    ({"profiles": {"Bad Name": RAW["profiles"]["small"]}}, "profile name 'Bad Name'"),
    ({"profiles": {"p": {"image": "img; rm -rf /", "cpus": 1, "memory": "1G"}}},
     "not an image reference"),
    ({"profiles": {"p": {"image": "img", "cpus": 0, "memory": "1G"}}}, "cpus"),
    ({"profiles": {"p": {"image": "img", "cpus": 1, "memory": "lots"}}}, "memory size"),
    ({"profiles": {"p": {"image": "img", "cpus": 1, "memory": "16M"}}}, "at least 64 MiB"),
    ({"network": "host"}, "cannot publish"),
    ({"network": "net --privileged"}, "not a Docker network name"),
    ({"publish_host": "0.0.0.0"}, "not on all"),
    ({"publish_host": "localhost"}, "not an IP address"),
    ({"volume_template": "home"}, "must contain {user}"),
    ({"volume_template": "{user}-{spawn_id}"}, "must contain {user}"),
    ({"volume_template": "/etc/{user}"}, "Docker volume name"),
    ({"home": "/home/../etc"}, "plain absolute path"),
    ({"home": "relative"}, "plain absolute path"),
    ({"user": "root --privileged"}, "uid"),
    ({"docker_url": "/var/run/docker.sock"}, "unix://"),
    ({"privileged": True}, "privileged"),
])
def test_config_errors_are_clear(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(BackendError, match="invalid Docker backend_config") as err:
        config(**extra)
    assert message in str(err.value)


def test_from_settings(tmp_path: Path) -> None:
    settings = SiteAgentSettings(site="dock", backend="docker", data_dir=tmp_path,
                                 backend_config=RAW)
    backend = from_settings(settings)
    assert isinstance(backend, DockerBackend) and backend.name == "docker"
    assert backend.keys_dir == tmp_path / "docker" / "trusted"
    with pytest.raises(BackendError, match="profiles"):
        from_settings(SiteAgentSettings(site="dock", backend="docker", data_dir=tmp_path))


def test_options_validate_through_the_shared_validator() -> None:
    specs = declared_options(config())
    assert [o.name for o in specs] == ["profile", "cpus", "memory"]
    assert validate_options(specs, {}) == {"profile": "small"}
    assert validate_options(specs, {"profile": "big", "cpus": "2", "memory": "2G"}) == {
        "profile": "big", "cpus": 2, "memory": 2048}
    for bad in ({"profile": "small; reboot"}, {"cpus": 5}, {"memory": "9G"}, {"image": "x"}):
        with pytest.raises(InvalidOptions):
            validate_options(specs, bad)
    assert [o.name for o in declared_options(config(user_limits=False))] == ["profile"]


def test_resources_stay_within_the_profile() -> None:
    cfg = config()
    res = resources(cfg, {})
    assert (res.profile, res.image, res.cpus, res.memory) == ("small", "fedhub-singleuser:1",
                                                              0.5, 1024)
    assert resources(cfg, {"profile": "big", "cpus": 2, "memory": 4096}).cpus == 2.0
    with pytest.raises(BackendError, match="at most 0.5 CPUs"):
        resources(cfg, {"profile": "small", "cpus": 1})
    with pytest.raises(BackendError, match="at most 1024 MiB"):
        resources(cfg, {"memory": 2048})
    with pytest.raises(BackendError, match="unknown profile"):
        resources(cfg, {"profile": "huge"})


def test_container_body_from_options_and_config() -> None:
    cfg = config(network="fedhub-net", user="1000:100")
    s = spec("alice", "gpu", {"profile": "big", "cpus": 3, "memory": 2048})
    body = container_body(cfg, "dock", s, resources(cfg, s.options), "/data/docker/trusted")
    host = body["HostConfig"]
    assert body["Image"] == "registry.example/fedhub/gpu:2@sha256:ab"
    assert host["NanoCpus"] == 3_000_000_000
    assert host["Memory"] == host["MemorySwap"] == 2048 * 1024 * 1024
    assert host["NetworkMode"] == "fedhub-net" and host["Init"] is True
    assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
    assert "Privileged" not in host
    assert host["PortBindings"] == {"8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}
    volume, keys = host["Mounts"]
    assert volume == {"Type": "volume", "Source": "fedhub-dock-alice", "Target": "/home/jovyan",
                      "VolumeOptions": {"Labels": {"fedhub.site": "dock",
                                                   "fedhub.user": "alice"}}}
    assert keys == {"Type": "bind", "Source": "/data/docker/trusted",
                    "Target": "/etc/fedhub", "ReadOnly": True}
    assert body["User"] == "1000:100"
    assert body["Labels"] == {"fedhub.site": "dock", "fedhub.user": "alice",
                              "fedhub.server": "gpu", "fedhub.spawn_id": "spawn-1"}
    assert "FEDHUB_SERVER_PREFIX=/user/alice/gpu/" in body["Env"]
    cmd = body["Cmd"]
    assert cmd[:2] == ["jupyter", "lab"]
    assert "--ServerApp.base_url=/user/alice/gpu/" in cmd
    assert ("--ServerApp.identity_provider_class="
            "fedhub.site_agent.singleuser.AssertionIdentityProvider") in cmd
    assert "--IdentityProvider.token=" in cmd


def test_hostile_looking_names_stay_inert() -> None:
    cfg = config()
    # Valid fedhub user names may hold '@', '.', and letters of any script.
    s = ServerSpec("o'neil@ex.org", "", "x/../../y", server_prefix("o.neil@ex.org", ""))
    name = container_name("dock", s)
    vol = volume_name(cfg, "dock", "ünïcødé.user@example.org" * 2)
    for made in (name, vol):
        assert all(c.isascii() and (c.isalnum() or c in "-_.") for c in made), made
        assert ".." not in made and not made.startswith(".")
        assert len(made) < 120
    body = container_body(cfg, "dock", s, resources(cfg, {}), "/k")
    # Values travel as separate argv/env entries and labels, never through a shell.
    assert body["Labels"]["fedhub.spawn_id"] == "x/../../y"
    assert all(isinstance(arg, str) and "\n" not in arg for arg in body["Cmd"])
    assert container_name("dock", s) != container_name(
        "dock", ServerSpec(s.user, s.server, "other", s.prefix))


def test_docker_token_is_bounded_and_distinguishes_names() -> None:
    assert docker_token("alice") == "alice"
    assert docker_token("a.b") == "a_2eb"
    long_a, long_b = "x" * 60 + "a", "x" * 60 + "b"
    assert len(docker_token(long_a)) <= 40
    assert docker_token(long_a) != docker_token(long_b)
    # a user may pick any name of letters, digits and "-": none may be a long name's form
    squatter = docker_token(long_a).replace(".", "-")
    assert normalize_user_name(squatter) == squatter
    assert docker_token(squatter) != docker_token(long_a)


def test_labels_parse_back() -> None:
    owner = parse_labels({"fedhub.site": "dock", "fedhub.user": "alice",
                          "fedhub.server": "", "fedhub.spawn_id": "s1", "other": "x"})
    assert owner is not None and (owner.site, owner.user, owner.spawn_id) == ("dock", "alice",
                                                                             "s1")
    assert parse_labels({"fedhub.user": "alice"}) is None
    assert parse_labels(None) is None
    partial = parse_labels({"fedhub.site": "dock", "fedhub.spawn_id": 7})
    assert partial is not None and partial.spawn_id == ""


def test_published_port_from_inspect() -> None:
    info = {"NetworkSettings": {"Ports": {"8888/tcp": [{"HostIp": "127.0.0.1",
                                                        "HostPort": "32768"}]}}}
    assert published_port(info) == 32768
    assert published_port({"NetworkSettings": {"Ports": {"8888/tcp": None}}}) is None
    assert published_port({}) is None


@pytest.mark.parametrize(("listed", "status", "reason"), [
    ({"State": "running"}, JobStatus.RUNNING, ""),
    ({"State": "created"}, JobStatus.PENDING, "created"),
    ({"State": "exited", "Status": "Exited (137) 2 seconds ago"}, JobStatus.GONE,
     "out of memory"),
    ({"State": "exited", "Status": "Exited (0) 1 minute ago"}, JobStatus.GONE, "Exited (0)"),
    ({"State": "dead"}, JobStatus.GONE, "dead"),
    (None, JobStatus.GONE, "no longer exists"),
    ({"State": "weird"}, JobStatus.UNKNOWN, "unexpected"),
])
def test_reports_from_listed_containers(listed: dict[str, Any] | None, status: JobStatus,
                                        reason: str) -> None:
    report = report_for(listed)
    assert report.status is status and reason in report.reason


async def test_status_without_daemon_is_unknown(tmp_path: Path) -> None:
    backend = DockerBackend(config(docker_url=f"unix://{tmp_path}/none.sock"), site="dock",
                            data_dir=tmp_path, trusted_keys=tmp_path / "trusted-keys.json")
    reports = await backend.status({"alice._": {"container": "abc"}, "bob._": {}})
    assert {r.status for r in reports.values()} == {JobStatus.UNKNOWN}
    assert (tmp_path / "docker" / "trusted" / "trusted-keys.json").read_text() == "{}"
    await backend.stop({})  # nothing to stop: no daemon call, no error
