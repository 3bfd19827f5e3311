"""HTCondor: each server is one job, driven through the ``htcondor2`` bindings.

The start/stop/status flow is the batch template's (``batch.BatchBackend``); this module
only says how HTCondor spells each step: a submit description built from validated options
(pure, unit-tested), job ads mapped to statuses (pure, tested on job ads written from the
manual), and a runner that performs submit, ONE ``schedd.query`` for all of the site's
jobs, and remove with one bindings call each, in a thread.

Jobs carry ``MY.FedhubSite``, ``MY.FedhubKey`` and ``MY.FedhubSpawn`` and the batch name
``fedhub-<site>.<key>`` (for ``condor_q``); the constraint ``FedhubSite =?= "<site>"``
selects them all. The job runs a small wrapper (the site's ``fedhub-htcondor-job.py`` in
``run_dir``, transferred as the executable) that picks a free port, registers
``{"host", "port"}`` in ``run_dir/servers/<cluster>.<proc>.json`` as the template expects
(so ``run_dir`` must be shared with the execute nodes) and execs Jupyter.

The walltime is ``allowed_execute_duration``: an expired job is held with HoldReasonCode 47
and the user sees why. With ``held = "end"`` (default) a held job counts as ended and the
job's ``periodic_remove`` has the schedd remove it after ``hold_grace`` seconds, so nothing
is orphaned when the agent forgets it; with ``held = "wait"`` it stays PENDING ("held:
<reason>") until an operator releases or removes it. An evicted job (back to idle after a
start) lost its server, so it is GONE and the schedd removes it too.

On a machine without any HTCondor configuration the bindings get ``CONDOR_CONFIG=ONLY_ENV``
before they are imported (settings then come only from ``_CONDOR_*`` variables and
``backend_config``); an existing ``CONDOR_CONFIG`` or config file wins.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
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
    CommandError,
    CommandResult,
    Runner,
    Submission,
)
from fedhub.site_agent.backends.server_flags import SERVER_FLAGS
from fedhub.site_agent.errors import BackendError

if TYPE_CHECKING:
    from fedhub.site_agent.settings import SiteAgentSettings

_CONFIG_FILES = ("/etc/condor/condor_config", "/usr/local/etc/condor_config")


def _quiet_condor_config() -> None:
    """Point the bindings at the environment when no HTCondor configuration exists."""
    if "CONDOR_CONFIG" in os.environ:
        return
    home_cfg = os.path.expanduser("~condor/condor_config")
    if not any(os.path.isfile(p) for p in (*_CONFIG_FILES, home_cfg)):
        os.environ["CONDOR_CONFIG"] = "ONLY_ENV"


_quiet_condor_config()

# E402: CONDOR_CONFIG must be decided first. The bindings ship no type information.
import htcondor2  # type: ignore[import-untyped]  # noqa: E402
from htcondor2 import classad  # noqa: E402

# HTCondor's JobStatus codes (job ClassAd attribute ``JobStatus``).
IDLE, RUNNING, REMOVED, COMPLETED, HELD, TRANSFERRING_OUTPUT, SUSPENDED = range(1, 8)
# HoldReasonCode values with a meaning for the user.
HOLD_REASONS = {
    1: "held by a user or operator",
    3: "held by a site policy",
    12: "could not start the job on the execute machine",
    13: "could not transfer the job's input files",
    34: "memory use exceeded the requested memory",
    46: "allowed job duration exceeded",
    47: "walltime reached",
}
PROJECTION = [
    "ClusterId", "ProcId", "JobStatus", "LastJobStatus", "HoldReason", "HoldReasonCode",
    "HoldReasonSubCode", "RemoveReason", "ExitCode", "ExitBySignal", "ExitSignal",
    "RemoteHost", "NumJobStarts", "EnteredCurrentStatus", "JobBatchName",
    "FedhubSite", "FedhubKey", "FedhubSpawn",
]
# Submit commands an operator may add through ``submit_extra`` (plus MY.* / +* attributes
# that do not start with "Fedhub"): matchmaking and accounting, never what fedhub sets.
EXTRA_ALLOWED = frozenset({
    "requirements", "rank", "request_disk", "request_gpus", "gpus_minimum_capability",
    "gpus_minimum_memory", "accounting_group", "accounting_group_user", "concurrency_limits",
    "priority", "job_lease_duration", "docker_image", "container_image", "notification",
    "nice_user",
})
# Job attributes fedhub sets or relies on: not settable as MY.<Attr> either.
_OWN_ATTRS = frozenset({"requestcpus", "requestmemory", "allowedexecuteduration",
                        "periodicremove", "jobbatchname", "cmd", "args", "arguments",
                        "environment", "jobuniverse", "owner", "iwd", "out", "err", "userlog"})
_CUSTOM_ATTR = re.compile(r"(?:MY\.|\+)([A-Za-z_][A-Za-z0-9_]{0,63})")
_ADDRESSES = {"collector": (re.compile(r"[A-Za-z0-9.-]{1,253}(?::\d{1,5})?"), "host or host:port"),
              "schedd_address": (re.compile(r"<[^<>\s\x00-\x1f\x7f$]{1,500}>"),
                                 "a sinful string such as <192.0.2.1:9618>")}
_PATHS = ("python", "run_dir", "users_dir")
_JOB_ID = re.compile(r"\d{1,12}\.\d{1,9}")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f$]")  # control characters and submit macros "$(...)"


class HTCondorConfig(BaseModel):
    """``[site_agent.backend_config]`` of an HTCondor site; every value checked here."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    schedd: str = ""  # schedd name, located through the collector; "" = the local schedd
    schedd_address: str = ""  # "<host:port?...>" sinful string: skips the collector
    collector: str = ""  # host[:port]; "" = COLLECTOR_HOST from the HTCondor config
    universe: Literal["vanilla", "container"] = "vanilla"
    container_image: str = ""  # required for the container universe
    python: str = Field(default_factory=lambda: sys.executable)  # on the execute nodes
    run_dir: str = ""  # wrapper, job files, registrations (shared with the execute nodes)
    users_dir: str = ""  # notebook roots on the execute nodes; "" = <data_dir>/users
    default_cores: int = Field(default=1, ge=1)
    max_cores: int = Field(default=8, ge=1)
    default_memory: MemoryMiB = 2048  # MiB; "4G" is accepted
    max_memory: MemoryMiB = 32 * 1024
    default_walltime: Minutes = 8 * 60  # minutes; "2:00:00", "8h", "1-00:00" are accepted
    max_walltime: Minutes = 7 * 1440
    held: Literal["end", "wait"] = "end"
    hold_grace: int = Field(default=300, ge=0)  # seconds a held job stays visible
    query_timeout: float = Field(default=30.0, gt=0)
    submit_extra: dict[str, str] = Field(default_factory=dict)

    @field_validator("python", "run_dir", "users_dir", "container_image", "schedd")
    @classmethod
    def _plain(cls, value: str, info: ValidationInfo) -> str:
        if _UNSAFE.search(value) or '"' in value or "'" in value:
            raise ValueError("must not contain quotes, '$' or control characters")
        if info.field_name in _PATHS and value and not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value

    @field_validator("schedd_address", "collector")
    @classmethod
    def _address(cls, value: str, info: ValidationInfo) -> str:
        pattern, example = _ADDRESSES[str(info.field_name)]
        if value and not pattern.fullmatch(value):
            raise ValueError(f"must look like {example}")
        return value

    @field_validator("submit_extra")
    @classmethod
    def _extra(cls, value: dict[str, str]) -> dict[str, str]:
        for key, line in value.items():
            custom = _CUSTOM_ATTR.fullmatch(key)
            name = custom.group(1).lower() if custom else ""
            if name.startswith("fedhub") or name in _OWN_ATTRS:
                raise ValueError(f"{key!r}: Fedhub* and job-defining attributes are set "
                                 "by fedhub")
            if not custom and key.lower() not in EXTRA_ALLOWED:
                raise ValueError(f"{key!r} is not allowed; allowed: "
                                 f"{', '.join(sorted(EXTRA_ALLOWED))}, MY.<Attr>, +<Attr>")
            if _UNSAFE.search(line):
                raise ValueError(f"{key!r}: value must not contain '$' or control characters")
        return value

    def limits(self) -> tuple[int, int, int]:
        """The maxima users may ask for: (cores, MiB, minutes)."""
        return self.max_cores, self.max_memory, self.max_walltime


def load_config(raw: Mapping[str, Any]) -> HTCondorConfig:
    """The validated config; raises BackendError naming every problem at once."""
    cfg = validated_config(HTCondorConfig, raw, "HTCondor")
    issues: list[str] = []
    if cfg.universe == "container" and not cfg.container_image:
        issues.append("universe = 'container' needs container_image")
    if cfg.schedd and cfg.schedd_address:
        issues.append("give schedd or schedd_address, not both")
    for name, default, maximum in (("cores", cfg.default_cores, cfg.max_cores),
                                   ("memory", cfg.default_memory, cfg.max_memory),
                                   ("walltime", cfg.default_walltime, cfg.max_walltime)):
        if default > maximum:
            issues.append(f"default_{name} is above max_{name}")
    if issues:
        raise BackendError(f"invalid HTCondor backend_config: {'; '.join(issues)}")
    return cfg


def resource_options(cfg: HTCondorConfig) -> list[OptionSpec]:
    """The options an HTCondor site offers: cores, memory (MiB) and walltime (minutes)."""
    max_cores, max_mib, max_minutes = cfg.limits()
    return [
        OptionSpec(name="cores", label="CPU cores", kind=OptionKind.INTEGER, minimum=1,
                   maximum=max_cores, default=cfg.default_cores),
        OptionSpec(name="memory", label="Memory", kind=OptionKind.MEMORY, minimum=256,
                   maximum=max_mib, default=cfg.default_memory, help="e.g. 4G"),
        OptionSpec(name="walltime", label="Walltime", kind=OptionKind.DURATION, minimum=5,
                   maximum=max_minutes, default=cfg.default_walltime,
                   help="e.g. 8h or 2:00:00"),
    ]


def _checked(value: str, what: str) -> str:
    if _UNSAFE.search(value):
        raise BackendError(f"{what} contains '$' or control characters: refused")
    return value


def quote_arguments(argv: Sequence[str]) -> str:
    """``arguments`` in HTCondor's new syntax: the whole list in double quotes, each word in
    single quotes, ``'`` doubled inside a word and ``"`` doubled everywhere. Raises
    BackendError for control characters or ``$`` (a newline would start a new submit
    command; ``$(...)`` would be expanded as a macro)."""
    words = []
    for arg in argv:
        _checked(arg, "job argument")
        words.append("'" + arg.replace("'", "''").replace('"', '""') + "'")
    return '"' + " ".join(words) + '"'


def batch_name(site: str, key: str) -> str:
    """The JobBatchName of a server's job: ``fedhub-<site>.<key>`` (``.`` ends the site)."""
    return f"fedhub-{site}.{key}"


def site_constraint(site: str) -> str:
    """The one query constraint that selects every job of this site."""
    return f"FedhubSite =?= {classad.quote(site)}"


def periodic_remove(cfg: HTCondorConfig) -> str:
    """Schedd-side cleanup: evicted jobs (back to idle after a start) and, with
    ``held = "end"``, jobs held for longer than ``hold_grace`` seconds."""
    evicted = f"(JobStatus == {IDLE} && NumJobStarts > 0)"
    if cfg.held == "wait":
        return evicted
    held = f"(JobStatus == {HELD} && (time() - EnteredCurrentStatus) > {cfg.hold_grace})"
    return f"{evicted} || {held}"


# The job's executable: one static script per site (HTCondor transfers it to the execute
# node). It picks a free port, writes {"host", "port"} to <servers>/<job id>.json (the batch
# template's registration, so <servers> must be on a file system shared with the agent)
# and execs Jupyter with the same server flags as the local backend.
WRAPPER = """#!{python}
\"\"\"fedhub HTCondor job: start one Jupyter server and register where it listens.\"\"\"
import argparse, json, os, socket, sys

p = argparse.ArgumentParser()
for name in ("--prefix", "--root", "--servers", "--keys", "--user"):
    p.add_argument(name, required=True)
a = p.parse_args()
job_id = os.environ["FEDHUB_JOB_ID"]
with socket.socket() as s:
    s.bind(("", 0))
    port = s.getsockname()[1]
host = socket.getfqdn()
os.makedirs(a.root, exist_ok=True)
reg = os.path.join(a.servers, job_id + ".json")
with open(reg + ".tmp", "w") as fh:
    json.dump({{"host": host, "port": port}}, fh)
os.replace(reg + ".tmp", reg)
print(f"fedhub: job {{job_id}} serves {{a.prefix}} at {{host}}:{{port}}", flush=True)
os.environ.update(FEDHUB_TRUSTED_KEYS=a.keys, FEDHUB_SERVER_PREFIX=a.prefix,
                  FEDHUB_SERVER_USER=a.user)
argv = [sys.executable, "-m", "jupyterlab", *{flags}, "--ServerApp.ip=0.0.0.0",
        f"--ServerApp.port={{port}}", f"--ServerApp.base_url={{a.prefix}}",
        f"--ServerApp.root_dir={{a.root}}"]
if os.geteuid() == 0:
    argv.append("--allow-root")
os.execv(sys.executable, argv)
"""


def wrapper_text(cfg: HTCondorConfig) -> str:
    """The job wrapper script for this site (its first line names ``cfg.python``)."""
    return WRAPPER.format(python=cfg.python, flags=repr(list(SERVER_FLAGS)))


def submit_description(cfg: HTCondorConfig, site: str, spec: ServerSpec, *, wrapper: Path,
                       servers_dir: Path, trusted_keys: Path) -> dict[str, str]:
    """The submit description of one server's job, as a dict for ``htcondor2.Submit``.

    ``spec.options`` must already be validated against :func:`resource_options` (the agent
    does); absent options take the site defaults. Raises BackendError for values that
    could break out of their quoting.
    """
    opts = spec.options
    cores = int(opts.get("cores", cfg.default_cores))
    memory = int(opts.get("memory", cfg.default_memory))
    minutes = int(opts.get("walltime", cfg.default_walltime))
    base = str(Path(cfg.run_dir) / "jobs" / f"{spec.key}.{spec.spawn_id}")
    _checked(base, "job file path")
    root = str(Path(cfg.users_dir) / subject_token(spec.user))
    args = [f"--prefix={spec.prefix}", f"--root={root}", f"--servers={servers_dir}",
            f"--keys={trusted_keys}", f"--user={spec.user}"]
    desc = {
        "universe": cfg.universe,
        "executable": _checked(str(wrapper), "job executable"),
        "transfer_executable": "true",
        "arguments": quote_arguments(args),
        # The one deliberate macro: the job learns its own id (cluster.proc) from it.
        "environment": '"FEDHUB_JOB_ID=$(ClusterId).$(ProcId)"',
        "getenv": "false",
        "request_cpus": str(cores),
        "request_memory": str(memory),  # MiB: the unit HTCondor assumes without a suffix
        "allowed_execute_duration": str(minutes * 60),
        "periodic_remove": periodic_remove(cfg),
        "batch_name": _checked(batch_name(site, spec.key), "batch name"),
        "output": base + ".out",
        "error": base + ".err",
        "log": base + ".log",
        "stream_output": "true",
        "stream_error": "true",
        "MY.FedhubSite": classad.quote(site),
        "MY.FedhubKey": classad.quote(spec.key),
        "MY.FedhubSpawn": classad.quote(_checked(spec.spawn_id, "spawn id")),
    }
    if cfg.universe == "container":
        desc["container_image"] = cfg.container_image
    desc.update(cfg.submit_extra)
    return desc


def job_id(ad: Mapping[str, Any]) -> str:
    """``<cluster>.<proc>`` of a job ad, or "" without ClusterId."""
    cluster, proc = _get(ad, "ClusterId"), _get(ad, "ProcId")
    return f"{cluster}.{proc if isinstance(proc, int) else 0}" if isinstance(cluster, int) else ""


def _get(ad: Mapping[str, Any], name: str) -> Any:
    """Attribute ``name`` of an ad, case-insensitively (ClassAd names are)."""
    if name in ad:
        return ad[name]
    lower = name.lower()
    return next((v for k, v in ad.items() if k.lower() == lower), None)


def _text(ad: Mapping[str, Any], name: str) -> str:  # scheduler text, cut for messages
    value = _get(ad, name)
    return value.strip()[:300] if isinstance(value, str) else ""


def _hold_reason(ad: Mapping[str, Any]) -> str:
    code = _get(ad, "HoldReasonCode")
    known = HOLD_REASONS.get(code) if isinstance(code, int) else None
    detail = _text(ad, "HoldReason")
    if known and detail:
        return f"{known}: {detail}"
    return known or detail or "no reason given"


def _exit_reason(ad: Mapping[str, Any]) -> str:
    if _get(ad, "ExitBySignal") is True:
        sig = _get(ad, "ExitSignal")
        return f"killed by signal {sig}" if isinstance(sig, int) else "killed by a signal"
    code = _get(ad, "ExitCode")
    return f"exit code {code}" if isinstance(code, int) else "job completed"


def report_for_ad(ad: Mapping[str, Any] | None, held: str = "end") -> JobReport:
    """What one job ad (None: the job is not in the queue) says about the server.

    The schedd answered, so a missing job is positive evidence that it is gone.
    """
    if ad is None:
        return JobReport(JobStatus.GONE, "the job is no longer in the HTCondor queue")
    status, starts = _get(ad, "JobStatus"), _get(ad, "NumJobStarts")
    if type(status) is not int:  # bool is an int subclass: True must not read as IDLE
        return JobReport(JobStatus.UNKNOWN, f"unexpected JobStatus {status!r}")
    if status == IDLE:
        if isinstance(starts, int) and starts > 0:
            return JobReport(JobStatus.GONE, "the job was evicted from its execute machine")
        return JobReport(JobStatus.PENDING, "queued")
    if status == RUNNING:
        return JobReport(JobStatus.RUNNING)
    if status == HELD:
        ended = JobStatus.PENDING if held == "wait" else JobStatus.GONE
        return JobReport(ended, f"held: {_hold_reason(ad)}")
    if status == REMOVED:
        why = _text(ad, "RemoveReason")
        return JobReport(JobStatus.GONE, f"removed: {why}" if why else "removed")
    if status in (COMPLETED, TRANSFERRING_OUTPUT):
        return JobReport(JobStatus.GONE, f"the job ended ({_exit_reason(ad)})")
    if status == SUSPENDED:
        return JobReport(JobStatus.PENDING, "suspended by HTCondor")
    return JobReport(JobStatus.UNKNOWN, f"unexpected JobStatus {status!r}")


def parse_ads(text: str) -> list[dict[str, Any]]:
    """Job ads from the runner's JSON output; raises ValueError if it is not a list of
    objects (the batch template then reports UNKNOWN)."""
    data = json.loads(text)
    if not isinstance(data, list) or not all(isinstance(ad, dict) for ad in data):
        raise ValueError("the HTCondor query answer is not a list of job ads")
    return data


def plain_ad(ad: Mapping[str, Any]) -> dict[str, Any]:
    """A job ad's literal values (what JSON can carry); expressions are left out."""
    return {k: v for k, v in ad.items() if isinstance(v, str | int | float | bool)}


# The batch template speaks in commands; HTCondor is driven through its bindings instead,
# so the "commands" below are operations ("htcondor2", verb, args...) that CondorRunner
# performs with one bindings call each, printing JSON or a job id like a CLI would.
OP = "htcondor2"


class HTCondorScheduler:
    """The pure HTCondor half of the batch template (see batch.BatchScheduler)."""

    label = "HTCondor"

    def __init__(self, site: str, held: str = "end") -> None:
        self.site = site
        self.held = held

    def parse_submit(self, result: CommandResult) -> str:
        """The ``<cluster>.<proc>`` id of a submit; raises BackendError with the schedd's
        complaint when the job was refused."""
        out = result.stdout.strip()
        if not result.ok or not _JOB_ID.fullmatch(out):
            raise BackendError(f"HTCondor refused the job: {result.error_text()}")
        return out

    def status_command(self, job_ids: Sequence[str]) -> list[str]:
        """One query for every job of the site (whatever ``job_ids`` are)."""
        return [OP, "query", site_constraint(self.site)]

    def parse_status(self, result: CommandResult, job_ids: Sequence[str]
                     ) -> dict[str, JobReport]:
        """A report per id from the site's ads; ValueError for an untrustworthy answer."""
        by_id = {job_id(ad): ad for ad in parse_ads(result.stdout)}
        return {i: report_for_ad(by_id.get(i), self.held) for i in job_ids}

    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        """Remove ``job_ids`` (HTCondor's condor_rm)."""
        return [OP, "remove", *job_ids]

    def cancel_by_name_command(self, name: str) -> list[str] | None:
        """Remove the job of spawn ``name`` after a submit whose answer was lost."""
        return [OP, "remove-where",
                f"{site_constraint(self.site)} && FedhubSpawn =?= {classad.quote(name)}"]


class CondorRunner:
    """Performs the scheduler's operations with the bindings, in a thread (they block).

    A failed call returns a non-zero CommandResult with the error text (the template turns
    a failed query into UNKNOWN); a call that overruns its timeout raises CommandError (its
    thread finishes in the background).
    """

    def __init__(self, cfg: HTCondorConfig) -> None:
        self.cfg = cfg

    def schedd(self) -> Any:
        """The configured schedd client (located through the collector unless an address
        is given); raises HTCondorException when it cannot be found."""
        if self.cfg.schedd_address:
            location = classad.ClassAd()
            location["MyAddress"] = self.cfg.schedd_address
            location["CondorVersion"] = ""
            return htcondor2.Schedd(location)
        if self.cfg.schedd or self.cfg.collector:
            coll = htcondor2.Collector(self.cfg.collector or None)
            return htcondor2.Schedd(coll.locate(htcondor2.DaemonType.Schedd,
                                                self.cfg.schedd or None))
        return htcondor2.Schedd()

    def perform(self, argv: Sequence[str], stdin: str | None) -> str:
        """Run one operation synchronously; returns what it prints. Raises on failure."""
        if len(argv) < 2 or argv[0] != OP:
            raise ValueError(f"not an HTCondor operation: {list(argv)[:3]!r}")
        verb, args = argv[1], list(argv[2:])
        if verb == "submit":
            desc = json.loads(stdin or "{}")
            result = self.schedd().submit(htcondor2.Submit(desc), count=1)
            return f"{result.cluster()}.0\n"
        if verb == "query":
            ads = self.schedd().query(args[0], PROJECTION)
            return json.dumps([plain_ad(ad) for ad in ads])
        if verb == "remove":
            ids = [i for i in args if _JOB_ID.fullmatch(i)]
            if ids:  # act() drops a plain reason string in htcondor 25: leave the default
                self.schedd().act(htcondor2.JobAction.Remove, ids)
            return ""
        if verb == "remove-where":
            self.schedd().act(htcondor2.JobAction.Remove, args[0])
            return ""
        raise ValueError(f"unknown HTCondor operation {verb!r}")

    async def __call__(self, argv: Sequence[str], stdin: str | None = None,
                       timeout: float = 30.0) -> CommandResult:
        """The batch template's Runner interface."""
        try:
            out = await asyncio.wait_for(asyncio.to_thread(self.perform, argv, stdin),
                                         timeout)
        except TimeoutError as exc:
            raise CommandError(f"the HTCondor schedd did not answer within {timeout:.0f} s"
                               ) from exc
        except Exception as exc:  # HTCondorException, RuntimeError, ValueError...
            return CommandResult(tuple(argv), 1, "", f"{type(exc).__name__}: {exc}")
        return CommandResult(tuple(argv), 0, out, "")


class HTCondorBackend(BatchBackend):
    """Each server is one HTCondor job (see the module docstring)."""

    name = "htcondor"

    def __init__(self, cfg: HTCondorConfig, site: str, trusted_keys: Path, *,
                 ready_timeout: float = 120.0, poll_interval: float = 2.0,
                 runner: Runner | None = None) -> None:
        super().__init__(HTCondorScheduler(site, cfg.held), Path(cfg.run_dir),
                         ready_timeout=ready_timeout, poll_interval=poll_interval,
                         command_timeout=cfg.query_timeout,
                         runner=runner or CondorRunner(cfg))
        self.cfg, self.site, self.trusted_keys = cfg, site, trusted_keys

    def submission(self, spec: ServerSpec) -> Submission:
        """Writes the site's wrapper (when changed) and describes the job; raises
        BackendError when the run directory cannot be written."""
        wrapper = self.run_dir / "fedhub-htcondor-job.py"
        desc = submit_description(self.cfg, self.site, spec, wrapper=wrapper,
                                  servers_dir=self.run_dir / "servers",
                                  trusted_keys=self.trusted_keys)
        try:
            for sub in ("jobs", "servers"):
                (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
            text = wrapper_text(self.cfg)
            if not wrapper.is_file() or wrapper.read_text() != text:
                tmp = wrapper.with_suffix(".tmp")
                tmp.write_text(text)
                tmp.chmod(0o755)
                tmp.replace(wrapper)
        except OSError as exc:
            raise BackendError(f"cannot prepare the HTCondor job files: {exc}") from exc
        return Submission([OP, "submit"], json.dumps(desc), name=spec.spawn_id,
                          state={"log": desc["error"], "batch_name": batch_name(
                              self.site, spec.key)})

    def options(self) -> list[OptionSpec]:
        """See :meth:`Backend.options`: cores, memory and walltime within the site's maxima."""
        return resource_options(self.cfg)

    def capacity(self) -> dict[str, Any]:
        """See :meth:`Backend.capacity`: the largest request a server may make (free slots
        would need a collector query per heartbeat)."""
        cores, mib, minutes = self.cfg.limits()
        return {"max_cores": cores, "max_memory_mb": mib, "max_walltime_min": minutes}


def config_from_settings(settings: SiteAgentSettings) -> HTCondorConfig:
    """``settings.backend_config`` validated, with run_dir and users_dir defaulting to
    folders of the agent's data_dir. Raises BackendError with every problem named."""
    return load_config({"run_dir": str(settings.data_dir / "htcondor"),
                        "users_dir": str(settings.data_dir / "users"),
                        **settings.backend_config})


def from_settings(settings: SiteAgentSettings) -> HTCondorBackend:
    """The HTCondor backend as configured; raises BackendError for a bad backend_config."""
    return HTCondorBackend(config_from_settings(settings), settings.site,
                           settings.trusted_keys_path, ready_timeout=settings.ready_timeout,
                           poll_interval=settings.poll_interval)
