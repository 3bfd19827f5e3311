"""The backend contract for the local-process backend (real jupyter lab processes)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from fedhub.site_agent.backends import local
from fedhub.site_agent.backends.base import JobStatus
from fedhub.site_agent.backends.local import ENV_KEEP, LocalConfig, LocalProcessBackend
from fedhub.site_agent.errors import BackendError
from tests.support.backend_contract import (
    BackendContract,
    BrokenStatus,
    Fresh,
    Leftovers,
    new_spec,
    start_until_running,
)
from tests.support.services import missing

pytestmark = pytest.mark.integration


class TestLocalBackendContract(BackendContract):
    @pytest.fixture
    def site_dir(self, tmp_path: Path) -> Path:
        return tmp_path

    @pytest.fixture
    def fresh_backend(self, site_dir: Path) -> Fresh:
        return lambda: LocalProcessBackend(
            site_dir, jupyter_command=[sys.executable, "-m", "jupyterlab"], ready_timeout=90)

    @pytest.fixture
    def backend(self, fresh_backend: Fresh) -> LocalProcessBackend:
        made = fresh_backend()
        assert isinstance(made, LocalProcessBackend)
        return made

    @pytest.fixture
    def leftovers(self, site_dir: Path) -> Leftovers:
        def find() -> list[str]:
            out = subprocess.run(["pgrep", "-f", f"root_dir={site_dir}"], capture_output=True,
                                 text=True)
            return out.stdout.split()
        return find

    @pytest.fixture
    def broken_status(self, monkeypatch: pytest.MonkeyPatch) -> BrokenStatus:
        @contextmanager
        def broken() -> Iterator[None]:
            with monkeypatch.context() as m:
                def unreadable(*_a: object, **_k: object) -> object:
                    raise OSError("/proc is not readable")
                m.setattr(local, "proc_state", unreadable)
                yield
        return broken


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def cmdline_of(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_text().split("\0")


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid in /proc/{pid}/status")


# A stand-in for Jupyter that any account can run: the system Python and a script outside
# /root (the test venv's Python may live where other accounts cannot reach).
TINY_SERVER = """
import http.server, sys
args = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
base = args["ServerApp.base_url"]

class Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == base + "api" else 404)
        self.end_headers()

http.server.HTTPServer(("127.0.0.1", int(args["ServerApp.port"])), Answer).serve_forever()
"""


def needs_root() -> None:
    if os.geteuid() != 0:
        missing("system_users needs root (to create an account and switch to it)")


@pytest.fixture
def account() -> Iterator[str]:
    """A fresh OS account (deleted afterwards); only root can make one."""
    needs_root()
    name = f"fh{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


@pytest.fixture
def tiny_server() -> Iterator[list[str]]:
    python = shutil.which("python3", path="/usr/bin:/bin")
    assert python is not None, "the system Python (Debian package python3) is needed"
    where = Path(tempfile.mkdtemp(prefix="fedhub-tiny-"))
    where.chmod(0o755)
    script = where / "server.py"
    script.write_text(TINY_SERVER)
    script.chmod(0o644)
    yield [python, str(script)]
    shutil.rmtree(where)


async def test_a_server_gets_none_of_the_agents_other_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_server: list[str]) -> None:
    monkeypatch.setenv("FEDHUB_SITE_AGENT_CREDENTIALS", "/etc/fedhub/site.creds")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "an operator's")
    monkeypatch.setenv("LANG", "C.UTF-8")
    backend = LocalProcessBackend(tmp_path, jupyter_command=tiny_server, ready_timeout=30)
    spec = new_spec("alice")
    state, _ = await start_until_running(backend, spec)
    try:
        env = environ_of(int(state["pid"]))
        assert "FEDHUB_SITE_AGENT_CREDENTIALS" not in env
        assert set(env) <= set(ENV_KEEP) | {"HOME", "FEDHUB_TRUSTED_KEYS",
                                            "FEDHUB_SERVER_PREFIX", "FEDHUB_SERVER_USER"}
        assert env["LANG"] == "C.UTF-8" and env["PATH"] == os.environ["PATH"]
        assert env["HOME"] == str(tmp_path / "users" / "alice")  # Jupyter's files per user
        assert env["FEDHUB_SERVER_USER"] == "alice"
    finally:
        await backend.stop(state)


async def test_system_users_run_each_server_as_its_own_account(
        tmp_path: Path, account: str, tiny_server: list[str]) -> None:
    backend = LocalProcessBackend(tmp_path, jupyter_command=tiny_server, ready_timeout=30,
                                  config=LocalConfig(system_users=True))
    spec = new_spec(account)
    state, target = await start_until_running(backend, spec)
    pid = int(state["pid"])
    try:
        home = pwd.getpwnam(account)
        assert uid_of(pid) == home.pw_uid
        env = environ_of(pid)
        assert (env["HOME"], env["USER"]) == (home.pw_dir, account)
        argv = cmdline_of(pid)
        assert f"--ServerApp.root_dir={home.pw_dir}" in argv and "--allow-root" not in argv
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{target}{spec.prefix}api")).status_code == 200
    finally:
        await backend.stop(state)
    assert (await backend.status({"s": state}))["s"].status is JobStatus.GONE


async def test_system_users_refuse_a_user_without_an_account(tmp_path: Path,
                                                             tiny_server: list[str]) -> None:
    needs_root()
    backend = LocalProcessBackend(tmp_path, jupyter_command=tiny_server,
                                  config=LocalConfig(system_users=True))
    with pytest.raises(BackendError, match="no system account named 'nobody-here'"):
        await start_until_running(backend, new_spec("nobody-here"))
    for service in ("root", "daemon"):  # uid 0, and a system account below min_uid
        with pytest.raises(BackendError, match=rf"{service!r} \(uid \d+\): accounts below"):
            await start_until_running(backend, new_spec(service))

