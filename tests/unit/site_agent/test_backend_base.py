"""The start tail every backend shares: nothing is left behind unless the server runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from typing import Any

import pytest

from fedhub.site_agent.backends.base import (
    Checkpoint,
    Phase,
    ServerSpec,
    through_to_running,
    validated_config,
)
from fedhub.site_agent.backends.local import LocalConfig
from fedhub.site_agent.errors import BackendError

SPEC = ServerSpec("alice", "", "s1", "/user/alice/")
SUBMITTED = Checkpoint(Phase.SUBMITTED, {"job": "7"}, job_id="7")


class Queued:
    """Reports 'queued' and then waits, or fails, or runs."""

    def __init__(self, then: str) -> None:
        self.then = then
        self.stopped: list[Mapping[str, Any]] = []

    async def resume(self, spec: ServerSpec, state: Mapping[str, Any]
                     ) -> AsyncGenerator[Checkpoint, None]:
        yield Checkpoint(Phase.QUEUED, dict(state), message="queued (Resources)")
        if self.then == "fail":
            raise BackendError("node failure")
        if self.then == "wait":
            await asyncio.Event().wait()
        yield Checkpoint(Phase.RUNNING, dict(state), target="http://n:1")

    async def stop(self, state: Mapping[str, Any]) -> None:
        self.stopped.append(state)


async def test_cancelling_a_start_that_is_still_queued_cancels_the_job() -> None:
    backend = Queued("wait")
    phases = []
    async with aclosing(through_to_running(backend, SPEC, SUBMITTED)) as steps:  # type: ignore[arg-type]
        async for cp in steps:
            phases.append(cp.phase)
            if cp.phase is Phase.QUEUED:
                break  # the user pressed stop while the job waited in the queue
    assert phases == [Phase.SUBMITTED, Phase.QUEUED]
    assert backend.stopped == [{"job": "7"}]


async def test_a_failed_start_is_cleaned_up_and_a_running_one_is_not() -> None:
    failing = Queued("fail")
    with pytest.raises(BackendError):
        async with aclosing(through_to_running(failing, SPEC, SUBMITTED)) as steps:  # type: ignore[arg-type]
            async for _ in steps:
                pass
    assert failing.stopped == [{"job": "7"}]
    running = Queued("run")
    async with aclosing(through_to_running(running, SPEC, SUBMITTED)) as steps:  # type: ignore[arg-type]
        phases = [cp.phase async for cp in steps]
    assert phases[-1] is Phase.RUNNING and running.stopped == []


def test_the_local_backend_config_is_checked() -> None:
    with pytest.raises(BackendError, match="invalid local backend_config: system_user: Extra"):
        validated_config(LocalConfig, {"system_user": True}, "local")
    assert validated_config(LocalConfig, {"env_keep": ["PATH"]}, "local").env_keep == ["PATH"]
