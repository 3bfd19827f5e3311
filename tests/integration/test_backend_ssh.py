"""The SSH backend against a real sshd (Debian's openssh-server) in a network namespace.

The namespace has its own network stack (the agent reaches it over a veth pair, as it
would a remote machine) but shares this machine's filesystem and pids, so the remote
Python is this one and leftover processes are visible with ``pgrep``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fedhub.events.signing import KeyRing, SigningKey
from fedhub.site_agent.backends.base import JobStatus, Phase
from fedhub.site_agent.backends.registry import make_backend
from fedhub.site_agent.backends.ssh import SSHBackend
from fedhub.site_agent.backends.ssh_config import load_config
from fedhub.site_agent.errors import BackendError
from fedhub.site_agent.settings import SiteAgentSettings
from tests.support.backend_contract import (
    BackendContract,
    BrokenStatus,
    Fresh,
    Leftovers,
    new_spec,
    start_until_running,
)
from tests.support.netns import Netns, netns, unavailable
from tests.support.services import missing, wait_port

pytestmark = pytest.mark.integration
SSHD = "/usr/sbin/sshd"
TEMPLATE = Path(__file__).parents[2] / "deploy" / "ssh" / "sshd_config.in"


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


@dataclass
class Host:
    """An sshd in a namespace, with the client key and known_hosts the agent uses."""

    ns: Netns
    dir: Path
    client_key: Path
    known_hosts: Path
    host_public_key: str

    @property
    def address(self) -> str:
        return self.ns.ns_ip

    def start_sshd(self) -> None:
        self.ns.popen([SSHD, "-D", "-E", str(self.dir / "sshd.log"),
                       "-f", str(self.dir / "sshd_config")],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(22, host=self.address)

    def stop_sshd(self) -> None:
        """Kill the listener and every session process (servers keep running)."""
        for pid in self.ns.pids():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
            except OSError:
                continue
            if comm == "sshd":
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        for proc in self.ns.procs:
            if proc.poll() is None:
                proc.wait(5)

    def config(self, remote_dir: Path, **extra: Any) -> dict[str, Any]:
        return {"hosts": [{"address": self.address, "username": "root"}],
                "client_key": str(self.client_key), "known_hosts": str(self.known_hosts),
                "python": sys.executable, "remote_data_dir": str(remote_dir),
                # room for a loaded CI machine (a remote start once took over 5 s there);
                # the hung-network test sets its own short command_timeout
                "command_timeout": 20, "connect_timeout": 15, **extra}


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    reason = unavailable()
    if reason:
        missing(reason)
    if not os.access(SSHD, os.X_OK) or shutil.which("ssh-keygen") is None:
        missing("openssh-server is not installed (apt-get install openssh-server)")
    folder = tmp_path_factory.mktemp("sshhost")
    folder.chmod(0o700)
    host_pub = _keygen(folder / "host_key", "fedhub-test-host")
    client_pub = _keygen(folder / "client_key", "fedhub-site")
    (folder / "authorized_keys").write_text(client_pub + "\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    with netns("sshd") as ns:
        known = folder / "known_hosts"
        known.write_text(f"{ns.ns_ip} {' '.join(host_pub.split()[:2])}\n")
        text = TEMPLATE.read_text()
        for name, value in {"LISTEN": ns.ns_ip, "PORT": "22",
                            "HOST_KEY": str(folder / "host_key"),
                            "PID_FILE": str(folder / "sshd.pid"),
                            "AUTHORIZED_KEYS": str(folder / "authorized_keys")}.items():
            text = text.replace(f"@{name}@", value)
        (folder / "sshd_config").write_text(text)
        host = Host(ns, folder, folder / "client_key", known, host_pub)
        host.start_sshd()
        yield host


@pytest.fixture
def remote_dir(tmp_path: Path) -> Path:
    return tmp_path / "remote"


class Maker:
    """Builds backends for the test host; ``proxy_key`` is an edge proxy's trusted key."""

    def __init__(self, host: Host, remote_dir: Path, folder: Path) -> None:
        self.host, self.remote_dir = host, remote_dir
        self.backends: list[SSHBackend] = []
        self.proxy_key = SigningKey.generate()
        ring = KeyRing()
        ring.add_signing_key(self.proxy_key, "edge-proxy", "proxy-1")
        self.trusted = folder / "trusted-keys.json"
        self.trusted.write_text(json.dumps(ring.as_dict()))

    def __call__(self, **extra: Any) -> SSHBackend:
        backend = SSHBackend(load_config(self.host.config(self.remote_dir, **extra)),
                             trusted_keys=self.trusted, ready_timeout=90)
        self.backends.append(backend)
        return backend


@pytest.fixture
async def made(ssh_host: Host, remote_dir: Path, tmp_path: Path) -> AsyncIterator[Maker]:
    """Backends for the test host, their connections closed afterwards."""
    maker = Maker(ssh_host, remote_dir, tmp_path)
    yield maker
    for backend in maker.backends:
        await backend.close()


def _leftovers(remote_dir: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-f", f"root_dir={remote_dir}"], capture_output=True,
                         text=True)
    return out.stdout.split()


class TestSSHBackendContract(BackendContract):
    @pytest.fixture
    def fresh_backend(self, made: Maker) -> Fresh:
        return made

    @pytest.fixture
    def backend(self, fresh_backend: Fresh) -> SSHBackend:
        backend = fresh_backend()
        assert isinstance(backend, SSHBackend)
        return backend

    @pytest.fixture
    def leftovers(self, remote_dir: Path) -> Leftovers:
        return lambda: _leftovers(remote_dir)

    @pytest.fixture
    def broken_status(self, ssh_host: Host) -> BrokenStatus:
        @contextmanager
        def broken() -> Iterator[None]:
            ssh_host.stop_sshd()  # the host's sshd is down; the servers keep running
            try:
                yield
            finally:
                ssh_host.start_sshd()
        return broken


async def test_a_server_reached_directly_refuses_requests_without_the_assertion(
        made: Maker, ssh_host: Host, remote_dir: Path) -> None:
    backend = made()
    spec = new_spec("alice")
    state, target = await start_until_running(backend, spec)
    try:
        assert target == f"http://{ssh_host.address}:{state['port']}"
        claims = {"typ": "assertion", "sub": "alice", "prefix": spec.prefix, "adm": False,
                  "exp": int(time.time()) + 60}
        signed = made.proxy_key.token(claims)
        async with httpx.AsyncClient(timeout=10) as client:
            bare = await client.get(f"{target}{spec.prefix}api/contents")
            forged = await client.get(f"{target}{spec.prefix}api/contents",
                                      headers={"X-Fedhub-Assertion": SigningKey.generate()
                                               .token(claims)})
            # The proxy's key reached the remote host (copied over SFTP), so this works:
            good = await client.get(f"{target}{spec.prefix}api/contents",
                                    headers={"X-Fedhub-Assertion": signed})
        assert bare.status_code == 403
        assert forged.status_code == 403
        assert good.status_code == 200, good.text
        assert (remote_dir / "trusted-keys.json").is_file()  # noqa: ASYNC240
        assert (remote_dir / "users" / "alice").is_dir()  # noqa: ASYNC240
    finally:
        await backend.stop(state)
    assert _leftovers(remote_dir) == []


async def test_an_unknown_host_key_is_refused_with_a_clear_error(
        made: Maker, ssh_host: Host, tmp_path: Path,
        remote_dir: Path) -> None:
    impostor = _keygen(tmp_path / "other_host_key", "not-the-host")
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"{ssh_host.address} {' '.join(impostor.split()[:2])}\n")
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    for known_hosts in (wrong, empty):
        backend = made(known_hosts=str(known_hosts))
        spec = new_spec()
        with pytest.raises(BackendError, match="host key") as caught:
            async with aclosing(backend.start(spec)) as checkpoints:
                async for _ in checkpoints:
                    pytest.fail("started although the host key is not trusted")
        assert str(known_hosts) in str(caught.value)
        # Status through an untrusted connection is unknown, never gone.
        fake = {"ssh_host": f"root@{ssh_host.address}:22", "pid": 1, "starttime": 1,
                "boot_id": "x"}
        report = (await backend.status({"k": fake}))["k"]
        assert report.status is JobStatus.UNKNOWN and "host key" in report.reason
    assert _leftovers(remote_dir) == []


async def test_an_unreachable_host_is_skipped_for_the_next_one(
        made: Maker, ssh_host: Host, remote_dir: Path) -> None:
    closed = {"address": ssh_host.address, "port": 2222, "username": "root"}
    good = {"address": ssh_host.address, "username": "root"}
    backend = made(hosts=[closed, good])
    spec = new_spec()
    state, _ = await start_until_running(backend, spec)
    assert state["ssh_host"] == f"root@{ssh_host.address}:22"
    await backend.stop(state)
    assert _leftovers(remote_dir) == []


async def test_a_hung_network_means_unknown_within_the_command_timeout(
        made: Maker, ssh_host: Host) -> None:
    backend = made(command_timeout=2)
    spec = new_spec()
    state, _ = await start_until_running(backend, spec)
    try:
        ssh_host.ns.set_link(False)
        try:
            began = time.monotonic()
            report = (await backend.status({spec.key: state}))[spec.key]
            assert report.status is JobStatus.UNKNOWN
            assert time.monotonic() - began < 15
        finally:
            ssh_host.ns.set_link(True)
        assert (await backend.status({spec.key: state}))[spec.key].status is JobStatus.RUNNING
    finally:
        await backend.stop(state)


async def test_the_registry_builds_it_from_the_site_settings(
        ssh_host: Host, remote_dir: Path, tmp_path: Path) -> None:
    settings = SiteAgentSettings(site="hpc", data_dir=tmp_path, backend="ssh",
                                 backend_config=ssh_host.config(remote_dir))
    backend = make_backend(settings)
    assert isinstance(backend, SSHBackend)
    try:
        spec = new_spec()
        phases = []
        async with aclosing(backend.start(spec)) as checkpoints:
            async for cp in checkpoints:
                phases.append(cp.phase)
                state = cp.state
        assert phases == [Phase.SUBMITTED, Phase.RUNNING]
        assert backend.capacity()["hosts"] == 1
        await backend.stop(state)
    finally:
        await backend.close()
