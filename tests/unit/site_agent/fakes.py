"""Behaviour fakes of the Backend interface for the agent's edge cases."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from fedhub.schemas.resources import OptionSpec
from fedhub.site_agent.backends.base import Checkpoint, JobReport, JobStatus, Phase, ServerSpec
from fedhub.site_agent.errors import BackendError

_ids = itertools.count(1000)


class FakeBackend:
    """Starts instantly; jobs live in ``self.jobs`` until stopped or ``vanish``-ed."""

    name = "fake"

    def __init__(self, *, ready_delay: float = 0.0, fail: str | None = None,
                 never_ready: bool = False, status_fails: bool = False,
                 offered: tuple[OptionSpec, ...] = (), queued: tuple[str, ...] = ()) -> None:
        self.offered = offered
        self.queued = queued
        self.ready_delay = ready_delay
        self.fail = fail
        self.never_ready = never_ready
        self.status_fails = status_fails
        self.jobs: dict[str, str] = {}  # job id -> "running" | "gone"
        self.started: list[ServerSpec] = []
        self.stopped: list[str] = []
        self.status_calls = 0

    async def start(self, spec: ServerSpec) -> AsyncGenerator[Checkpoint, None]:
        self.started.append(spec)
        job = str(next(_ids))
        self.jobs[job] = "running"
        state = {"job": job}
        ready = False
        try:
            yield Checkpoint(Phase.SUBMITTED, state, job_id=job, message=f"Submitted {job}")
            async for cp in self.resume(spec, state):
                ready = True
                yield cp
        finally:
            if not ready:
                self.jobs[job] = "gone"

    async def resume(self, spec: ServerSpec, state: Mapping[str, Any]
                     ) -> AsyncGenerator[Checkpoint, None]:
        if self.fail:
            raise BackendError(self.fail)
        for reason in self.queued:
            yield Checkpoint(Phase.QUEUED, dict(state), job_id=state["job"],
                             message=f"queued ({reason})")
        if self.never_ready:
            await asyncio.Event().wait()
        await asyncio.sleep(self.ready_delay)
        yield Checkpoint(Phase.RUNNING, dict(state), job_id=state["job"],
                         target=f"http://127.0.0.1:9/{state['job']}")

    async def stop(self, state: Mapping[str, Any]) -> None:
        self.stopped.append(state["job"])
        self.jobs[state["job"]] = "gone"

    async def status(self, states: Mapping[str, Mapping[str, Any]]) -> dict[str, JobReport]:
        self.status_calls += 1
        if self.status_fails:
            return {k: JobReport(JobStatus.UNKNOWN, "scheduler did not answer") for k in states}
        out = {}
        for key, state in states.items():
            alive = self.jobs.get(state.get("job", "")) == "running"
            out[key] = JobReport(JobStatus.RUNNING) if alive else JobReport(
                JobStatus.GONE, "exit code 1")
        return out

    def options(self) -> list[OptionSpec]:
        return list(self.offered)

    def capacity(self) -> dict[str, Any]:
        return {"cpus": 4}
