"""The SSH backend's pure parts: remote command building (quoting), /proc listing parsing,
job classification and configuration errors."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from fedhub.schemas.config import load_settings
from fedhub.site_agent.backends import ssh_remote as remote
from fedhub.site_agent.backends.base import JobStatus, ServerSpec
from fedhub.site_agent.backends.registry import make_backend
from fedhub.site_agent.backends.ssh import SSHBackend, classify, http_target, jupyter_argv
from fedhub.site_agent.backends.ssh_config import SSHHost, load_config
from fedhub.site_agent.errors import BackendError
from fedhub.site_agent.settings import SiteAgentSettings

BOOT = "c4a2196f-a31c-4071-89e1-369a6a49ee82"
# Captured from a Debian 12 host: ``cat boot_id loadavg /proc/<pid>/stat ...; echo; nproc``.
JUPYTER = ("20442 (python3) S 1 20442 20442 0 -1 4194560 21585 0 0 0 180 25 0 0 20 0 3 0 "
           "156614 254308352 21112 18446744073709551615 1 1 0 0 0 0 0 16781312 2 0 0 0 17 0 "
           "0 0 0 0 0 0 0 0 0 0 0 0 0")
WEIRD = ("31337 (a b) c) Z 1 31337 31337 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 "
         "999 0 0 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0")
LISTING = f"{BOOT}\n0.52 0.40 0.33 2/431 7956\n{JUPYTER}\n{WEIRD}\n{remote.STATUS_MARK}\n8\n"

EVIL = "$(touch /tmp/fedhub-pwned) `id` ' \" ; rm -rf / \n \\ %s {} !!"


def run_locally(command: str) -> str:
    """Run a remote command line with a POSIX shell here, as sshd would on the host."""
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_program_arguments_reach_python_as_data_not_shell() -> None:
    command = remote.python_command(sys.executable, "print(A['x'], end='')", {"x": EVIL})
    assert "\n" not in command  # one line, also for csh
    assert run_locally(command) == EVIL
    assert not Path("/tmp/fedhub-pwned").exists()


def test_the_python_path_is_quoted() -> None:
    command = remote.python_command("/opt/my python/bin/python3", "pass", {})
    assert shlex.split(command)[0] == "/opt/my python/bin/python3"


def test_status_command_takes_only_integers() -> None:
    assert remote.status_command([12, 3, 12]) == (
        "cat /proc/sys/kernel/random/boot_id /proc/loadavg /proc/3/stat /proc/12/stat ; "
        f"echo {remote.STATUS_MARK} ; nproc")
    with pytest.raises(ValueError):
        remote.status_command(["1; reboot"])  # type: ignore[list-item]


def test_status_command_runs_and_parses_here() -> None:
    import os

    listing = remote.parse_status_output(run_locally(remote.status_command([os.getpid(),
                                                                            999_999_999])))
    assert os.getpid() in listing.procs and 999_999_999 not in listing.procs
    assert listing.boot_id and listing.cpus and listing.load1 is not None


def test_parse_status_output() -> None:
    listing = remote.parse_status_output(LISTING)
    assert listing.boot_id == BOOT and listing.load1 == 0.52 and listing.cpus == 8
    assert listing.procs[20442] == remote.RemoteProc(20442, 156614, zombie=False)
    assert listing.procs[31337] == remote.RemoteProc(31337, 999, zombie=True)


@pytest.mark.parametrize(("output", "fragment"), [
    ("", "ended early"),
    (f"{BOOT}\n0.1 0.1 0.1 1/1 1\n{JUPYTER}\n", "ended early"),  # connection cut mid-way
    (f"\n\n{remote.STATUS_MARK}\n", "no boot id"),
    (f"{BOOT}\n0.1 0.1 0.1 1/1 1\n12 (x) S 1\n{remote.STATUS_MARK}\n", "unreadable"),
])
def test_incomplete_listings_are_errors(output: str, fragment: str) -> None:
    with pytest.raises(remote.ListingError, match=fragment):
        remote.parse_status_output(output)


def test_classify() -> None:
    listing = remote.parse_status_output(LISTING)
    assert classify(listing, 20442, 156614, BOOT).status is JobStatus.RUNNING
    reused = classify(listing, 20442, 1, BOOT)  # same pid, another process
    assert reused.status is JobStatus.GONE and "exited" in reused.reason
    assert classify(listing, 4242, 156614, BOOT).status is JobStatus.GONE
    assert classify(listing, 31337, 999, BOOT).status is JobStatus.GONE  # zombie
    rebooted = classify(listing, 20442, 156614, "another-boot")
    assert rebooted.status is JobStatus.GONE and "restarted" in rebooted.reason


def test_parse_launch_output() -> None:
    doc = remote.parse_launch_output('noise\n{"pid": 5, "port": 8, "starttime": 9, '
                                     '"boot_id": "b"}\n')
    assert doc["pid"] == 5
    with pytest.raises(ValueError, match="no process details"):
        remote.parse_launch_output("Traceback ...")


def test_jupyter_argv_keeps_the_identity_provider_and_binds_the_host() -> None:
    host = SSHHost(address="10.0.0.5", username="jupyter")
    spec = ServerSpec("alice", "", "s1", "/user/alice/")
    argv = jupyter_argv(["/usr/bin/python3", "-m", "jupyterlab"], host, spec)
    assert "--ServerApp.ip=10.0.0.5" in argv
    assert "--ServerApp.base_url=/user/alice/" in argv
    assert any("AssertionIdentityProvider" in a for a in argv)
    assert "--ServerApp.allow_unauthenticated_access=False" in argv
    bound = SSHHost(address="node1.example.org", username="j", bind="0.0.0.0")
    assert f"--ServerApp.ip={bound.listen}" == "--ServerApp.ip=0.0.0.0"


def test_http_target_brackets_ipv6() -> None:
    assert http_target("fd00::2", 80) == "http://[fd00::2]:80"
    assert http_target("node1", 80) == "http://node1:80"


@pytest.fixture
def keyfiles(tmp_path: Path) -> dict[str, str]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(tmp_path / "site_key")
    (tmp_path / "known_hosts").write_text("")
    return {"client_key": str(tmp_path / "site_key"),
            "known_hosts": str(tmp_path / "known_hosts")}


def config(keyfiles: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {"hosts": [{"address": "node1.example.org", "username": "jupyter"}],
            **keyfiles, **extra}


def test_valid_config_defaults(keyfiles: dict[str, str]) -> None:
    cfg = load_config(config(keyfiles))
    assert cfg.hosts[0].port == 22 and cfg.hosts[0].label == "jupyter@node1.example.org:22"
    assert cfg.command == ["python3", "-m", "jupyterlab"]
    assert cfg.remote_data_dir == ".local/share/fedhub"


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"hosts": []}, "hosts: List should have at least 1 item"),
    ({"hosts": [{"address": "a b", "username": "x"}]}, "neither a host name nor an IP"),
    ({"hosts": [{"address": "$(reboot)", "username": "x"}]}, "neither a host name"),
    ({"hosts": [{"address": "h", "username": "Root; id"}]}, "not a POSIX user name"),
    ({"hosts": [{"address": "h", "username": "u", "port": 0}]}, "hosts.0.port"),
    ({"hosts": [{"address": "h", "username": "u"}, {"address": "h", "username": "u"}]},
     "listed twice"),
    ({"client_key": "/nonexistent/key"}, "client_key: /nonexistent/key does not"),
    ({"known_hosts": "/nonexistent/kh"}, "known_hosts: /nonexistent/kh"),
    ({"remote_data_dir": "~/fedhub"}, "'~' is not expanded"),
    ({"python": "python3\n; id"}, "control characters"),
    ({"connect_timeout": 0}, "connect_timeout"),
    ({"strict_host_key_checking": False}, "strict_host_key_checking: Extra inputs"),
])
def test_config_errors_are_clear(keyfiles: dict[str, str], extra: dict[str, Any],
                                 fragment: str) -> None:
    with pytest.raises(BackendError, match="invalid SSH backend_config") as caught:
        load_config(config(keyfiles, **extra))
    assert fragment in str(caught.value)


def test_missing_settings_are_all_listed() -> None:
    with pytest.raises(BackendError) as caught:
        load_config({})
    assert all(f"{name}: Field required" in str(caught.value)
               for name in ("hosts", "client_key", "known_hosts"))


def test_unreadable_client_key(keyfiles: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "bad").write_text("not a key")
    with pytest.raises(BackendError, match="cannot read the SSH client key"):
        SSHBackend(load_config(config(keyfiles, client_key=str(tmp_path / "bad"))),
                   trusted_keys=tmp_path / "trusted-keys.json")


def test_toml_site_configuration(keyfiles: dict[str, str], tmp_path: Path) -> None:
    toml = tmp_path / "fedhub.toml"
    toml.write_text(f"""
[site_agent]
site = "lab-machines"
backend = "ssh"

[site_agent.backend_config]
hosts = [
  {{ address = "node1.example.org", username = "jupyter" }},
  {{ address = "10.1.2.3", port = 2222, username = "jupyter", bind = "0.0.0.0" }},
]
client_key = "{keyfiles['client_key']}"
known_hosts = "{keyfiles['known_hosts']}"
python = "/opt/fedhub/bin/python"
remote_data_dir = "/srv/fedhub"
""")
    settings = load_settings(SiteAgentSettings, toml, data_dir=tmp_path)
    backend = make_backend(settings)
    assert isinstance(backend, SSHBackend) and backend.name == "ssh"
    assert list(backend.hosts) == ["jupyter@node1.example.org:22", "jupyter@10.1.2.3:2222"]
    assert backend.capacity() == {"hosts": 2}
    assert backend.options() == []
    assert backend.trusted_keys == settings.trusted_keys_path


def test_registry_reports_config_errors(tmp_path: Path) -> None:
    settings = SiteAgentSettings(site="x", data_dir=tmp_path, backend="ssh",
                                 backend_config={"hosts": []})
    with pytest.raises(BackendError, match="invalid SSH backend_config"):
        make_backend(settings)
