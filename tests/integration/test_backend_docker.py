"""The backend contract and Docker specifics against a real dockerd and the single-user
image built offline by deploy/docker/setup-test-env.sh (run here if dockerd is not up)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedhub.events.signing import KeyRing, SigningKey
from fedhub.site_agent.backends.base import JobStatus, Phase
from fedhub.site_agent.backends.docker import DockerBackend
from fedhub.site_agent.backends.docker_spec import LABEL_SITE, parse_config
from fedhub.site_agent.errors import BackendError
from tests.support.backend_contract import (
    BackendContract,
    BrokenStatus,
    Fresh,
    Leftovers,
    new_spec,
    start_until_running,
)

pytestmark = pytest.mark.integration
HEADER = "X-Fedhub-Assertion"


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def base_image(image: str) -> str:
    """The imported debootstrap base: an image without Jupyter in it."""
    out = _docker("images", "fedhub-base", "--format", "{{.Repository}}:{{.Tag}}")
    return out.stdout.split()[0]


@pytest.fixture
def site() -> Iterator[str]:
    """A site name of its own per test; its containers and volumes go at the end."""
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    ids = _docker("ps", "-aq", "--filter", f"label={LABEL_SITE}={name}").stdout.split()
    if ids:
        _docker("rm", "-f", *ids)
    vols = _docker("volume", "ls", "-q", "--filter", f"label={LABEL_SITE}={name}").stdout.split()
    if vols:
        _docker("volume", "rm", "-f", *vols)


@pytest.fixture
def edge_key(tmp_path: Path) -> SigningKey:
    """An edge proxy key the site trusts (written where the agent keeps trusted keys)."""
    key = SigningKey.generate()
    ring = KeyRing()
    ring.add_signing_key(key, "edge-proxy", "proxy-1")
    (tmp_path / "trusted-keys.json").write_text(json.dumps(ring.as_dict()))
    return key


def make_config(image: str, **extra: Any) -> dict[str, Any]:
    return {
        "profiles": {
            "small": {"image": image, "cpus": 1, "memory": "768M", "description": "small"},
            "big": {"image": image, "cpus": 2, "memory": "1G"},
        },
        "stop_timeout": 5,
        **extra,
    }


@pytest.fixture
def make_backend(image: str, site: str, tmp_path: Path, edge_key: SigningKey
                 ) -> Callable[..., DockerBackend]:
    def make(**extra: Any) -> DockerBackend:
        return DockerBackend(parse_config(make_config(image, **extra)), site=site,
                             data_dir=tmp_path, trusted_keys=tmp_path / "trusted-keys.json",
                             ready_timeout=90)
    return make


def assertion(key: SigningKey, prefix: str, user: str = "contract") -> dict[str, str]:
    claims = {"typ": "assertion", "sub": user, "prefix": prefix, "adm": False,
              "exp": int(time.time()) + 60, "tok": True}
    return {HEADER: key.token(claims)}


class TestDockerBackendContract(BackendContract):
    @pytest.fixture
    def fresh_backend(self, make_backend: Callable[..., DockerBackend]) -> Fresh:
        return make_backend

    @pytest.fixture
    def backend(self, make_backend: Callable[..., DockerBackend]) -> DockerBackend:
        return make_backend()

    @pytest.fixture
    def leftovers(self, site: str) -> Leftovers:
        def find() -> list[str]:
            out = _docker("ps", "-aq", "--filter", f"label={LABEL_SITE}={site}")
            assert out.returncode == 0, out.stderr
            return out.stdout.split()
        return find

    @pytest.fixture
    def broken_status(self, backend: DockerBackend, tmp_path: Path) -> BrokenStatus:
        @contextmanager
        def broken() -> Iterator[None]:
            good = backend.docker_url
            backend.docker_url = f"unix://{tmp_path}/no-dockerd.sock"
            try:
                yield
            finally:
                backend.docker_url = good
        return broken


async def test_work_survives_stop_and_a_new_start(
        make_backend: Callable[..., DockerBackend], edge_key: SigningKey) -> None:
    backend = make_backend()
    spec = new_spec("alice")
    state, target = await start_until_running(backend, spec)
    body = {"type": "file", "format": "text", "content": "kept across restarts\n"}
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.put(f"{target}{spec.prefix}api/contents/notes.txt", json=body,
                             headers=assertion(edge_key, spec.prefix, "alice"))
        assert r.status_code in (200, 201), r.text
    await backend.stop(state)

    again = new_spec("alice")  # another spawn (and server) of the same user
    state, target = await start_until_running(backend, again)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"{target}{again.prefix}api/contents/notes.txt",
                                 headers=assertion(edge_key, again.prefix, "alice"))
        assert r.status_code == 200, r.text
        assert r.json()["content"] == "kept across restarts\n"
    finally:
        await backend.stop(state)


async def test_limits_labels_and_hardening_are_applied(
        make_backend: Callable[..., DockerBackend], site: str) -> None:
    backend = make_backend()
    spec = new_spec("bob", {"profile": "big", "cpus": 1, "memory": 512})
    state, _ = await start_until_running(backend, spec)
    try:
        info = json.loads(_docker("inspect", state["container"]).stdout)[0]
        host = info["HostConfig"]
        assert host["NanoCpus"] == 1_000_000_000
        assert host["Memory"] == 512 * 1024 * 1024
        assert host["CapDrop"] == ["ALL"] and host["ReadonlyRootfs"] is False
        assert info["Config"]["Labels"]["fedhub.site"] == site
        assert info["Config"]["Labels"]["fedhub.spawn_id"] == spec.spawn_id
        mounts = {m["Destination"]: m for m in info["Mounts"]}
        assert mounts["/home/jovyan"]["Type"] == "volume"
        assert mounts["/etc/fedhub"]["RW"] is False
        # The cgroup inside sees the limit too.
        out = _docker("exec", state["container"], "cat",
                      "/sys/fs/cgroup/memory/memory.limit_in_bytes")
        if out.returncode != 0:  # cgroup v2
            out = _docker("exec", state["container"], "cat", "/sys/fs/cgroup/memory.max")
        assert out.stdout.strip() == str(512 * 1024 * 1024)
    finally:
        await backend.stop(state)
    with pytest.raises(BackendError, match="at most 1 CPUs"):
        async with aclosing(backend.start(new_spec("bob", {"profile": "small", "cpus": 2}))
                            ) as steps:
            async for _ in steps:
                pass


async def test_direct_requests_need_the_proxys_assertion(
        make_backend: Callable[..., DockerBackend], edge_key: SigningKey) -> None:
    backend = make_backend()
    spec = new_spec()
    state, target = await start_until_running(backend, spec)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            url = f"{target}{spec.prefix}api/contents"
            assert (await client.get(url)).status_code == 403
            stranger = SigningKey.generate()
            assert (await client.get(url, headers=assertion(stranger, spec.prefix))
                    ).status_code == 403
            assert (await client.get(url, headers=assertion(edge_key, spec.prefix))
                    ).status_code == 200
    finally:
        await backend.stop(state)


async def test_new_proxy_keys_reach_running_containers(
        make_backend: Callable[..., DockerBackend], tmp_path: Path) -> None:
    backend = make_backend()
    spec = new_spec()
    state, target = await start_until_running(backend, spec)
    try:
        key = SigningKey.generate()
        ring = KeyRing()
        ring.add_signing_key(key, "edge-proxy", "proxy-2")
        tmp = tmp_path / "new-keys.json"
        tmp.write_text(json.dumps(ring.as_dict()))
        os.replace(tmp, tmp_path / "trusted-keys.json")  # as the agent writes it
        await backend.status({spec.key: state})  # the agent polls status every few seconds
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"{target}{spec.prefix}api/contents",
                                 headers=assertion(key, spec.prefix))
        assert r.status_code == 200
    finally:
        await backend.stop(state)


async def test_cleanup_removes_only_unknown_containers(
        make_backend: Callable[..., DockerBackend], site: str, image: str) -> None:
    backend = make_backend()
    spec = new_spec()
    state, _ = await start_until_running(backend, spec)
    try:
        orphan = _docker("create", "--label", f"{LABEL_SITE}={site}", "--label",
                         "fedhub.spawn_id=forgotten", "--label", "fedhub.user=eve",
                         image, "true")
        assert orphan.returncode == 0, orphan.stderr
        other_site = _docker("create", "--label", f"{LABEL_SITE}={site}x", image, "true")
        try:
            assert await backend.cleanup({spec.spawn_id}, grace=3600) == []  # too young
            removed = await backend.cleanup({spec.spawn_id}, grace=0)
            assert len(removed) == 1
            left = _docker("ps", "-aq", "--no-trunc", "--filter", f"label={LABEL_SITE}={site}")
            assert left.stdout.split() == [state["container"]]
            report = (await backend.status({spec.key: state}))[spec.key]
            assert report.status is JobStatus.RUNNING
        finally:
            _docker("rm", "-f", other_site.stdout.strip())
    finally:
        await backend.stop(state)


async def test_missing_image_and_failing_start_leave_nothing(
        make_backend: Callable[..., DockerBackend], site: str, base_image: str) -> None:
    for image, message in (("fedhub-no-such-image:0", "not available at this site"),
                           (base_image, "(?s)Jupyter exited during start.*exec jupyter failed")):
        backend = make_backend(profiles={"p": {"image": image, "cpus": 1, "memory": "256M"}})
        with pytest.raises(BackendError, match=message):
            async with aclosing(backend.start(new_spec())) as steps:
                async for cp in steps:
                    assert cp.phase is Phase.SUBMITTED
        assert _docker("ps", "-aq", "--filter", f"label={LABEL_SITE}={site}").stdout == ""


async def test_daemon_unreachable_is_a_clear_error(
        make_backend: Callable[..., DockerBackend], tmp_path: Path) -> None:
    backend = make_backend(docker_url=f"unix://{tmp_path}/no-dockerd.sock")
    with pytest.raises(BackendError, match="cannot reach the Docker daemon"):
        async with aclosing(backend.start(new_spec())) as steps:
            async for _ in steps:
                pass
    with pytest.raises(BackendError, match="cannot list containers"):
        await backend.cleanup(set())
