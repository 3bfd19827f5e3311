"""The backend contract and Slurm's own behaviour against a real one-node cluster.

The cluster comes from deploy/slurm/setup-test-cluster.sh (run here when Slurm is not up,
so ``pytest`` alone works as root). Outside CI a machine where it cannot start skips with
the reason; under CI that is a failure.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from pathlib import Path
from typing import Any

import pytest

from fedhub.site_agent.backends.base import JobStatus, Phase
from fedhub.site_agent.backends.slurm import SlurmBackend, load_config
from fedhub.site_agent.errors import BackendError
from tests.support.backend_contract import (
    BackendContract,
    BrokenStatus,
    Fresh,
    Leftovers,
    new_spec,
    start_until_running,
)

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def job_prefix() -> str:
    return f"fht{uuid.uuid4().hex[:6]}"


def _jobs(prefix: str, states: str = "PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED"
          ) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", f"--states={states}", "--format=%i %j"],
                         capture_output=True, text=True, timeout=30, check=True)
    return [line.split()[0] for line in out.stdout.splitlines()
            if len(line.split()) == 2 and line.split()[1].startswith(f"{prefix}-")]


def _config(prefix: str, **extra: Any) -> dict[str, Any]:
    return {"job_name_prefix": prefix, "poll_interval": 0.5, "default_memory": "512M",
            "default_walltime": 30, "max_cores": os.cpu_count() or 1, **extra}


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def fresh_backend(slurm_cluster: None, site_dir: Path, job_prefix: str) -> Fresh:
    return lambda: SlurmBackend(
        load_config(_config(job_prefix)), site_dir,
        jupyter_command=[sys.executable, "-m", "jupyterlab"],
        trusted_keys=site_dir / "trusted-keys.json", ready_timeout=90)


@pytest.fixture
def backend(fresh_backend: Fresh) -> Iterator[SlurmBackend]:
    made = fresh_backend()
    assert isinstance(made, SlurmBackend)
    yield made


@pytest.fixture
def leftovers(job_prefix: str) -> Leftovers:
    return lambda: _jobs(job_prefix)


@pytest.fixture(autouse=True)
def _no_jobs_left(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "job_prefix" in request.fixturenames:
        prefix = request.getfixturevalue("job_prefix")
        left = _jobs(prefix)
        if left:
            subprocess.run(["scancel", *left], check=False)


def _failing_command(tmp_path: Path, body: str) -> str:
    path = tmp_path / "broken-squeue"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def broken_status(backend: SlurmBackend, tmp_path: Path,
                  monkeypatch: pytest.MonkeyPatch) -> BrokenStatus:
    broken_squeue = _failing_command(
        tmp_path, "echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1")

    @contextmanager
    def broken() -> Iterator[None]:
        with monkeypatch.context() as m:
            sched = dataclasses.replace(backend.scheduler_, squeue=broken_squeue)
            m.setattr(backend, "scheduler", sched)
            m.setattr(backend, "scheduler_", sched)
            yield
    return broken


class TestSlurmBackendContract(BackendContract):
    """The shared contract, on real Slurm jobs."""


@contextmanager
def _blocker(prefix: str) -> Iterator[str]:
    """A job holding every core of the node, so the next job waits for Resources."""
    cpus = os.cpu_count() or 1
    out = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={prefix}-blocker", f"--cpus-per-task={cpus}",
         "--mem=64M", "--time=10", "--output=/dev/null", "--wrap=sleep 600"],
        capture_output=True, text=True, timeout=30, check=True)
    job = out.stdout.strip().split(";")[0]
    try:
        deadline = time.monotonic() + 60
        while job not in _jobs(prefix, "RUNNING"):
            assert time.monotonic() < deadline, "the blocking job did not start"
            time.sleep(0.5)
        yield job
    finally:
        subprocess.run(["scancel", job], check=False)


async def test_a_queued_job_shows_pending_with_its_reason_and_cancels(
        backend: SlurmBackend, job_prefix: str) -> None:
    spec = new_spec()
    with _blocker(job_prefix) as blocker:
        async with aclosing(backend.start(spec)) as checkpoints:
            async for cp in checkpoints:
                assert cp.phase is Phase.SUBMITTED
                state = dict(cp.state)
                break
            deadline = time.monotonic() + 30
            while True:  # "queued" until the scheduler has looked at the job
                report = (await backend.status({spec.key: state}))[spec.key]
                assert report.status is JobStatus.PENDING, report
                if report.reason != "queued" or time.monotonic() > deadline:
                    break
                await _sleep(0.5)
            assert report.reason in ("queued (Resources)", "queued (Priority)"), report
        # closing the start cancelled the queued job
        report = (await backend.status({spec.key: state}))[spec.key]
        assert report.status is JobStatus.GONE and "cancelled" in report.reason
        assert _jobs(job_prefix) == [blocker]


async def test_walltime_expiry_ends_the_server_with_the_reason(
        backend: SlurmBackend) -> None:
    spec = new_spec(options={"walltime": 1})
    state, _ = await start_until_running(backend, spec)
    try:
        deadline = time.monotonic() + 180
        while True:
            report = (await backend.status({spec.key: state}))[spec.key]
            if report.status is JobStatus.GONE:
                break
            assert report.status is JobStatus.RUNNING, report
            assert time.monotonic() < deadline, "the job outlived its 1-minute walltime"
            await _sleep(2)
        assert "time limit" in report.reason and "TIMEOUT" in report.reason
    finally:
        await backend.stop(state)


async def test_a_refused_submission_says_why(backend: SlurmBackend,
                                             leftovers: Leftovers) -> None:
    spec = new_spec(options={"partition": "nosuchpartition"})
    with pytest.raises(BackendError, match="Slurm refused the job: .*[Ii]nvalid partition"):
        async with aclosing(backend.start(spec)) as checkpoints:
            async for _ in checkpoints:
                pass
    assert leftovers() == []


async def test_a_hanging_squeue_is_unknown(backend: SlurmBackend, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    slow = _failing_command(tmp_path, "sleep 30")
    monkeypatch.setattr(backend, "command_timeout", 1.0)
    monkeypatch.setattr(backend, "scheduler", dataclasses.replace(backend.scheduler_,
                                                                  squeue=slow))
    states: dict[str, dict[str, Any]] = {"a.b": {"job_id": "1"}, "c.d": {"job_id": "2"}}
    reports = await backend.status(states)
    assert {r.status for r in reports.values()} == {JobStatus.UNKNOWN}
    assert "did not answer within 1 s" in reports["a.b"].reason


def test_options_offer_the_clusters_partitions_with_live_values(
        backend: SlurmBackend) -> None:
    opts = {o.name: o for o in backend.options()}
    assert set(opts["partition"].choices) >= {"debug", "long"}
    assert opts["partition"].default == "debug"
    assert "free cores" in opts["partition"].help
    cap = backend.capacity()
    assert cap["cpus"] >= 0 and "debug" in cap["partitions"]


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
