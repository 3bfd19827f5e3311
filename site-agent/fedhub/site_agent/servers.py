"""The servers one agent is responsible for, keyed by ``<user>.<server>`` tokens."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fedhub.site_agent.backends.base import ServerSpec


class Stage(StrEnum):
    """Where the agent is with one server."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


@dataclass
class ServerRecord:
    """One server: what was asked for, the job state the backend returned, and the
    task driving its start (None once started or when re-adopted running)."""

    spec: ServerSpec
    stage: Stage = Stage.STARTING
    state: dict[str, Any] = field(default_factory=dict)
    job_id: str = ""
    target: str = ""
    task: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[Any] | None = None

    @property
    def starting(self) -> bool:
        """True while a start task is still at work on this server."""
        return self.task is not None and not self.task.done()
