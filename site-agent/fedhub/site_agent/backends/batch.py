"""The shared template of batch-scheduler backends (Slurm, HTCondor...).

:class:`BatchBackend` holds the asynchronous flow that is the same for every scheduler:

1. submit (one command) and yield SUBMITTED with the job id;
2. poll the job's status until the scheduler runs it (PENDING shows "queued (reason)");
3. wait for the job to register its ``host`` and ``port``: the job script writes
   ``<run_dir>/servers/<job id>.json`` (``{"host": ..., "port": ...}``), so ``run_dir``
   must be on a file system both the agent and the compute nodes see (like ``$HOME``);
4. GET ``<target><prefix>api`` until it answers 200, then yield RUNNING;
5. cancel the job whenever the start fails or is abandoned; stop = cancel + wait until the
   scheduler positively reports the job gone.

Everything scheduler specific is pure and lives in one module per scheduler, behind
:class:`BatchScheduler`: build the submit command, parse its output, build ONE status
command for all jobs, parse its output into a JobReport per job, build the cancel
command. Commands run through one runner with timeouts. A status command that fails, times
out or prints something unparseable means UNKNOWN for every job, never GONE: only "the
scheduler answered and the job is absent or in a terminal state" is GONE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import aiohttp

from fedhub.schemas.resources import OptionSpec
from fedhub.site_agent.backends.base import (
    Checkpoint,
    JobReport,
    JobStatus,
    Phase,
    ServerSpec,
    through_to_running,
)
from fedhub.site_agent.backends.local import log_tail
from fedhub.site_agent.backends.readiness import answers
from fedhub.site_agent.errors import BackendError

log = logging.getLogger(__name__)
T = TypeVar("T")


class CommandError(BackendError):
    """A scheduler command could not be run or did not finish in time."""


@dataclass(frozen=True)
class CommandResult:
    """What a finished command printed and returned."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True if the command exited with status 0."""
        return self.returncode == 0

    def error_text(self, limit: int = 500) -> str:
        """The command's complaint for messages: stderr, else stdout, else the exit code."""
        text = (self.stderr.strip() or self.stdout.strip())[:limit]
        return text or f"exit status {self.returncode}"


Runner = Callable[[Sequence[str], str | None, float], Awaitable[CommandResult]]


async def run_command(argv: Sequence[str], stdin: str | None = None,
                      timeout: float = 30.0) -> CommandResult:
    """Run ``argv`` (no shell) and collect its output; raises CommandError if it cannot be
    started or runs longer than ``timeout`` seconds (it is killed then)."""
    name = Path(argv[0]).name
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else
            asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise CommandError(f"cannot run {name}: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), timeout)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise CommandError(f"{name} did not answer within {timeout:.0f} s") from exc
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return CommandResult(tuple(argv), proc.returncode or 0, out.decode(errors="replace"),
                         err.decode(errors="replace"))


@dataclass(frozen=True)
class Submission:
    """How to submit one server: the command, its standard input, and what to remember."""

    argv: list[str]
    stdin: str | None = None
    name: str = ""  # the job's unique name, to find it again if the submit times out
    state: dict[str, Any] = field(default_factory=dict)


class BatchScheduler(Protocol):
    """The pure, scheduler-specific half of a batch backend (no I/O anywhere)."""

    @property
    def label(self) -> str:
        """The scheduler's name as users know it ("Slurm")."""
        ...

    def parse_submit(self, result: CommandResult) -> str:
        """The job id from the submit command's result; raises BackendError (readable:
        the scheduler's own complaint) when the job was refused."""
        ...

    def status_command(self, job_ids: Sequence[str]) -> list[str]:
        """ONE command that reports on all ``job_ids`` (and may list other jobs too)."""
        ...

    def parse_status(self, result: CommandResult, job_ids: Sequence[str]
                     ) -> dict[str, JobReport]:
        """A report for every id in ``job_ids``; raises ValueError when the output cannot
        be trusted (the caller turns that into UNKNOWN). Absent from a successful answer
        means GONE."""
        ...

    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        """The command that cancels ``job_ids`` (its exit status is not trusted: the
        status query afterwards decides)."""
        ...

    def cancel_by_name_command(self, name: str) -> list[str] | None:
        """A command cancelling jobs named ``name`` (after a submit whose answer was lost),
        or None if the scheduler cannot do that."""
        ...


class Cached(Generic[T]):
    """A value refreshed at most every ``max_age`` seconds, in the background when an
    event loop runs (never blocking it), synchronously (bounded by the loader's own
    timeout) only the first time."""

    def __init__(self, load_async: Callable[[], Awaitable[T]], load_sync: Callable[[], T],
                 max_age: float) -> None:
        self._load_async, self._load_sync, self.max_age = load_async, load_sync, max_age
        self._value: T | None = None
        self._at = 0.0
        self._task: asyncio.Task[None] | None = None

    def get(self) -> T:
        """The latest value; starts a background refresh when it is stale."""
        if self._value is None:
            self._store(self._load_sync())
        elif time.monotonic() - self._at > self.max_age and self._task is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._store(self._load_sync())
            else:
                self._task = loop.create_task(self._refresh())
        assert self._value is not None
        return self._value

    def _store(self, value: T) -> None:
        self._value, self._at = value, time.monotonic()

    async def _refresh(self) -> None:
        try:
            self._store(await self._load_async())
        except Exception:  # keep the last value; the loader logs its own problems
            log.exception("background refresh failed")
            self._at = time.monotonic()
        finally:
            self._task = None


def read_registration(path: Path) -> tuple[str, int] | None:
    """The ``(host, port)`` a job registered in ``path``, or None if not (yet) valid."""
    try:
        data = json.loads(path.read_text())
        host, port = str(data["host"]), int(data["port"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not host or not 0 < port < 65536 or any(c in host for c in "/@?#[] "):
        return None
    return host, port


class BatchBackend:
    """Runs each server as one batch job; subclasses supply :meth:`submission`,
    :meth:`options` and :meth:`capacity`, and a :class:`BatchScheduler`."""

    name = "batch"

    def __init__(self, scheduler: BatchScheduler, run_dir: Path, *,
                 ready_timeout: float = 120.0, queue_timeout: float = 0.0,
                 poll_interval: float = 2.0, stop_timeout: float = 60.0,
                 command_timeout: float = 30.0, runner: Runner = run_command) -> None:
        self.scheduler = scheduler
        self.run_dir = run_dir
        self.ready_timeout = ready_timeout
        self.queue_timeout = queue_timeout  # 0: wait in the queue as long as it takes
        self.poll_interval = poll_interval
        self.stop_timeout = stop_timeout
        self.command_timeout = command_timeout
        self.runner = runner

    # -- what a scheduler backend supplies -------------------------------------------------

    def submission(self, spec: ServerSpec) -> Submission:
        """The submit command for ``spec`` (writing any script it needs); raises
        BackendError when the site cannot run it."""
        raise NotImplementedError

    def options(self) -> list[OptionSpec]:
        """See :meth:`Backend.options`."""
        return []

    def capacity(self) -> dict[str, Any]:
        """See :meth:`Backend.capacity`."""
        return {}

    # -- paths shared with the job ---------------------------------------------------------

    def registration_path(self, job_id: str) -> Path:
        """Where job ``job_id`` writes ``{"host": ..., "port": ...}``."""
        return self.run_dir / "servers" / f"{job_id}.json"

    # -- the flow --------------------------------------------------------------------------

    async def start(self, spec: ServerSpec) -> AsyncGenerator[Checkpoint, None]:
        """See :meth:`Backend.start`: submit, yield SUBMITTED, wait until ready."""
        sub = self.submission(spec)
        label = self.scheduler.label
        try:
            result = await self.runner(sub.argv, sub.stdin, self.command_timeout)
        except CommandError as exc:
            await self._cancel_lost_submit(sub.name)
            raise BackendError(f"cannot submit the {label} job: {exc}") from exc
        job_id = self.scheduler.parse_submit(result)
        state: dict[str, Any] = {**sub.state, "job_id": job_id, "prefix": spec.prefix}
        if "log" in state:
            state["log"] = str(state["log"]).replace("{job_id}", job_id)
        submitted = Checkpoint(Phase.SUBMITTED, state, job_id=job_id,
                             message=f"Submitted {label} job {job_id}")
        async with aclosing(through_to_running(self, spec, submitted)) as steps:
            async for cp in steps:
                yield cp

    async def resume(self, spec: ServerSpec, state: Mapping[str, Any]
                     ) -> AsyncGenerator[Checkpoint, None]:
        """See :meth:`Backend.resume`: wait for the job to run, register and answer."""
        job_id, label = str(state["job_id"]), self.scheduler.label
        reg_path = self.registration_path(job_id)
        started = time.monotonic()
        running_since: float | None = None
        last_query = -1e9
        report = JobReport(JobStatus.UNKNOWN)
        reg: tuple[str, int] | None = None
        told = ""
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                now = time.monotonic()
                if running_since is None or now - last_query >= self.poll_interval:
                    report = (await self._query([job_id]))[job_id]
                    last_query = now
                if report.status is JobStatus.GONE:
                    tail = log_tail(Path(str(state.get("log", ""))))
                    raise BackendError(
                        f"{label} job {job_id} ended before Jupyter was ready"
                        + (f" ({report.reason})" if report.reason else "")
                        + (f"; last log lines:\n{tail}" if tail else ""))
                if report.status is JobStatus.RUNNING and running_since is None:
                    running_since = now
                if running_since is None:
                    why = f"queued ({report.reason})" if report.reason else "queued"
                    if report.status is JobStatus.PENDING and why != told:
                        told = why
                        yield Checkpoint(Phase.QUEUED, dict(state), job_id=job_id, message=why)
                    if self.queue_timeout and now - started > self.queue_timeout:
                        raise BackendError(f"{label} job {job_id} did not start within "
                                           f"{self.queue_timeout:.0f} s ({report.reason})")
                    await asyncio.sleep(self.poll_interval)
                    continue
                reg = read_registration(reg_path)
                if reg is not None and await answers(
                        http, f"http://{reg[0]}:{reg[1]}{spec.prefix}api"):
                    break
                if now - running_since > self.ready_timeout:
                    where = (f"at {reg[0]}:{reg[1]}" if reg is not None
                             else "(it registered no host and port)")
                    raise BackendError(f"Jupyter in {label} job {job_id} did not answer {where} "
                                       f"within {self.ready_timeout:.0f} s")
                await asyncio.sleep(0.25)
        assert reg is not None  # the loop only breaks once the server answered
        target = f"http://{reg[0]}:{reg[1]}"
        yield Checkpoint(Phase.RUNNING, {**state, "host": reg[0], "port": reg[1]},
                         job_id=job_id, target=target,
                         message=f"Jupyter server is running in {label} job {job_id}")

    async def stop(self, state: Mapping[str, Any]) -> None:
        """See :meth:`Backend.stop`: cancel, then wait until the scheduler reports the job
        gone (re-cancelling now and then). Raises BackendError after ``stop_timeout``."""
        job_id = str(state.get("job_id") or "")
        if not job_id:
            return
        deadline = time.monotonic() + self.stop_timeout
        next_cancel = 0.0
        report = JobReport(JobStatus.UNKNOWN)
        while time.monotonic() < deadline:
            if time.monotonic() >= next_cancel:
                await self._cancel(job_id)
                next_cancel = time.monotonic() + 10.0
            report = (await self._query([job_id]))[job_id]
            if report.status is JobStatus.GONE:
                self.registration_path(job_id).unlink(missing_ok=True)
                return
            await asyncio.sleep(0.5)
        raise BackendError(f"{self.scheduler.label} job {job_id} may still be running after "
                           f"{self.stop_timeout:.0f} s ({report.status}: {report.reason})")

    async def status(self, states: Mapping[str, Mapping[str, Any]]) -> dict[str, JobReport]:
        """See :meth:`Backend.status`: one scheduler query for all jobs."""
        ids = {key: str(st.get("job_id") or "") for key, st in states.items()}
        reports = await self._query(sorted({i for i in ids.values() if i}))
        return {key: reports[i] if i else JobReport(JobStatus.UNKNOWN, "no job id recorded")
                for key, i in ids.items()}

    # -- helpers ---------------------------------------------------------------------------

    async def _query(self, job_ids: Sequence[str]) -> dict[str, JobReport]:
        if not job_ids:
            return {}
        label = self.scheduler.label
        try:
            result = await self.runner(self.scheduler.status_command(job_ids), None,
                                       self.command_timeout)
            if not result.ok:
                raise CommandError(f"{label} status query failed: {result.error_text()}")
            return self.scheduler.parse_status(result, job_ids)
        except (CommandError, ValueError) as exc:
            log.warning("%s status query failed: %s", label, exc)
            unknown = JobReport(JobStatus.UNKNOWN, f"status query failed: {exc}")
            return {i: unknown for i in job_ids}

    async def _cancel(self, job_id: str) -> None:
        try:
            result = await self.runner(self.scheduler.cancel_command([job_id]), None,
                                       self.command_timeout)
        except CommandError as exc:
            log.warning("cancelling job %s failed: %s", job_id, exc)
            return
        if not result.ok:  # often "already completed": the status query decides
            log.info("cancel of job %s: %s", job_id, result.error_text())

    async def _cancel_lost_submit(self, name: str) -> None:
        argv = self.scheduler.cancel_by_name_command(name) if name else None
        if argv is None:
            return
        try:
            await self.runner(argv, None, self.command_timeout)
        except CommandError as exc:
            log.warning("cannot cancel job %r after a failed submit: %s", name, exc)
