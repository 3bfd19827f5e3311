"""A backend that runs each server in a Docker container (talks to dockerd with aiodocker).

Containers carry labels (site, user, server, spawn id, see docker_spec) so that status is
one list call for the whole site and containers the agent no longer knows can be removed
(:meth:`DockerBackend.cleanup`). Each user has one named volume mounted as the notebook
directory, kept when a container is removed, so work survives a stop and a start.

The edge proxies' keys reach the containers through a directory the backend owns
(``<data_dir>/docker/trusted``), bind-mounted read-only: the agent replaces
``trusted-keys.json`` atomically, which a single-file bind mount would never see, so the
backend copies it into that directory on every start and status call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Mapping
from contextlib import aclosing, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from fedhub.schemas.resources import OptionSpec
from fedhub.site_agent.backends.base import (
    Checkpoint,
    JobReport,
    JobStatus,
    Phase,
    ServerSpec,
    through_to_running,
)
from fedhub.site_agent.backends.docker_spec import (
    KEYS_FILE,
    LABEL_SITE,
    DockerConfig,
    container_body,
    container_name,
    declared_options,
    parse_config,
    parse_labels,
    published_port,
    report_for,
    resources,
)
from fedhub.site_agent.backends.readiness import wait_until_ready
from fedhub.site_agent.errors import BackendError
from fedhub.site_agent.keys import write_atomic

if TYPE_CHECKING:
    from fedhub.site_agent.settings import SiteAgentSettings

log = logging.getLogger(__name__)
_API_TIMEOUT = 30.0
# What a failing daemon connection raises (socket gone, daemon down, timeouts).
_UNREACHABLE = (aiohttp.ClientError, OSError, asyncio.TimeoutError, ValueError)
_NO_CONNECTION = 900  # aiodocker's DockerError status when it could not connect at all


class DockerBackend:
    """Runs one container per server from the profile's image; see the module docstring."""

    name = "docker"

    def __init__(self, config: DockerConfig, *, site: str, data_dir: Path,
                 trusted_keys: Path, ready_timeout: float = 120.0) -> None:
        self.config = config
        self.site = site
        self.data_dir = data_dir
        self.trusted_keys = trusted_keys
        self.ready_timeout = ready_timeout
        self.docker_url = config.docker_url
        self.keys_dir = data_dir / "docker" / "trusted"
        self._keys_seen: tuple[int, int] | None = None
        self._containers = 0

    # -- plumbing ---------------------------------------------------------------------------

    @asynccontextmanager
    async def _docker(self) -> AsyncIterator[aiodocker.Docker]:
        """A client for one operation (no session outlives the event loop that made it)."""
        client = aiodocker.Docker(url=self.docker_url or None,
                                  timeout=aiohttp.ClientTimeout(total=_API_TIMEOUT))
        try:
            yield client
        finally:
            await client.close()

    def sync_keys(self) -> None:
        """Copy the trusted keys into the mounted directory if they changed. Never raises."""
        try:
            st = self.trusted_keys.stat()
            seen = (st.st_mtime_ns, st.st_size)
            if seen == self._keys_seen and (self.keys_dir / KEYS_FILE).exists():
                return
            write_atomic(self.keys_dir / KEYS_FILE, self.trusted_keys.read_text())
            self.keys_dir.chmod(0o755)  # the containers' user is not the agent's
            self._keys_seen = seen
        except FileNotFoundError:
            if not (self.keys_dir / KEYS_FILE).exists():
                write_atomic(self.keys_dir / KEYS_FILE, "{}")  # refuse everything until keys
        except OSError as exc:
            log.warning("cannot copy trusted keys for containers: %s", exc)

    async def _site_containers(self, docker: aiodocker.Docker) -> list[dict[str, Any]]:
        """All containers (running or not) labelled with this site: one API call."""
        filters = json.dumps({"label": [f"{LABEL_SITE}={self.site}"]})
        listed = await docker.containers.list(all=True, filters=filters)
        return [dict(c._container) for c in listed]

    async def _logs(self, docker: aiodocker.Docker, ident: str) -> str:
        try:
            lines = await docker.containers.container(ident).log(
                stdout=True, stderr=True, tail=15)
        except (DockerError, *_UNREACHABLE):
            return ""
        return "".join(str(line) for line in lines)[-3000:]

    async def _exited(self, docker: aiodocker.Docker, ident: str, info: Mapping[str, Any]
                      ) -> BackendError:
        """The error for a container that stopped during start, with its last log lines."""
        st = info.get("State") or {}
        oom = " (out of memory)" if st.get("OOMKilled") else ""
        tail = await self._logs(docker, ident)
        return BackendError(f"Jupyter exited during start (exit code {st.get('ExitCode')}){oom}"
                            + (f"; last log lines:\n{tail}" if tail else ""))

    async def _discard(self, state: Mapping[str, Any]) -> None:
        """Remove a half-made container while another error is on its way up."""
        try:
            await self.stop(state)
        except BackendError as exc:
            log.warning("%s (cleanup will remove it later)", exc)

    # -- Backend ----------------------------------------------------------------------------

    async def start(self, spec: ServerSpec) -> AsyncGenerator[Checkpoint, None]:
        """See :meth:`Backend.start`: create and start the container, yield SUBMITTED,
        wait for ``<prefix>api``. Raises BackendError for a missing image, limits above
        the profile's or an unreachable daemon; removes the container on any failure."""
        res = resources(self.config, spec.options)
        self.sync_keys()
        body = container_body(self.config, self.site, spec, res, str(self.keys_dir))
        name = container_name(self.site, spec)
        state: dict[str, Any] = {"container": "", "name": name, "host": self.config.publish_host,
                                 "port": 0, "prefix": spec.prefix, "profile": res.profile}
        try:
            async with self._docker() as docker:
                try:
                    container = await docker.containers.create(config=body, name=name)
                except DockerError as exc:
                    if exc.status == _NO_CONNECTION:
                        raise BackendError(f"cannot reach the Docker daemon: {exc.message}"
                                           ) from exc
                    if exc.status == 404:
                        raise BackendError(f"image {res.image} is not available at this site"
                                           ) from exc
                    raise BackendError(f"cannot create the container: {exc.message}") from exc
                state["container"] = container.id
                try:
                    await container.start()
                    info = await container.show()
                except DockerError as exc:
                    raise BackendError(f"cannot start the container: {exc.message}") from exc
                port = published_port(info)
                if port is None:
                    if not (info.get("State") or {}).get("Running"):
                        raise await self._exited(docker, container.id, info)
                    raise BackendError("the container's port was not published")
                state["port"] = port
        except _UNREACHABLE as exc:
            await self._discard(state)
            raise BackendError(f"cannot reach the Docker daemon: {exc}") from exc
        except BaseException:
            await self._discard(state)  # also when cancelled before the first checkpoint
            raise
        submitted = Checkpoint(Phase.SUBMITTED, state, job_id=state["container"][:12],
                             message=f"Started container {name} ({res.profile})")
        async with aclosing(through_to_running(self, spec, submitted)) as steps:
            async for cp in steps:
                yield cp

    async def resume(
        self, spec: ServerSpec, state: Mapping[str, Any]
    ) -> AsyncGenerator[Checkpoint, None]:
        """See :meth:`Backend.resume`: wait until ``<prefix>api`` answers 200 while the
        container runs."""
        ident = str(state.get("container") or state.get("name") or "")
        if not ident:
            raise BackendError("no container in the job state")
        target = f"http://{state['host']}:{state['port']}"
        url = f"{target}{spec.prefix}api"
        async with self._docker() as docker:

            async def still_running() -> None:
                try:
                    info = await docker.containers.container(ident).show()
                except DockerError as exc:
                    if exc.status == 404:
                        raise BackendError("the container disappeared during start") from exc
                    return  # daemon trouble: keep trying until the deadline
                except _UNREACHABLE:
                    return
                if not (info.get("State") or {}).get("Running"):
                    raise await self._exited(docker, ident, info)

            await wait_until_ready(url, self.ready_timeout, still_running)
        yield Checkpoint(Phase.RUNNING, dict(state), job_id=ident[:12], target=target,
                         message=f"Jupyter server is running at {target}")

    async def stop(self, state: Mapping[str, Any]) -> None:
        """See :meth:`Backend.stop`: stop (SIGTERM, SIGKILL after ``stop_timeout``) and
        remove the container; the user's volume stays. Idempotent."""
        ident = str(state.get("container") or state.get("name") or "")
        if not ident:
            return
        try:
            async with self._docker() as docker:
                container = docker.containers.container(ident)
                try:
                    await container.stop(t=self.config.stop_timeout)
                except DockerError as exc:
                    if exc.status == 404:
                        return
                    if exc.status == _NO_CONNECTION:
                        raise BackendError(f"cannot reach the Docker daemon to stop "
                                           f"{ident[:12]}: {exc.message}") from exc
                    if exc.status != 304:  # 304: already stopped
                        log.warning("stopping container %s: %s", ident, exc)
                try:
                    await container.delete(force=True)
                except DockerError as exc:
                    if exc.status == 404:
                        return
                    if exc.status == 409 and "in progress" in exc.message:
                        return  # someone else is removing it
                    raise BackendError(f"cannot remove container {ident[:12]}: {exc.message}"
                                       ) from exc
        except _UNREACHABLE as exc:
            raise BackendError(f"cannot reach the Docker daemon to stop {ident[:12]}: {exc}"
                               ) from exc

    async def status(self, states: Mapping[str, Mapping[str, Any]]) -> dict[str, JobReport]:
        """See :meth:`Backend.status`: one list call for the site's containers."""
        if not states:
            return {}
        self.sync_keys()
        try:
            async with self._docker() as docker:
                listed = await self._site_containers(docker)
        except (DockerError, *_UNREACHABLE) as exc:
            why = f"cannot list containers: {exc}"
            return {key: JobReport(JobStatus.UNKNOWN, why) for key in states}
        self._containers = sum(1 for c in listed if c.get("State") == "running")
        by_id = {str(c.get("Id", "")): c for c in listed}
        out: dict[str, JobReport] = {}
        for key, state in states.items():
            ident = str(state.get("container") or "")
            if not ident:
                out[key] = JobReport(JobStatus.UNKNOWN, "no container id in the job state")
            else:
                out[key] = report_for(by_id.get(ident))
        return out

    def options(self) -> list[OptionSpec]:
        """See :meth:`Backend.options`: the profile, and CPUs and memory within it."""
        return declared_options(self.config)

    def capacity(self) -> dict[str, Any]:
        """See :meth:`Backend.capacity`: this host's CPUs and memory, and the number of
        the site's running containers at the last status call."""
        cap: dict[str, Any] = {"cpus": os.cpu_count() or 1, "containers": self._containers,
                               "profiles": len(self.config.profiles)}
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    cap["mem_available_mb"] = int(line.split()[1]) // 1024
        except (OSError, ValueError, IndexError):
            pass
        return cap

    # -- beyond the interface ---------------------------------------------------------------

    async def cleanup(self, known_spawn_ids: Collection[str], *,
                      grace: float | None = None) -> list[str]:
        """Remove this site's containers whose spawn id the agent does not know.

        ``known_spawn_ids`` must hold every spawn the agent tracks, including starts in
        progress; containers created less than ``grace`` seconds ago (default:
        ``cleanup_grace``) are spared, so a start racing this call is safe. Volumes stay.
        Returns the names removed. Raises BackendError if the daemon cannot be reached.
        Idempotent.
        """
        grace = self.config.cleanup_grace if grace is None else grace
        known = set(known_spawn_ids)
        removed: list[str] = []
        try:
            async with self._docker() as docker:
                for c in await self._site_containers(docker):
                    owner = parse_labels(c.get("Labels"))
                    if owner is None or owner.site != self.site or owner.spawn_id in known:
                        continue
                    if time.time() - float(c.get("Created") or 0) < grace:
                        continue
                    name = str((c.get("Names") or [c.get("Id", "")])[0]).lstrip("/")
                    try:
                        await docker.containers.container(str(c["Id"])).delete(force=True)
                    except DockerError as exc:
                        if exc.status != 404:
                            log.warning("cannot remove orphan container %s: %s", name, exc)
                        continue
                    log.info("removed orphan container %s (user %r, spawn %s)", name,
                             owner.user, owner.spawn_id)
                    removed.append(name)
        except (DockerError, *_UNREACHABLE) as exc:
            raise BackendError(f"cannot list containers for cleanup: {exc}") from exc
        return removed


def from_settings(settings: SiteAgentSettings) -> DockerBackend:
    """The Docker backend from ``[site_agent.backend_config]``; BackendError if invalid."""
    config = parse_config(settings.backend_config)
    return DockerBackend(config, site=settings.site, data_dir=settings.data_dir,
                         trusted_keys=settings.trusted_keys_path,
                         ready_timeout=settings.ready_timeout)
