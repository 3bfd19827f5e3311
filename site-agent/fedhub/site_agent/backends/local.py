"""A backend that runs each server as a detached ``jupyter lab`` process on this machine.

By default every server runs as the agent's own OS account (a trial or single-tenant
site: users can then read what that account can). With ``system_users`` (the agent runs
as root) each server runs as the OS account of the same name, in its home directory, as
JupyterHub's LocalProcessSpawner does. Either way a server gets only the environment
variables named in ``env_keep``, never the agent's others.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import signal
import socket
import time
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from fedhub.schemas.names import subject_token
from fedhub.schemas.resources import OptionSpec
from fedhub.site_agent.backends.base import (
    Checkpoint,
    JobReport,
    JobStatus,
    Phase,
    ServerSpec,
    validated_config,
)
from fedhub.site_agent.backends.process import (
    ProcessGroup,
    alive,
    proc_state,
    reap,
    signal_group,
    spawn_detached,
)
from fedhub.site_agent.backends.readiness import wait_until_ready
from fedhub.site_agent.backends.server_flags import SERVER_FLAGS
from fedhub.site_agent.errors import BackendError

if TYPE_CHECKING:
    from fedhub.site_agent.settings import SiteAgentSettings

log = logging.getLogger(__name__)

STOP_GRACE = 10.0
# What a server inherits from the agent's environment (JupyterHub's Spawner.env_keep).
ENV_KEEP = ("PATH", "PYTHONPATH", "CONDA_ROOT", "CONDA_DEFAULT_ENV", "VIRTUAL_ENV", "LANG",
            "LC_ALL", "TZ")


class LocalConfig(BaseModel):
    """``[site_agent.backend_config]`` of a local site."""

    model_config = ConfigDict(extra="forbid")
    system_users: bool = False
    min_uid: int = Field(default=1000, ge=1)  # below: the system's (daemon, www-data...)
    env_keep: list[str] = Field(default_factory=lambda: list(ENV_KEEP))


PORT_HOLD = 120.0  # seconds a port handed out is not handed out again
BIND_ATTEMPTS = 3  # starts on fresh ports when the chosen one was taken before the bind
_handed_out: dict[int, float] = {}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now and was not handed out in the last ``PORT_HOLD`` s.

    The server binds it a moment later, so the kernel may give the same port to the next
    caller meanwhile (it knows nothing of our plans): under hundreds of concurrent starts
    that happens. Remembering what was handed out prevents it within this agent; another
    program may still take the port first, which ``start`` survives by trying again.
    """
    now = time.monotonic()
    for old, when in list(_handed_out.items()):
        if now - when > PORT_HOLD:
            del _handed_out[old]
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if port not in _handed_out:
            _handed_out[port] = now
            return port
    raise BackendError("cannot find a free TCP port")


def lost_the_port(text: str, port: int) -> bool:
    """True if ``text``, the end of a server's log, shows that its last start on ``port``
    ended because the port was taken."""
    marker = f"on port {port}\n"
    _, found, after = text.rpartition(marker)
    return bool(found) and "already in use" in after.lower()


async def _spawn_in_thread(argv: list[str], env: dict[str, str], log_path: Path) -> int:
    """``spawn_detached`` off the event loop: it returns only once the child has exec'd,
    which takes tens of milliseconds while hundreds of servers start, and the agent has
    other work meanwhile. A child whose start was cancelled meanwhile is killed."""
    spawning = asyncio.ensure_future(asyncio.to_thread(spawn_detached, argv, env, log_path))

    def orphaned(done: asyncio.Future[int]) -> None:
        if not done.cancelled() and done.exception() is None:
            signal_group(done.result(), signal.SIGKILL)
            reap(done.result())

    try:
        return await asyncio.shield(spawning)
    except asyncio.CancelledError:
        spawning.add_done_callback(orphaned)
        raise


class PortTaken(BackendError):
    """The server exited because another socket took its port before it could bind."""


def log_end(path: Path) -> str:
    """The last 16 KiB of a log file (empty if unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def last_lines(text: str, lines: int = 15, limit: int = 3000) -> str:
    """The last ``lines`` lines of ``text``, at most ``limit`` characters, for errors."""
    return "\n".join(text.splitlines()[-lines:])[-limit:]


def log_tail(path: Path, lines: int = 15, limit: int = 3000) -> str:
    """The last lines of a log file (empty if unreadable), for error messages."""
    return last_lines(log_end(path), lines, limit)


class LocalProcessBackend:
    """Runs ``jupyter lab`` per server as a local process listening on 127.0.0.1."""

    name = "local"

    def __init__(
        self,
        data_dir: Path,
        *,
        jupyter_command: list[str],
        ready_timeout: float = 120.0,
        host: str = "127.0.0.1",
        config: LocalConfig | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.jupyter_command = list(jupyter_command)
        self.ready_timeout = ready_timeout
        self.host = host
        self.config = config or LocalConfig()
        if self.config.system_users and os.geteuid() != 0:
            raise BackendError("system_users needs the site agent to run as root")

    @property
    def trusted_keys_path(self) -> Path:
        """The edge proxies' public keys, handed to every server."""
        return self.data_dir / "trusted-keys.json"

    def _account(self, user: str) -> pwd.struct_passwd | None:
        """The OS account ``user``'s server runs as (None: the agent's own)."""
        if not self.config.system_users:
            return None
        try:
            account = pwd.getpwnam(user)
        except KeyError:
            raise BackendError(f"this site runs servers as system users, and there is no "
                               f"system account named {user!r}") from None
        if account.pw_uid < self.config.min_uid:
            raise BackendError(f"refusing to run a server as {user!r} (uid {account.pw_uid}):"
                               f" accounts below min_uid {self.config.min_uid} are the "
                               f"system's, not users'")
        if not Path(account.pw_dir).is_dir():
            raise BackendError(f"the home directory {account.pw_dir} of {user!r} is missing")
        return account

    def _env(self, spec: ServerSpec, root: Path, account: pwd.struct_passwd | None
             ) -> dict[str, str]:
        env = {name: os.environ[name] for name in self.config.env_keep if name in os.environ}
        env.update(HOME=str(root), FEDHUB_TRUSTED_KEYS=str(self.trusted_keys_path),
                   FEDHUB_SERVER_PREFIX=spec.prefix, FEDHUB_SERVER_USER=spec.user)
        if account is not None:
            env.update(USER=account.pw_name, LOGNAME=account.pw_name, SHELL=account.pw_shell)
        return env

    def _argv(self, spec: ServerSpec, port: int, root: Path,
              account: pwd.struct_passwd | None = None) -> list[str]:
        exe = shutil.which(self.jupyter_command[0])
        if exe is None:
            raise BackendError(f"cannot find the Jupyter command {self.jupyter_command[0]!r}")
        become: list[str] = []
        if account is not None:  # the process itself drops to the account before exec
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                raise BackendError("system_users needs setpriv (Debian package util-linux)")
            become = [setpriv, f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}",
                      "--init-groups", "--"]
        # Root is refused by Jupyter unless told; containers and test machines run as root.
        root_flag = ["--allow-root"] if os.geteuid() == 0 and account is None else []
        return [
            *become,
            exe,
            *self.jupyter_command[1:],
            *SERVER_FLAGS,
            f"--ServerApp.ip={self.host}",
            f"--ServerApp.port={port}",
            f"--ServerApp.base_url={spec.prefix}",
            f"--ServerApp.root_dir={root}",
            *root_flag,
        ]

    async def _launch(self, spec: ServerSpec) -> dict[str, Any]:
        """Spawn the server on a fresh port; returns its job state."""
        account = self._account(spec.user)
        root = (Path(account.pw_dir) if account is not None
                else self.data_dir / "users" / subject_token(spec.user))
        log_path = self.data_dir / "logs" / f"{spec.key}.log"
        port = free_port(self.host)
        argv = self._argv(spec, port, root, account)
        env = self._env(spec, root, account)
        try:
            root.mkdir(parents=True, exist_ok=True)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("a") as fh:
                fh.write(f"--- fedhub: starting spawn {spec.spawn_id} on port {port}\n")
            pid = await _spawn_in_thread(argv, env, log_path)
        except OSError as exc:
            raise BackendError(f"cannot start Jupyter: {exc}") from exc
        st = proc_state(pid)
        return {
            "pid": pid,
            "port": port,
            "host": self.host,
            "starttime": st.starttime if st else 0,
            "log": str(log_path),
            "prefix": spec.prefix,
        }

    async def start(self, spec: ServerSpec) -> AsyncGenerator[Checkpoint, None]:
        """See :meth:`Backend.start`: spawn, yield SUBMITTED, wait for ``<prefix>api``.

        A server that lost its port to another socket before binding it is started again
        on a new port (the RUNNING checkpoint carries the state of the one that runs)."""
        state = await self._launch(spec)
        running = False
        try:
            yield Checkpoint(Phase.SUBMITTED, state, job_id=str(state["pid"]),
                             message=f"Starting Jupyter server (pid {state['pid']})")
            for attempt in range(1, BIND_ATTEMPTS + 1):
                try:
                    await self._wait_ready(spec, state)
                    break
                except PortTaken:
                    if attempt == BIND_ATTEMPTS:
                        raise
                    log.info("%s lost port %s before binding it; starting again",
                             spec.key, state["port"])
                    state = await self._launch(spec)
            running = True
            yield self._running(state)
        finally:
            if not running:  # failed, timed out or cancelled: leave nothing behind
                await self.stop(state)

    async def resume(
        self, spec: ServerSpec, state: Mapping[str, Any]
    ) -> AsyncGenerator[Checkpoint, None]:
        """See :meth:`Backend.resume`: wait until ``<prefix>api`` answers 200."""
        await self._wait_ready(spec, state)
        yield self._running(state)

    @staticmethod
    def _running(state: Mapping[str, Any]) -> Checkpoint:
        target = f"http://{state['host']}:{state['port']}"
        return Checkpoint(Phase.RUNNING, dict(state), job_id=str(state["pid"]), target=target,
                          message=f"Jupyter server is running at {target}")

    async def _wait_ready(self, spec: ServerSpec, state: Mapping[str, Any]) -> None:
        """Wait until the server answers; raises PortTaken if it exited because its port
        was taken, BackendError if it exited otherwise or did not answer in time."""
        pid, starttime = int(state["pid"]), int(state["starttime"])
        url = f"http://{state['host']}:{state['port']}{spec.prefix}api"
        log_path = Path(str(state.get("log", "")))

        async def still_running() -> None:
            exit_reason = reap(pid)
            if exit_reason or not alive(pid, starttime):
                end = log_end(log_path)
                tail = last_lines(end)
                how = f" ({exit_reason})" if exit_reason else ""
                error = PortTaken if lost_the_port(end, int(state["port"])) else BackendError
                raise error(f"Jupyter exited during start{how}"
                            + (f"; last log lines:\n{tail}" if tail else ""))

        await wait_until_ready(url, self.ready_timeout, still_running)

    async def stop(self, state: Mapping[str, Any]) -> None:
        """See :meth:`Backend.stop`: SIGTERM to the group, SIGKILL after 10 s."""
        try:
            pid, starttime = int(state["pid"]), int(state["starttime"])
        except (KeyError, TypeError, ValueError):
            log.warning("cannot stop a job without a valid pid: %r", dict(state))
            return

        # Another process now holds the pid: the kernel does not hand out a pid still in use
        # as a process group id, so the server's group is gone too, and a group led by that
        # pid is a stranger's, never to be signalled.
        st = proc_state(pid)
        if st is not None and st.starttime != starttime:
            return
        # The server's kernels share its process group and may outlive it (for a moment, or
        # orphaned by a crash): the server is stopped only when the whole group is gone.
        group = ProcessGroup(pid)

        def running() -> bool:
            return alive(pid, starttime) or group.alive()

        if not running():
            return

        signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if not running():
                return
        log.warning("server pid %d ignored SIGTERM for %.0f s, killing it", pid, STOP_GRACE)
        signal_group(pid, signal.SIGKILL)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if not running():
                return
        raise BackendError(f"process {pid} is still running after SIGKILL")

    async def status(self, states: Mapping[str, Mapping[str, Any]]) -> dict[str, JobReport]:
        """See :meth:`Backend.status`: RUNNING if /proc/<pid> has the recorded start time."""
        out: dict[str, JobReport] = {}
        for key, state in states.items():
            try:
                pid, starttime = int(state["pid"]), int(state["starttime"])
            except (KeyError, TypeError, ValueError):
                out[key] = JobReport(JobStatus.UNKNOWN, "no valid pid in the job state")
                continue
            try:
                reason = reap(pid)
                st = proc_state(pid)
            except (OSError, ValueError, IndexError) as exc:
                out[key] = JobReport(JobStatus.UNKNOWN, f"cannot read /proc: {exc}")
                continue
            if st is not None and st.starttime == starttime and not st.zombie:
                out[key] = JobReport(JobStatus.RUNNING)
            else:
                out[key] = JobReport(JobStatus.GONE, reason or "")
        return out

    def options(self) -> list[OptionSpec]:
        """See :meth:`Backend.options`: a local site offers no choices."""
        return []

    def capacity(self) -> dict[str, Any]:
        """See :meth:`Backend.capacity`: CPUs, load and available memory of this machine."""
        cap: dict[str, Any] = {"cpus": os.cpu_count() or 1}
        try:
            cap["load1"] = round(os.getloadavg()[0], 2)
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    cap["mem_available_mb"] = int(line.split()[1]) // 1024
        except (OSError, ValueError, IndexError):
            pass
        return cap


def from_settings(settings: SiteAgentSettings) -> LocalProcessBackend:
    """The local backend as configured (``system_users``, ``env_keep``)."""
    config = validated_config(LocalConfig, settings.backend_config, "local")
    if not config.system_users and os.geteuid() == 0:
        log.warning("every user's server runs as root on this machine; set system_users "
                    "= true in backend_config to run each as the user's own account")
    return LocalProcessBackend(settings.data_dir, jupyter_command=settings.jupyter_command,
                               ready_timeout=settings.ready_timeout, config=config)

