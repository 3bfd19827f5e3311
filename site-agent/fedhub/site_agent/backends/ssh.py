"""A backend that runs each server as a detached ``jupyter lab`` process on hosts reached
over SSH (asyncssh).

- One connection per host, opened on demand and reopened after it broke. Host keys are
  always checked against the configured known_hosts file; the client key is the site's own.
- A start is one remote command (the launcher in :mod:`ssh_remote`): it picks a free port
  on the remote host, starts Jupyter in a new session with its output in a log file there,
  and prints pid, port, start time and boot id. That is the job state, so a restarted agent
  finds the process again from its events alone.
- Status is one remote command per host for all of that host's servers (a ``/proc`` read).
  A failed query is UNKNOWN, never GONE.
- The edge proxies' public keys (``trusted-keys.json``, public, no secret) are copied to
  ``<remote_data_dir>/trusted-keys.json`` over SFTP before every start and whenever the
  local file changed (checked at every status poll), so servers on that host can verify
  the proxy's assertions: they re-read the file when an unknown key id arrives. A copy is
  used rather than a shared path because SSH hosts rarely share a filesystem with the agent.

All servers of a host run as its configured SSH user, which must be able to run
``<python> -m jupyterlab`` with the ``fedhub`` package installed (for the identity
provider that checks the proxy's assertion).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from fedhub.schemas.names import subject_token
from fedhub.schemas.resources import OptionSpec
from fedhub.site_agent.backends import ssh_remote as remote
from fedhub.site_agent.backends.base import (
    Checkpoint,
    JobReport,
    JobStatus,
    Phase,
    ServerSpec,
    through_to_running,
)
from fedhub.site_agent.backends.readiness import wait_until_ready
from fedhub.site_agent.backends.server_flags import SERVER_FLAGS
from fedhub.site_agent.backends.ssh_config import SSHConfig, SSHHost, load_config
from fedhub.site_agent.errors import BackendError

if TYPE_CHECKING:
    from fedhub.site_agent.settings import SiteAgentSettings

log = logging.getLogger(__name__)

_ALIVE_CHECK_EVERY = 2.0  # seconds between remote process checks while waiting for ready
_SSH_ERRORS = (asyncssh.Error, OSError, TimeoutError)


def jupyter_argv(command: list[str], host: SSHHost, spec: ServerSpec) -> list[str]:
    """The remote Jupyter command line (the launcher adds port, root dir and --allow-root)."""
    return [
        *command,
        *SERVER_FLAGS,
        f"--ServerApp.ip={host.listen}",
        f"--ServerApp.base_url={spec.prefix}",
    ]


def http_target(host: str, port: int) -> str:
    """``http://host:port``, with brackets around IPv6 addresses."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class SSHBackend:
    """Runs ``jupyter lab`` per server on one of the configured SSH hosts."""

    name = "ssh"

    def __init__(self, config: SSHConfig, *, trusted_keys: Path,
                 ready_timeout: float = 120.0) -> None:
        self.config = config
        self.trusted_keys = trusted_keys
        self.ready_timeout = ready_timeout
        self.hosts = {h.label: h for h in config.hosts}
        try:
            self._client_key = asyncssh.read_private_key(config.client_key)
        except (OSError, asyncssh.KeyImportError, ValueError) as exc:
            raise BackendError(f"cannot read the SSH client key {config.client_key}: {exc}"
                               ) from exc
        self._conns: dict[str, asyncssh.SSHClientConnection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._synced: dict[str, str] = {}  # host label -> digest of trusted keys copied there
        self._listings: dict[str, remote.HostListing] = {}  # last status per host

    # -- connections --------------------------------------------------------------------

    async def _connection(self, host: SSHHost) -> asyncssh.SSHClientConnection:
        lock = self._locks.setdefault(host.label, asyncio.Lock())
        async with lock:
            conn = self._conns.get(host.label)
            if conn is not None and not conn.is_closed():
                return conn
            known_hosts = self.config.known_hosts
            try:
                conn = await asyncio.wait_for(asyncssh.connect(
                    host.address, host.port, username=host.username,
                    client_keys=[self._client_key], known_hosts=str(known_hosts),
                    config=[], agent_path=None, preferred_auth="publickey",
                    connect_timeout=self.config.connect_timeout,
                    keepalive_interval=15, keepalive_count_max=3,
                ), self.config.connect_timeout + 5)
            except asyncssh.HostKeyNotVerifiable as exc:
                raise BackendError(
                    f"refusing {host.label}: its host key is not the one in {known_hosts} "
                    f"({exc.reason}); verify the host's fingerprint, then add its key "
                    f"(ssh-keyscan -p {host.port} {host.address} >> {known_hosts})") from exc
            except asyncssh.PermissionDenied as exc:
                raise BackendError(f"{host.label} refused the site's SSH key "
                                   f"{self.config.client_key}: {exc.reason}") from exc
            except _SSH_ERRORS as exc:
                raise BackendError(f"cannot connect to {host.label}: "
                                   f"{_describe(exc)}") from exc
            self._conns[host.label] = conn
            return conn

    def _drop(self, host: SSHHost) -> None:
        conn = self._conns.pop(host.label, None)
        if conn is not None:
            conn.abort()

    async def _run(self, host: SSHHost, command: str,
                   timeout: float | None = None) -> asyncssh.SSHCompletedProcess:
        """Run one remote command; BackendError if the host cannot be reached in time."""
        conn = await self._connection(host)
        limit = timeout or self.config.command_timeout
        try:
            return await asyncio.wait_for(conn.run(command, check=False), limit)
        except TimeoutError as exc:
            self._drop(host)  # a hung connection would hang every later command too
            raise BackendError(f"{host.label} did not answer within {limit:.0f} s") from exc
        except _SSH_ERRORS as exc:
            self._drop(host)
            raise BackendError(f"lost the connection to {host.label}: {_describe(exc)}"
                               ) from exc

    async def close(self) -> None:
        """Close every SSH connection (servers keep running). Idempotent."""
        conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()

    async def _sync_keys(self, host: SSHHost) -> None:
        """Copy ``trusted-keys.json`` to the host if it changed since the last copy."""
        try:
            data = self.trusted_keys.read_bytes()
        except FileNotFoundError:
            data = b"{}"
        except OSError as exc:
            raise BackendError(f"cannot read the trusted keys {self.trusted_keys}: {exc}"
                               ) from exc
        digest = hashlib.sha256(data).hexdigest()
        if self._synced.get(host.label) == digest:
            return
        conn = await self._connection(host)
        folder = self.config.remote_data_dir.rstrip("/") or "/"
        tmp = f"{folder}/.trusted-keys.{uuid.uuid4().hex}"
        try:
            async with asyncio.timeout(self.config.command_timeout):
                async with conn.start_sftp_client() as sftp:
                    await sftp.makedirs(folder, exist_ok=True)
                    async with sftp.open(tmp, "wb") as fh:
                        await fh.write(data)
                    await sftp.chmod(tmp, 0o644)
                    # Atomic replace: a server never reads a partial file.
                    await sftp.posix_rename(tmp, f"{folder}/trusted-keys.json")
        except _SSH_ERRORS as exc:
            raise BackendError(f"cannot copy the trusted keys to {host.label}: "
                               f"{_describe(exc)}") from exc
        self._synced[host.label] = digest

    def _host_of(self, state: Mapping[str, Any]) -> SSHHost:
        host = self.hosts.get(str(state.get("ssh_host", "")))
        if host is None:
            raise BackendError(f"the server runs on {state.get('ssh_host')!r}, which is no "
                               "longer among this site's SSH hosts")
        return host

    def _by_preference(self) -> list[SSHHost]:
        """Hosts ordered by their last known load per CPU (unknown counts as idle)."""
        def load(host: SSHHost) -> float:
            seen = self._listings.get(host.label)
            if seen is None or seen.load1 is None:
                return 0.0
            return seen.load1 / max(seen.cpus or 1, 1)
        return sorted(self.config.hosts, key=load)

    # -- the Backend interface ----------------------------------------------------------

    async def start(self, spec: ServerSpec) -> AsyncGenerator[Checkpoint, None]:
        """See :meth:`Backend.start`: launch on the least loaded reachable host, yield
        SUBMITTED, wait until ``<prefix>api`` answers."""
        args = {
            "data_dir": self.config.remote_data_dir,
            "user_dir": subject_token(spec.user),
            "key": spec.key,
            "spawn_id": spec.spawn_id,
            "env": {"FEDHUB_SERVER_PREFIX": spec.prefix, "FEDHUB_SERVER_USER": spec.user},
        }
        problems: list[str] = []
        for host in self._by_preference():
            command = remote.python_command(self.config.python, remote.LAUNCH, {
                **args, "bind": host.listen,
                "argv": jupyter_argv(self.config.command, host, spec)})
            try:
                await self._sync_keys(host)
                result = await self._run(host, command)
                if result.exit_status != 0:
                    raise BackendError(f"the launcher on {host.label} failed "
                                       f"(exit {result.exit_status}): "
                                       f"{_text(result.stderr)[-1500:].strip()}")
                launched = remote.parse_launch_output(_text(result.stdout))
            except (BackendError, ValueError) as exc:
                log.warning("cannot start %s on %s: %s", spec.key, host.label, exc)
                problems.append(str(exc))
                continue
            break
        else:
            raise BackendError("cannot start Jupyter on any SSH host: " + "; ".join(problems))
        state: dict[str, Any] = {
            "ssh_host": host.label,
            "host": host.address,
            "port": int(launched["port"]),
            "pid": int(launched["pid"]),
            "starttime": int(launched["starttime"]),
            "boot_id": str(launched["boot_id"]),
            "log": str(launched.get("log", "")),
            "started_at": launched.get("started_at"),
            "prefix": spec.prefix,
        }
        submitted = Checkpoint(Phase.SUBMITTED, state, job_id=f"{host.address}:{state['pid']}",
                             message=f"Starting Jupyter server on {host.address} "
                                     f"(pid {state['pid']})")
        async with aclosing(through_to_running(self, spec, submitted)) as steps:
            async for cp in steps:
                yield cp

    async def resume(
        self, spec: ServerSpec, state: Mapping[str, Any]
    ) -> AsyncGenerator[Checkpoint, None]:
        """See :meth:`Backend.resume`: wait until ``<prefix>api`` answers 200, checking
        every few seconds that the remote process still runs."""
        host = self._host_of(state)
        target = http_target(str(state["host"]), int(state["port"]))
        url = f"{target}{spec.prefix}api"
        next_check = 0.0

        async def still_running() -> None:
            nonlocal next_check
            if time.monotonic() < next_check:
                return  # a remote check costs a round trip: not every poll
            report = (await self.status({"s": state}))["s"]
            if report.status is JobStatus.GONE:
                tail = await self._log_tail(host, str(state.get("log", "")))
                raise BackendError(f"Jupyter exited during start on {host.address}"
                                   + (f"; last log lines:\n{tail}" if tail else ""))
            next_check = time.monotonic() + _ALIVE_CHECK_EVERY

        await wait_until_ready(url, self.ready_timeout, still_running)
        yield Checkpoint(Phase.RUNNING, dict(state), job_id=f"{host.address}:{state['pid']}",
                         target=target, message=f"Jupyter server is running at {target}")

    async def _log_tail(self, host: SSHHost, path: str) -> str:
        if not path:
            return ""
        command = remote.python_command(self.config.python, remote.TAIL,
                                        {"path": path, "lines": 15, "limit": 3000})
        try:
            return _text((await self._run(host, command)).stdout).rstrip()
        except BackendError:
            return ""

    async def stop(self, state: Mapping[str, Any]) -> None:
        """See :meth:`Backend.stop`: SIGTERM to the remote process group, SIGKILL after
        ``stop_grace``; verified on the host. Raises BackendError if the host cannot be
        reached or the process survives."""
        try:
            pid, starttime = int(state["pid"]), int(state["starttime"])
            boot_id = str(state["boot_id"])
        except (KeyError, TypeError, ValueError):
            log.warning("cannot stop a job without a valid pid: %r", dict(state))
            return
        host = self._host_of(state)
        command = remote.python_command(self.config.python, remote.STOP, {
            "pid": pid, "starttime": starttime, "boot_id": boot_id,
            "grace": self.config.stop_grace})
        result = await self._run(host, command,
                                 timeout=self.config.command_timeout + self.config.stop_grace + 5)
        answer = _text(result.stdout).strip()
        if answer == "gone":
            return
        if answer == "running":
            raise BackendError(f"process {pid} on {host.address} is still running after "
                               "SIGKILL")
        raise BackendError(f"stopping process {pid} on {host.address} failed: "
                           f"{_text(result.stderr)[-500:].strip() or answer[-500:]}")

    async def status(self, states: Mapping[str, Mapping[str, Any]]) -> dict[str, JobReport]:
        """See :meth:`Backend.status`: one ``/proc`` read per host for all its servers."""
        out: dict[str, JobReport] = {}
        by_host: dict[str, dict[str, tuple[int, int, str]]] = {}
        for key, state in states.items():
            try:
                host = self._host_of(state)
                ident = int(state["pid"]), int(state["starttime"]), str(state["boot_id"])
            except (KeyError, TypeError, ValueError) as exc:
                out[key] = JobReport(JobStatus.UNKNOWN, f"no valid process in the job state: "
                                                        f"{exc}")
                continue
            except BackendError as exc:
                out[key] = JobReport(JobStatus.UNKNOWN, str(exc))
                continue
            by_host.setdefault(host.label, {})[key] = ident
        results = await asyncio.gather(*(self._host_status(self.hosts[label], jobs)
                                         for label, jobs in by_host.items()))
        for reports in results:
            out.update(reports)
        return out

    async def _host_status(self, host: SSHHost, jobs: dict[str, tuple[int, int, str]]
                           ) -> dict[str, JobReport]:
        try:
            result = await self._run(host, remote.status_command([j[0] for j in jobs.values()]))
            listing = remote.parse_status_output(_text(result.stdout))
        except (BackendError, remote.ListingError) as exc:
            return {key: JobReport(JobStatus.UNKNOWN, str(exc)) for key in jobs}
        self._listings[host.label] = listing
        try:
            await self._sync_keys(host)
        except BackendError as exc:
            log.warning("%s", exc)
        return {key: classify(listing, *ident) for key, ident in jobs.items()}

    def options(self) -> list[OptionSpec]:
        """See :meth:`Backend.options`: an SSH site offers no choices (yet)."""
        return []

    def capacity(self) -> dict[str, Any]:
        """See :meth:`Backend.capacity`: host count, and CPUs and load summed over the
        hosts seen at the last status query."""
        cap: dict[str, Any] = {"hosts": len(self.hosts)}
        seen = [lst for label, lst in self._listings.items() if label in self.hosts]
        cpus = [lst.cpus for lst in seen if lst.cpus is not None]
        loads = [lst.load1 for lst in seen if lst.load1 is not None]
        if cpus:
            cap["cpus"] = sum(cpus)
        if loads:
            cap["load1"] = round(sum(loads), 2)
        return cap


def classify(listing: remote.HostListing, pid: int, starttime: int, boot_id: str) -> JobReport:
    """A job's report from its host's listing: RUNNING only for the very same process."""
    if listing.boot_id != boot_id:
        return JobReport(JobStatus.GONE, "the host was restarted")
    proc = listing.procs.get(pid)
    if proc is None or proc.starttime != starttime:
        return JobReport(JobStatus.GONE, "the server process exited")
    if proc.zombie:
        return JobReport(JobStatus.GONE, "the server process exited")
    return JobReport(JobStatus.RUNNING)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else ""


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", "") or str(exc)
    return reason or type(exc).__name__


def from_settings(settings: SiteAgentSettings) -> SSHBackend:
    """The SSH backend as configured in ``[site_agent.backend_config]``; raises
    BackendError with every problem of the configuration."""
    return SSHBackend(load_config(settings.backend_config),
                      trusted_keys=settings.trusted_keys_path,
                      ready_timeout=settings.ready_timeout)
