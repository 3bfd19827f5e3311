"""The interface every backend implements, and the values it exchanges with the agent.

A backend knows how to run one kind of job (a local process, a container, a batch job).
It keeps no memory of its own between calls: everything needed to find a server again is
in the ``state`` dict it yields in its checkpoints, which the agent records in the log, so
a restarted agent can re-adopt servers from their events alone.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from fedhub.schemas.config import problems
from fedhub.schemas.names import server_key
from fedhub.schemas.resources import OptionSpec
from fedhub.site_agent.errors import BackendError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def validated_config(model: type[ConfigT], raw: Mapping[str, Any], backend: str) -> ConfigT:
    """A site's ``backend_config`` as ``model``; raises BackendError naming every problem
    at once (``invalid <backend> backend_config: <field>: <why>; ...``)."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        said = problems(exc, "backend_config").replace("Value error, ", "")
        raise BackendError(f"invalid {backend} backend_config: {said}") from None


@dataclass(frozen=True)
class ServerSpec:
    """What to start: one user's named server behind ``prefix``."""

    user: str
    server: str
    spawn_id: str
    prefix: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``<user>.<server>`` subject tokens: unique per server, safe in file names."""
        return server_key(self.user, self.server)


class Phase(StrEnum):
    """Which checkpoint a start has reached."""

    SUBMITTED = "submitted"
    QUEUED = "queued"  # optional, between SUBMITTED and RUNNING: still waiting (message why)
    RUNNING = "running"


@dataclass(frozen=True)
class Checkpoint:
    """One step of a start; ``state`` is everything needed to stop or query the job."""

    phase: Phase
    state: dict[str, Any]
    job_id: str = ""
    target: str = ""
    message: str = ""


class JobStatus(StrEnum):
    """What a status query found out about one job."""

    RUNNING = "running"
    PENDING = "pending"  # queued or starting, not yet running
    GONE = "gone"  # positive evidence that the job no longer exists
    UNKNOWN = "unknown"  # the query failed: never treat as gone


@dataclass(frozen=True)
class JobReport:
    """A job's status and, for GONE, why it ended (readable by the user)."""

    status: JobStatus
    reason: str = ""


class Backend(Protocol):
    """How the agent starts, stops and watches servers at its site.

    Optional extras the agent calls when a backend has them: ``async cleanup(known
    spawn ids)`` removes labelled jobs no server owns (after adoption and periodically;
    raises BackendError to be retried later), and ``async close()`` releases connections
    when the agent shuts down.
    """

    name: str

    def start(self, spec: ServerSpec) -> AsyncGenerator[Checkpoint, None]:
        """Start a server, yielding checkpoints as it progresses.

        Yields first a SUBMITTED checkpoint (``job_id`` and ``state``), then any number of
        QUEUED ones whose ``message`` says why it still waits (only when that changes), then
        a RUNNING one
        with ``target`` (the URL the proxy forwards to) once the server answered a
        readiness check, then ends. Raises BackendError with a user-readable message when
        the server cannot be started; before raising it cleans up what it started. Closing
        the generator early (the agent cancels a start) also cleans up. Not idempotent:
        every call starts a new job.
        """
        ...

    def resume(
        self, spec: ServerSpec, state: Mapping[str, Any]
    ) -> AsyncGenerator[Checkpoint, None]:
        """Continue a start from its SUBMITTED ``state`` (after an agent restart).

        Yields the remaining checkpoints (RUNNING) without starting anything new. Raises
        BackendError like :meth:`start`. Safe to call again for the same state.
        """
        ...

    async def stop(self, state: Mapping[str, Any]) -> None:
        """Stop the job described by ``state`` and wait until it is gone.

        Idempotent: stopping a job that is already gone does nothing. Raises BackendError
        only when the job may still be running afterwards.
        """
        ...

    async def status(self, states: Mapping[str, Mapping[str, Any]]) -> dict[str, JobReport]:
        """Query all jobs at once (one scheduler call for the whole site).

        ``states`` maps the agent's server keys to job states; the result has one report
        for every key. A failed query yields UNKNOWN, never GONE. Does not raise for
        per-job problems. Idempotent (read only).
        """
        ...

    def options(self) -> list[OptionSpec]:
        """The resource options this site offers (partitions, cores, memory, walltime,
        images...); empty when the site offers no choice. The agent validates every
        StartServer's options against them before calling :meth:`start`, so ``spec.options``
        holds only declared, normalized values. Idempotent."""
        ...

    def capacity(self) -> dict[str, Any]:
        """Free capacity right now (for the heartbeat), e.g. ``{"cpus": 8}``; with
        ``{"problem": "..."}`` when the backend knows it cannot start servers now (its
        scheduler does not answer), which operators and placement see. Does not raise;
        idempotent."""
        ...


async def through_to_running(backend: Backend, spec: ServerSpec,
                             submitted: Checkpoint) -> AsyncGenerator[Checkpoint, None]:
    """The tail every ``start`` shares: yield ``submitted``, then the checkpoints of
    ``backend.resume`` up to RUNNING. If RUNNING is never reached (a failure, a timeout,
    the agent cancelling a start that is still queued), the job is stopped, so nothing is
    left behind. Use it with ``aclosing`` so closing ``start`` closes this too."""
    running = False
    try:
        yield submitted
        async with aclosing(backend.resume(spec, submitted.state)) as steps:
            async for cp in steps:
                running = running or cp.phase is Phase.RUNNING
                yield cp
    finally:
        if not running:
            await backend.stop(submitted.state)
