"""The contract every site backend passes against its real system (DESIGN.md section 5).

Subclass ``BackendContract`` in an integration test module and provide the fixtures:

- ``backend``: a backend instance talking to the real system (local processes, Slurm,
  dockerd, sshd, ...);
- ``fresh_backend``: a callable returning a *new* instance with the same configuration
  (what a restarted agent builds);
- ``leftovers``: a callable returning the ids of jobs/processes/containers this backend
  started that still exist on the real system (must be empty after stop or cancel);
- ``broken_status``: a context manager under which the backend's status query fails
  (scheduler down, daemon unreachable) — the result must be UNKNOWN, never GONE.

Servers are real single-user Jupyter servers; readiness means ``GET <target><prefix>api``
answers 200.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, aclosing
from typing import Any

import httpx

from fedhub.schemas.names import server_prefix
from fedhub.site_agent.backends.base import Backend, JobStatus, Phase, ServerSpec

Fresh = Callable[[], Backend]
Leftovers = Callable[[], list[str]]
BrokenStatus = Callable[[], AbstractContextManager[None]]


def new_spec(user: str = "contract", options: dict[str, Any] | None = None) -> ServerSpec:
    server = f"c{uuid.uuid4().hex[:8]}"
    return ServerSpec(user, server, uuid.uuid4().hex, server_prefix(user, server),
                      options or {})


async def start_until_running(backend: Backend, spec: ServerSpec) -> tuple[dict[str, Any], str]:
    """Run ``start`` to its end; returns (state, target)."""
    state: dict[str, Any] = {}
    target = ""
    phases = []
    async with aclosing(backend.start(spec)) as checkpoints:
        async for cp in checkpoints:
            if cp.phase is Phase.QUEUED:
                assert cp.message, "a queued checkpoint says why"
                continue
            phases.append(cp.phase)
            state = {**state, **cp.state}
            target = cp.target or target
    assert phases == [Phase.SUBMITTED, Phase.RUNNING], phases
    return state, target


class BackendContract:
    """Behaviour every backend must show; see the module docstring for the fixtures."""

    async def test_start_gives_a_ready_server_and_stop_removes_it(
            self, backend: Backend, leftovers: Leftovers) -> None:
        spec = new_spec()
        state, target = await start_until_running(backend, spec)
        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(f"{target}{spec.prefix}api")
        assert r.status_code == 200 and "version" in r.json()
        report = (await backend.status({spec.key: state}))[spec.key]
        assert report.status is JobStatus.RUNNING
        await backend.stop(state)
        report = (await backend.status({spec.key: state}))[spec.key]
        assert report.status is JobStatus.GONE
        await backend.stop(state)  # idempotent
        assert leftovers() == []

    async def test_cancel_while_pending_leaves_nothing_behind(
            self, backend: Backend, leftovers: Leftovers) -> None:
        spec = new_spec()
        state: dict[str, Any] = {}
        async with aclosing(backend.start(spec)) as checkpoints:
            async for cp in checkpoints:
                assert cp.phase is Phase.SUBMITTED and cp.job_id
                state = dict(cp.state)
                break  # the user pressed stop while the job was queued or starting
        report = (await backend.status({spec.key: state}))[spec.key]
        assert report.status is JobStatus.GONE
        assert leftovers() == []

    async def test_status_of_many_servers_in_one_call(
            self, backend: Backend, leftovers: Leftovers) -> None:
        specs = [new_spec(), new_spec()]
        states = {}
        for spec in specs:
            states[spec.key], _ = await start_until_running(backend, spec)
        await backend.stop(states[specs[0].key])
        reports = await backend.status(states)
        assert set(reports) == set(states)
        assert reports[specs[0].key].status is JobStatus.GONE
        assert reports[specs[1].key].status is JobStatus.RUNNING
        await backend.stop(states[specs[1].key])
        assert leftovers() == []

    async def test_failed_status_query_is_unknown_never_gone(
            self, backend: Backend, broken_status: BrokenStatus) -> None:
        spec = new_spec()
        state, _ = await start_until_running(backend, spec)
        try:
            with broken_status():
                report = (await backend.status({spec.key: state}))[spec.key]
            assert report.status is JobStatus.UNKNOWN
            assert (await backend.status({spec.key: state}))[spec.key].status is JobStatus.RUNNING
        finally:
            await backend.stop(state)

    async def test_a_restarted_agent_readopts_and_stops_the_server(
            self, backend: Backend, fresh_backend: Fresh, leftovers: Leftovers) -> None:
        spec = new_spec()
        state, target = await start_until_running(backend, spec)
        again = fresh_backend()
        assert (await again.status({spec.key: state}))[spec.key].status is JobStatus.RUNNING
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"{target}{spec.prefix}api")).status_code == 200
        await again.stop(state)
        assert leftovers() == []

    async def test_options_are_declared_validly(self, backend: Backend) -> None:
        from fedhub.schemas.resources import validate_options

        specs = backend.options()
        names = [o.name for o in specs]
        assert len(names) == len(set(names))
        validate_options(specs, {})  # defaults alone are acceptable
