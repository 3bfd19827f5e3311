"""Slurm: each server is one batch job (sbatch), watched with one squeue for the whole site.

The pure half (commands, the batch script, output parsing) is :class:`SlurmScheduler`,
:func:`batch_script` and the ``parse_*`` functions, unit-tested on captured outputs; the
asynchronous flow is :class:`~fedhub.site_agent.backends.batch.BatchBackend`.

- Resources (partition, cores, memory, walltime, GPUs) go on the ``sbatch`` command line
  (an argument vector, never a shell); the script holds only operator configuration and
  values fedhub itself produced, each passed through ``shlex.quote``.
- The job picks a free port on its node and writes ``{"host", "port"}`` to
  ``<run_dir>/servers/<job id>.json`` (``run_dir`` defaults to ``<data_dir>/slurm`` and
  must be visible from the compute nodes), then runs Jupyter in the foreground.
- Status: ``squeue --states=all --user=<agent user>`` once for all jobs. Finished jobs stay
  listed for Slurm's MinJobAge (TIMEOUT, NODE_FAIL, FAILED with its exit code...); a job
  absent from a successful answer is gone (positive evidence), a failed squeue is UNKNOWN.
  sacct is not used: many sites have no accounting database.
"""

from __future__ import annotations

import getpass
import logging
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from fedhub.schemas.names import subject_token
from fedhub.schemas.resources import (
    MemoryMiB,
    Minutes,
    OptionKind,
    OptionSpec,
)
from fedhub.site_agent.backends.base import JobReport, JobStatus, ServerSpec, validated_config
from fedhub.site_agent.backends.batch import (
    BatchBackend,
    Cached,
    CommandError,
    CommandResult,
    Runner,
    Submission,
    run_command,
)
from fedhub.site_agent.backends.local import LocalProcessBackend
from fedhub.site_agent.errors import BackendError

if TYPE_CHECKING:
    from fedhub.site_agent.settings import SiteAgentSettings

log = logging.getLogger(__name__)

SQUEUE_FORMAT = "JobID:|,Name:|,State:|,exit_code:|,TimeLimit:|,NodeList:|,Reason:|"
SINFO_FORMAT = "Partition:|,Available:|,NodeHost:|,StateCompact:|,CPUsState:|,Memory:|,AllocMem:|"
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_JOB_ID = re.compile(r"\d+(?:_\d+)?")
_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
            "RESV_DEL_HOLD", "SUSPENDED", "STOPPED", "RESIZING"}
_RUNNING = {"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING"}
_ENDED = {
    "COMPLETED": "the job finished",
    "CANCELLED": "the job was cancelled",
    "FAILED": "the job failed",
    "TIMEOUT": "the time limit {limit} was reached (walltime expired)",
    "NODE_FAIL": "the node running the job failed",
    "PREEMPTED": "the job was preempted",
    "BOOT_FAIL": "the node failed to boot",
    "DEADLINE": "the job reached its deadline",
    "OUT_OF_MEMORY": "the job ran out of memory",
    "REVOKED": "the job was revoked",
    "SPECIAL_EXIT": "the job ended (special exit)",
}

# -- configuration ----------------------------------------------------------------------


class SlurmConfig(BaseModel):
    """``[site_agent.backend_config]`` of a Slurm site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partitions: list[str] = Field(default_factory=list)  # offered; empty: all from sinfo
    default_partition: str = ""
    default_cores: int = Field(default=1, ge=1)
    max_cores: int = Field(default=8, ge=1)
    default_memory: MemoryMiB = 2048  # MiB; "4G" etc. accepted
    max_memory: MemoryMiB = 32768
    default_walltime: Minutes = 480  # minutes; "8h", "1-00:00" etc. accepted
    max_walltime: Minutes = 1440
    max_gpus: int = Field(default=0, ge=0)  # > 0 offers a "gpus" option (--gpus)
    account: str = ""
    qos: str = ""
    sbatch_args: list[str] = Field(default_factory=list)  # extra operator sbatch options
    prologue: list[str] = Field(default_factory=list)  # shell lines before Jupyter
    epilogue: list[str] = Field(default_factory=list)  # shell lines after it ends
    modules: list[str] = Field(default_factory=list)  # `module load` each
    environment: dict[str, str] = Field(default_factory=dict)
    workdir: str = "{data_dir}/users/{user}"  # {user}, {server}, {data_dir}; "~/" = $HOME
    run_dir: str = ""  # default <data_dir>/slurm; must be shared with the nodes
    # default: `<python> -m jupyterlab` when python is set, else the agent's jupyter_command
    jupyter_command: list[str] = Field(default_factory=list)
    python: str = Field(default_factory=lambda: sys.executable)  # on the nodes
    server_ip: str = "0.0.0.0"
    node_host: Literal["hostname", "fqdn", "ip"] = "hostname"
    job_name_prefix: str = "fedhub"
    sbatch: str = "sbatch"
    squeue: str = "squeue"
    scancel: str = "scancel"
    sinfo: str = "sinfo"
    command_timeout: float = Field(default=30.0, gt=0)
    poll_interval: float = Field(default=2.0, gt=0)
    stop_timeout: float = Field(default=60.0, gt=0)
    queue_timeout: float = Field(default=0.0, ge=0)  # 0: wait in the queue indefinitely
    capacity_max_age: float = Field(default=5.0, gt=0)

    @field_validator("partitions", "modules")
    @classmethod
    def _safe_names(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _SAFE.fullmatch(item):
                raise ValueError(f"{item!r} has characters that are not allowed")
        return value

    @field_validator("default_partition", "account", "qos", "job_name_prefix", "server_ip")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if value and not _SAFE.fullmatch(value):
            raise ValueError(f"{value!r} has characters that are not allowed")
        return value

    @field_validator("environment")
    @classmethod
    def _env(cls, value: dict[str, str]) -> dict[str, str]:
        for name, val in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if "\0" in val:
                raise ValueError(f"the value of {name} contains a NUL byte")
        return value

    @field_validator("prologue", "epilogue", "sbatch_args")
    @classmethod
    def _lines(cls, value: list[str]) -> list[str]:
        for line in value:
            if "\n" in line or "\0" in line:
                raise ValueError("one line per entry, without newlines")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SlurmConfig:
        for what, default, maximum in (("cores", self.default_cores, self.max_cores),
                                       ("memory", self.default_memory, self.max_memory),
                                       ("walltime", self.default_walltime, self.max_walltime)):
            if default > maximum:
                raise ValueError(f"default_{what} ({default}) is above max_{what} ({maximum})")
        if self.partitions and self.default_partition not in ("", *self.partitions):
            raise ValueError(f"default_partition {self.default_partition!r} is not in "
                             f"partitions {self.partitions}")
        return self


def load_config(raw: Mapping[str, Any]) -> SlurmConfig:
    """The validated config; raises BackendError listing every problem."""
    return validated_config(SlurmConfig, raw, "Slurm")


# -- pure parsing -----------------------------------------------------------------------


def exit_text(raw: str) -> str:
    """``exit code 3`` / ``signal 9`` from squeue's exit_code (a wait status or ``N:S``)."""
    raw = raw.strip()
    if ":" in raw:
        code, _, sig = raw.partition(":")
        return f"signal {sig}" if sig.strip("0") else f"exit code {int(code)}"
    status = int(raw)
    return f"signal {status & 0x7F}" if status & 0x7F else f"exit code {status >> 8}"


def report_for(state: str, reason: str, exit_code: str, limit: str) -> JobReport:
    """What one squeue line means for the server."""
    reason = "" if reason in ("None", "(null)") else reason
    if state in _PENDING:
        word = {"CONFIGURING": "starting", "SUSPENDED": "suspended"}.get(state, "queued")
        return JobReport(JobStatus.PENDING, f"{word} ({reason})" if reason else word)
    if state in _RUNNING:
        return JobReport(JobStatus.RUNNING, "completing" if state == "COMPLETING" else "")
    if state in _ENDED:
        text = _ENDED[state].format(limit=limit)
        if state in ("FAILED", "COMPLETED") and exit_code:
            try:
                text += f" with {exit_text(exit_code)}"
            except ValueError:
                pass
        return JobReport(JobStatus.GONE, f"{text} (Slurm {state})")
    return JobReport(JobStatus.UNKNOWN, f"unrecognised Slurm job state {state!r}")


def parse_squeue(stdout: str, job_ids: Sequence[str]) -> dict[str, JobReport]:
    """Reports for ``job_ids`` from ``squeue --noheader --Format=SQUEUE_FORMAT`` output.

    Raises ValueError on any line that does not have the expected shape (then nothing in
    the answer is trusted). Jobs not listed are GONE.
    """
    seen: dict[str, JobReport] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = line.rstrip().removesuffix("|").split("|", 6)
        if len(fields) != 7 or not _JOB_ID.fullmatch(fields[0].strip()):
            raise ValueError(f"unexpected squeue line {line[:120]!r}")
        job, _name, state, code, limit, _nodes, reason = (f.strip() for f in fields)
        if not re.fullmatch(r"[A-Z_]+", state):
            raise ValueError(f"unexpected job state in squeue line {line[:120]!r}")
        seen[job] = report_for(state, reason, code, limit)
    gone = JobReport(JobStatus.GONE, "the job is no longer known to Slurm")
    return {job: seen.get(job, gone) for job in job_ids}


def parse_sbatch(result: CommandResult) -> str:
    """The job id from ``sbatch --parsable`` (``123`` or ``123;cluster``); raises
    BackendError with Slurm's complaint when the job was refused."""
    first = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    job = first.split(";", 1)[0].strip()
    if result.ok and _JOB_ID.fullmatch(job):
        return job
    text = result.stderr.strip() or result.stdout.strip()
    text = text.removeprefix("sbatch: error: ").replace("\nsbatch: error: ", "; ")
    raise BackendError(f"Slurm refused the job: {text[:500] or f'exit status {result.returncode}'}")


@dataclass(frozen=True)
class Partition:
    """One partition as sinfo shows it (node values summed over its nodes)."""

    name: str
    default: bool
    up: bool
    cpus_idle: int
    cpus_total: int
    mem_free_mb: int
    nodes: tuple[tuple[str, int, int], ...]  # (host, idle cores, free MiB) of usable nodes


def parse_sinfo(stdout: str) -> dict[str, Partition]:
    """Partitions from ``sinfo --noheader -N --Format=SINFO_FORMAT``; raises ValueError."""
    rows: dict[str, list[list[str]]] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.rstrip().removesuffix("|").split("|")]
        if len(fields) != 7 or fields[4].count("/") != 3:
            raise ValueError(f"unexpected sinfo line {line[:120]!r}")
        rows.setdefault(fields[0], []).append(fields)
    out: dict[str, Partition] = {}
    for raw_name, nodes in rows.items():
        name = raw_name.rstrip("*")
        usable = tuple(
            (n[2], int(n[4].split("/")[1]),
             max(0, int(n[5]) - (int(n[6]) if n[6].isdigit() else 0)))
            for n in nodes if not re.match(r"(down|drain|fail|maint|futur|boot)", n[3]))
        total = sum(int(n[4].split("/")[3]) for n in nodes)
        out[name] = Partition(name, raw_name.endswith("*"), nodes[0][1] == "up",
                              sum(u[1] for u in usable), total, sum(u[2] for u in usable),
                              usable)
    return out


# -- pure command building --------------------------------------------------------------


@dataclass(frozen=True)
class SlurmScheduler:
    """Slurm's commands and parsers (the BatchScheduler of this backend)."""

    sbatch: str = "sbatch"
    squeue: str = "squeue"
    scancel: str = "scancel"
    sinfo: str = "sinfo"
    user: str = ""
    label: str = "Slurm"

    def submit_command(self, script: Path, job_name: str, output: str,
                       options: Mapping[str, Any], config: SlurmConfig) -> list[str]:
        """``sbatch --parsable`` with every resource as a separate, validated argument."""
        argv = [self.sbatch, "--parsable", f"--job-name={job_name}", f"--output={output}",
                "--export=NONE", "--nodes=1", "--ntasks=1",
                f"--cpus-per-task={int(options.get('cores', config.default_cores))}",
                f"--mem={int(options.get('memory', config.default_memory))}M",
                f"--time={int(options.get('walltime', config.default_walltime))}"]
        if options.get("partition"):
            argv.append(f"--partition={options['partition']}")
        if int(options.get("gpus", 0)) > 0:
            argv.append(f"--gpus={int(options['gpus'])}")
        if config.account:
            argv.append(f"--account={config.account}")
        if config.qos:
            argv.append(f"--qos={config.qos}")
        return [*argv, *config.sbatch_args, str(script)]

    def parse_submit(self, result: CommandResult) -> str:
        """See :meth:`BatchScheduler.parse_submit`."""
        return parse_sbatch(result)

    def status_command(self, job_ids: Sequence[str]) -> list[str]:
        """One squeue for all of the agent user's jobs, finished ones included (ids are
        matched afterwards: ``--jobs`` fails outright when one id is no longer known)."""
        user = [f"--user={self.user}"] if self.user else []
        return [self.squeue, "--noheader", "--states=all", *user, f"--Format={SQUEUE_FORMAT}"]

    def parse_status(self, result: CommandResult, job_ids: Sequence[str]
                     ) -> dict[str, JobReport]:
        """See :meth:`BatchScheduler.parse_status`."""
        return parse_squeue(result.stdout, job_ids)

    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        """``scancel`` for the given ids."""
        return [self.scancel, *job_ids]

    def cancel_by_name_command(self, name: str) -> list[str] | None:
        """``scancel --name`` (job names are unique per spawn)."""
        user = [f"--user={self.user}"] if self.user else []
        return [self.scancel, f"--name={name}", *user]

    def sinfo_command(self) -> list[str]:
        """Per node and partition: availability, CPUs and memory."""
        return [self.sinfo, "--noheader", "--Node", f"--Format={SINFO_FORMAT}"]


_PORT_PICKER = """\
import json, os, socket, sys
path, mode = sys.argv[1], sys.argv[2]
with socket.socket() as s:
    s.bind(("", 0))
    port = s.getsockname()[1]
name = socket.gethostname()
host = {"fqdn": socket.getfqdn, "ip": socket.gethostbyname}.get(mode, str)(name)
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w") as fh:
    json.dump({"host": host, "port": port, "job_id": os.environ.get("SLURM_JOB_ID", "")}, fh)
os.replace(path + ".tmp", path)
print(port)
"""


def shell_path(path: str) -> str:
    """``path`` quoted for the shell, a leading ``~/`` becoming ``"$HOME"/``."""
    if path == "~" or path.startswith("~/"):
        return '"$HOME"' + (shlex.quote(path[1:]) if path[1:] else "")
    return shlex.quote(path)


def batch_script(*, spec: ServerSpec, config: SlurmConfig, workdir: str, run_dir: Path,
                 jupyter_argv: Sequence[str], env: Mapping[str, str]) -> str:
    """The job script. Operator lines (prologue, epilogue) are verbatim; every other value
    is quoted. ``jupyter_argv`` may contain ``$FEDHUB_PORT`` in ``--ServerApp.port=``."""
    quoted = []
    for arg in jupyter_argv:
        if arg.startswith("--ServerApp.port="):
            quoted.append('--ServerApp.port="$FEDHUB_PORT"')
        elif arg.startswith("--ServerApp.root_dir="):
            quoted.append('--ServerApp.root_dir="$PWD"')
        else:
            quoted.append(shlex.quote(arg))
    lines = [
        "#!/bin/bash",
        f"# fedhub server {spec.key} (spawn {subject_token(spec.spawn_id)}), "
        "written by the fedhub site agent",
        *config.prologue,
        *(f"module load {shlex.quote(m)} || exit 1" for m in config.modules),
        *(f"export {k}={shlex.quote(v)}" for k, v in {**config.environment, **env}.items()),
        f"mkdir -p {shell_path(workdir)} && cd {shell_path(workdir)} || exit 1",
        f"FEDHUB_PORT=$({shlex.quote(config.python)} - "
        f"{shlex.quote(str(run_dir / 'servers'))}/\"$SLURM_JOB_ID\".json "
        f"{config.node_host} <<'FEDHUB_PY'",
        _PORT_PICKER.rstrip("\n"),
        "FEDHUB_PY",
        ") || { echo 'fedhub: cannot pick a port' >&2; exit 1; }",
        'echo "fedhub: starting Jupyter on $(hostname):$FEDHUB_PORT in $PWD"',
        " ".join(quoted),
        "fedhub_status=$?",
        *config.epilogue,
        "exit $fedhub_status",
    ]
    return "\n".join(lines) + "\n"


# -- the backend ------------------------------------------------------------------------


class SlurmBackend(BatchBackend):
    """Servers as Slurm jobs; see the module docstring."""

    name = "slurm"

    def __init__(self, config: SlurmConfig, data_dir: Path, *, jupyter_command: list[str],
                 trusted_keys: Path, ready_timeout: float = 120.0,
                 runner: Runner = run_command) -> None:
        run_dir = Path(config.run_dir).expanduser() if config.run_dir else data_dir / "slurm"
        self.scheduler_: SlurmScheduler = SlurmScheduler(
            config.sbatch, config.squeue, config.scancel, config.sinfo, getpass.getuser())
        super().__init__(self.scheduler_, run_dir, ready_timeout=ready_timeout,
                         queue_timeout=config.queue_timeout, poll_interval=config.poll_interval,
                         stop_timeout=config.stop_timeout,
                         command_timeout=config.command_timeout, runner=runner)
        self.config = config
        self.data_dir = data_dir
        if not config.jupyter_command and "python" in config.model_fields_set:
            jupyter_command = [config.python, "-m", "jupyterlab"]  # the nodes' Python
        self.jupyter_command = list(config.jupyter_command or jupyter_command)
        self.trusted_keys = trusted_keys
        self._partitions = Cached(self._load_partitions, self._load_partitions_sync,
                                  config.capacity_max_age)
        self._sinfo_problem = ""  # why the last sinfo gave nothing ("" when it worked)
        self._choices: tuple[str, ...] = tuple(config.partitions)

    # -- submission ------------------------------------------------------------------------

    def jupyter_argv(self, spec: ServerSpec) -> list[str]:
        """The local backend's Jupyter arguments (same identity provider and flags),
        listening on ``server_ip``; the port and root directory are filled in by the job."""
        cmd = self.jupyter_command
        # LocalProcessBackend resolves argv[0] on this host; the nodes resolve their own.
        helper = LocalProcessBackend(self.data_dir, jupyter_command=["sh", *cmd[1:]],
                                     host=self.config.server_ip)
        argv = helper._argv(spec, 0, Path("."))
        return [cmd[0], *argv[1:]]

    def submission(self, spec: ServerSpec) -> Submission:
        """See :meth:`BatchBackend.submission`: write the script, build the sbatch call."""
        cfg = self.config
        workdir = cfg.workdir.format(user=subject_token(spec.user),
                                     server=subject_token(spec.server), data_dir=self.data_dir)
        if "\n" in workdir or "\0" in workdir:
            raise BackendError("the configured workdir has a newline in it")
        env = {"FEDHUB_TRUSTED_KEYS": str(self.trusted_keys),
               "FEDHUB_SERVER_PREFIX": spec.prefix, "FEDHUB_SERVER_USER": spec.user}
        script = batch_script(spec=spec, config=cfg, workdir=workdir, run_dir=self.run_dir,
                              jupyter_argv=self.jupyter_argv(spec), env=env)
        name = f"{cfg.job_name_prefix}-{spec.key}-{spec.spawn_id[:8]}"
        path = self.run_dir / "jobs" / f"{name}.sh"
        log_pattern = str(self.run_dir / "logs" / f"{name}-%j.log")
        try:
            for sub in ("jobs", "logs", "servers"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            path.write_text(script)
            path.chmod(0o700)
        except OSError as exc:
            raise BackendError(f"cannot write the batch script: {exc}") from exc
        argv = self.scheduler_.submit_command(path, name, log_pattern, spec.options, cfg)
        return Submission(argv, None, name, {"job_name": name, "script": str(path),
                                             "log": log_pattern.replace("%j", "{job_id}")})

    # -- options and capacity --------------------------------------------------------------

    def _load_partitions_sync(self) -> dict[str, Partition]:
        try:
            out = subprocess.run(self.scheduler_.sinfo_command(), capture_output=True,
                                 text=True, timeout=min(5.0, self.command_timeout), check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return self._sinfo_failed(str(exc))
        return self._parse_partitions(out.returncode, out.stdout, out.stderr)

    async def _load_partitions(self) -> dict[str, Partition]:
        try:
            res = await self.runner(self.scheduler_.sinfo_command(), None, self.command_timeout)
        except CommandError as exc:
            return self._sinfo_failed(str(exc))
        return self._parse_partitions(res.returncode, res.stdout, res.stderr)

    def _sinfo_failed(self, why: str) -> dict[str, Partition]:
        """Slurm did not answer: the heartbeat says so (one line: it is shown to users)."""
        self._sinfo_problem = " ".join(why.split())[:200] or "no output"
        log.warning("sinfo failed: %s", why.strip()[:1000])
        return {}

    def _parse_partitions(self, code: int, stdout: str, stderr: str) -> dict[str, Partition]:
        if code != 0:
            return self._sinfo_failed(stderr or f"exit code {code}")
        try:
            found = parse_sinfo(stdout)
        except ValueError as exc:  # Slurm answered, in a form we do not read: our problem
            log.warning("cannot parse sinfo: %s", exc)
            self._sinfo_problem = ""
            return {}
        self._sinfo_problem = ""
        if not self._choices:
            self._choices = tuple(sorted(found, key=lambda n: (not found[n].default, n)))
        return found

    def options(self) -> list[OptionSpec]:
        """Partition (with live free cores and memory in its help), cores, memory,
        walltime, and GPUs when ``max_gpus`` > 0."""
        cfg = self.config
        parts = self._partitions.get()
        specs: list[OptionSpec] = []
        if self._choices:
            default = cfg.default_partition or next(
                (p for p in self._choices if parts.get(p) and parts[p].default), self._choices[0])
            live = "; ".join(
                f"{p}: {parts[p].cpus_idle} free cores, {parts[p].mem_free_mb // 1024} GiB free"
                + ("" if parts[p].up else " (down)") for p in self._choices if p in parts)
            specs.append(OptionSpec(name="partition", label="Partition", kind=OptionKind.CHOICE,
                                    choices=self._choices, default=default, help=live))
        specs += [
            OptionSpec(name="cores", label="CPU cores", kind=OptionKind.INTEGER, minimum=1,
                       maximum=cfg.max_cores, default=cfg.default_cores),
            OptionSpec(name="memory", label="Memory", kind=OptionKind.MEMORY, minimum=64,
                       maximum=cfg.max_memory, default=cfg.default_memory),
            OptionSpec(name="walltime", label="Walltime", kind=OptionKind.DURATION, minimum=1,
                       maximum=cfg.max_walltime, default=cfg.default_walltime,
                       help="the server is stopped when it runs out"),
        ]
        if cfg.max_gpus:
            specs.append(OptionSpec(name="gpus", label="GPUs", kind=OptionKind.INTEGER,
                                    minimum=0, maximum=cfg.max_gpus, default=0))
        return specs

    def capacity(self) -> dict[str, Any]:
        """Free cores and memory (per partition and over distinct nodes), from a cached
        sinfo refreshed in the background at most every ``capacity_max_age`` seconds."""
        parts = self._partitions.get()
        if not parts:
            problem = self._sinfo_problem
            return {"problem": f"Slurm does not answer (sinfo: {problem})"} if problem else {}
        offered = {n: p for n, p in parts.items() if not self._choices or n in self._choices}
        nodes: dict[str, tuple[int, int]] = {}
        for p in offered.values():
            if p.up:
                for host, cpus, mem in p.nodes:  # a node in two partitions counts once
                    nodes[host] = (cpus, mem)
        return {
            "cpus": sum(c for c, _ in nodes.values()),
            "mem_available_mb": sum(m for _, m in nodes.values()),
            "partitions": {n: {"up": p.up, "cpus_free": p.cpus_idle, "cpus": p.cpus_total,
                               "mem_free_mb": p.mem_free_mb} for n, p in offered.items()},
        }


def from_settings(settings: SiteAgentSettings) -> SlurmBackend:
    """The Slurm backend as configured by ``[site_agent.backend_config]``."""
    config = load_config(settings.backend_config)
    return SlurmBackend(config, settings.data_dir, jupyter_command=settings.jupyter_command,
                        trusted_keys=settings.trusted_keys_path,
                        ready_timeout=settings.ready_timeout)
