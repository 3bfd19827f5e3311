"""Slurm's pure half on captured outputs (tests/unit/site_agent/data/slurm/), the batch
template's status rules with a fake runner, and the config validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fedhub.schemas.names import server_prefix
from fedhub.schemas.resources import InvalidOptions, OptionKind, OptionSpec, validate_options
from fedhub.site_agent.backends.base import JobStatus, ServerSpec
from fedhub.site_agent.backends.batch import (
    CommandError,
    CommandResult,
    read_registration,
    run_command,
)
from fedhub.site_agent.backends.slurm import (
    SlurmBackend,
    SlurmConfig,
    SlurmScheduler,
    batch_script,
    exit_text,
    from_settings,
    load_config,
    parse_sbatch,
    parse_sinfo,
    parse_squeue,
)
from fedhub.site_agent.errors import BackendError
from fedhub.site_agent.settings import SiteAgentSettings

DATA = Path(__file__).parent / "data" / "slurm"


def data(name: str) -> str:
    return (DATA / name).read_text()


def result(stdout: str = "", stderr: str = "", code: int = 0) -> CommandResult:
    return CommandResult(("cmd",), code, stdout, stderr)


# -- sbatch -----------------------------------------------------------------------------


def test_sbatch_success_gives_the_job_id() -> None:
    assert parse_sbatch(result(data("sbatch_success.stdout"))) == "25"
    assert parse_sbatch(result("4242;cluster-a\n")) == "4242"


def test_sbatch_refusal_carries_slurms_reason() -> None:
    refused = result(data("sbatch_invalid_partition.stdout"),
                     data("sbatch_invalid_partition.stderr"), 1)
    with pytest.raises(BackendError) as err:
        parse_sbatch(refused)
    text = str(err.value)
    assert text.startswith("Slurm refused the job: invalid partition specified: nope")
    assert "Batch job submission failed: Invalid partition name specified" in text
    assert "sbatch: error:" not in text


@pytest.mark.parametrize("out", ["", "Submitted batch job 12\n", "abc\n"])
def test_sbatch_output_without_an_id_is_an_error(out: str) -> None:
    with pytest.raises(BackendError, match="Slurm refused the job"):
        parse_sbatch(result(out))


# -- squeue -----------------------------------------------------------------------------


def test_queued_and_running_jobs() -> None:
    reports = parse_squeue(data("squeue_queued.txt"),
                           ["24", "26", "27", "28", "23", "25", "999"])
    assert reports["27"].status is JobStatus.PENDING
    assert reports["27"].reason == "queued (Resources)"
    assert reports["28"].reason == "queued (Priority)"
    assert reports["24"].reason == "queued (PartitionConfig)"
    assert reports["26"].status is JobStatus.RUNNING and reports["26"].reason == ""
    assert reports["23"].status is JobStatus.GONE
    assert "time limit 1:00" in reports["23"].reason and "TIMEOUT" in reports["23"].reason
    assert reports["25"].status is JobStatus.GONE
    assert reports["25"].reason == "the job finished with exit code 0 (Slurm COMPLETED)"
    assert reports["999"].status is JobStatus.GONE
    assert "no longer known" in reports["999"].reason


def test_ended_jobs_say_why() -> None:
    reports = parse_squeue(data("squeue_ended.txt"), ["26", "28", "29", "30"])
    assert {r.status for r in reports.values()} == {JobStatus.GONE}
    assert reports["28"].reason == "the job failed with exit code 3 (Slurm FAILED)"
    assert reports["29"].reason == "the job failed with signal 9 (Slurm FAILED)"
    assert reports["26"].reason == "the job was cancelled (Slurm CANCELLED)"
    assert reports["30"].reason == "the job was cancelled (Slurm CANCELLED)"


def test_states_a_test_cluster_cannot_show() -> None:
    ids = [str(i) for i in range(101, 109)] + ["109_3"]
    r = parse_squeue(data("squeue_synthetic.txt"), ids)
    assert r["101"].status is JobStatus.GONE and "node running the job failed" in r["101"].reason
    assert "NODE_FAIL" in r["101"].reason
    assert r["102"].status is JobStatus.GONE and "out of memory" in r["102"].reason
    assert (r["103"].status, r["103"].reason) == (JobStatus.RUNNING, "completing")
    assert (r["104"].status, r["104"].reason) == (JobStatus.PENDING, "starting")
    assert (r["105"].status, r["105"].reason) == (JobStatus.PENDING, "suspended")
    assert r["106"].status is JobStatus.GONE and "preempted" in r["106"].reason
    assert r["107"].status is JobStatus.UNKNOWN  # never guess GONE
    assert r["108"].reason == "queued (QOSMaxCpuPerUserLimit)"
    assert r["109_3"].status is JobStatus.RUNNING


def test_empty_answer_means_every_job_is_gone() -> None:
    reports = parse_squeue("", ["1", "2"])
    assert {r.status for r in reports.values()} == {JobStatus.GONE}


@pytest.mark.parametrize("name", ["squeue_garbage.txt", "squeue_truncated.txt"])
def test_garbage_is_not_trusted(name: str) -> None:
    with pytest.raises(ValueError):
        parse_squeue(data(name), ["27"])


def test_exit_codes() -> None:
    assert exit_text("768") == "exit code 3"
    assert exit_text("9") == "signal 9"
    assert exit_text("0") == "exit code 0"
    assert exit_text("2:0") == "exit code 2"
    assert exit_text("0:15") == "signal 15"


# -- the batch template's status rules --------------------------------------------------


class FakeRunner:
    """Answers every command with ``answer`` (a result or an exception); records calls."""

    def __init__(self, answer: CommandResult | Exception) -> None:
        self.answer = answer
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str], stdin: str | None,
                       timeout: float) -> CommandResult:
        self.calls.append(list(argv))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def make_backend(tmp_path: Path, runner: FakeRunner, **config: Any) -> SlurmBackend:
    cfg = load_config({"sinfo": str(tmp_path / "no-sinfo"), **config})
    return SlurmBackend(cfg, tmp_path, jupyter_command=[sys.executable, "-m", "jupyterlab"],
                        trusted_keys=tmp_path / "trusted-keys.json", runner=runner)


STATES = {"alice._": {"job_id": "27"}, "bob.gpu": {"job_id": "23"},
          "carol._": {"job_id": "999"}}


async def test_status_is_one_squeue_for_all_jobs(tmp_path: Path) -> None:
    runner = FakeRunner(result(data("squeue_queued.txt")))
    reports = await make_backend(tmp_path, runner).status(STATES)
    assert len(runner.calls) == 1
    argv = runner.calls[0]
    assert argv[0] == "squeue" and "--states=all" in argv and "--noheader" in argv
    assert reports["alice._"].status is JobStatus.PENDING
    assert reports["bob.gpu"].status is JobStatus.GONE
    assert reports["carol._"].status is JobStatus.GONE


@pytest.mark.parametrize("answer", [
    result("", "slurm_load_jobs error: Unable to contact slurm controller", 1),
    CommandError("squeue did not answer within 30 s"),
    CommandError("cannot run squeue: [Errno 2] No such file or directory"),
    result(data("squeue_garbage.txt")),
])
async def test_a_failed_status_query_is_unknown_for_all(
        tmp_path: Path, answer: CommandResult | Exception) -> None:
    reports = await make_backend(tmp_path, FakeRunner(answer)).status(STATES)
    assert {r.status for r in reports.values()} == {JobStatus.UNKNOWN}
    assert all(r.reason.startswith("status query failed") for r in reports.values())


async def test_a_state_without_a_job_id_is_unknown(tmp_path: Path) -> None:
    runner = FakeRunner(result(""))
    reports = await make_backend(tmp_path, runner).status({"a.b": {}})
    assert reports["a.b"].status is JobStatus.UNKNOWN
    assert runner.calls == []


async def test_a_refused_submission_fails_the_start(tmp_path: Path) -> None:
    runner = FakeRunner(result("", data("sbatch_invalid_partition.stderr"), 1))
    backend = make_backend(tmp_path, runner)
    with pytest.raises(BackendError, match="Invalid partition name specified"):
        async for _ in backend.start(spec()):
            pass
    assert [c[0] for c in runner.calls] == ["sbatch"]


async def test_a_lost_submit_answer_cancels_by_name(tmp_path: Path) -> None:
    runner = FakeRunner(CommandError("sbatch did not answer within 30 s"))
    backend = make_backend(tmp_path, runner)
    with pytest.raises(BackendError, match="cannot submit the Slurm job: sbatch did not"):
        async for _ in backend.start(spec()):
            pass
    assert runner.calls[1][0] == "scancel" and runner.calls[1][1].startswith("--name=fedhub-")


async def test_stop_without_a_job_does_nothing(tmp_path: Path) -> None:
    runner = FakeRunner(result(""))
    await make_backend(tmp_path, runner).stop({})
    assert runner.calls == []


async def test_stop_waits_for_positive_evidence(tmp_path: Path) -> None:
    runner = FakeRunner(CommandError("squeue did not answer within 1 s"))
    backend = make_backend(tmp_path, runner, stop_timeout=1.2)
    with pytest.raises(BackendError, match="may still be running"):
        await backend.stop({"job_id": "27"})


async def test_run_command_times_out_and_reports_missing_programs() -> None:
    with pytest.raises(CommandError, match="did not answer within"):
        await run_command(["sleep", "5"], None, 0.2)
    with pytest.raises(CommandError, match="cannot run"):
        await run_command(["/nonexistent/squeue"], None, 1)
    done = await run_command(["cat"], "hello", 5)
    assert done.ok and done.stdout == "hello"


def test_registration_files(tmp_path: Path) -> None:
    path = tmp_path / "1.json"
    assert read_registration(path) is None
    path.write_text('{"host": "node1", "port": 8888}')
    assert read_registration(path) == ("node1", 8888)
    for bad in ('{"host": "a/b", "port": 1}', '{"host": "x", "port": 70000}', "{", "[]"):
        path.write_text(bad)
        assert read_registration(path) is None


# -- commands and the script ------------------------------------------------------------


def spec(options: dict[str, Any] | None = None, user: str = "alice",
         server: str = "") -> ServerSpec:
    return ServerSpec(user, server, "0123456789abcdef", server_prefix(user, server),
                      options or {})


def test_sbatch_arguments_carry_the_validated_options(tmp_path: Path) -> None:
    cfg = load_config({"account": "proj-1", "qos": "normal", "max_gpus": 2,
                       "sbatch_args": ["--constraint=avx2"]})
    argv = SlurmScheduler().submit_command(
        tmp_path / "job.sh", "fedhub-alice._-01234567", "/x/%j.log",
        {"partition": "long", "cores": 4, "memory": 8192, "walltime": 90, "gpus": 1}, cfg)
    assert argv[:2] == ["sbatch", "--parsable"]
    for arg in ("--partition=long", "--cpus-per-task=4", "--mem=8192M", "--time=90",
                "--gpus=1", "--account=proj-1", "--qos=normal", "--export=NONE",
                "--output=/x/%j.log", "--constraint=avx2"):
        assert arg in argv
    assert argv[-1] == str(tmp_path / "job.sh")


def test_hostile_option_values_never_get_that_far() -> None:
    offered = [OptionSpec(name="partition", kind=OptionKind.CHOICE, choices=("debug",)),
               OptionSpec(name="cores", kind=OptionKind.INTEGER, minimum=1, maximum=4)]
    for raw in ({"partition": "debug; rm -rf /"}, {"partition": "debug\n#SBATCH -p x"},
                {"cores": "1 --wrap=evil"}, {"cores": "$(id)"}, {"extra": "x"}):
        with pytest.raises(InvalidOptions):
            validate_options(offered, raw)


def test_the_script_quotes_everything_and_runs(tmp_path: Path) -> None:
    hostile = "$(touch /tmp/pwned) `id` 'q' \"dq\" ; & | \\n"
    fake_jupyter = tmp_path / "fake-jupyter"
    fake_jupyter.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print('ARGS=' + json.dumps(sys.argv[1:]))\n"
        "print('ENV=' + json.dumps({k: os.environ.get(k) for k in "
        "('HOSTILE', 'FEDHUB_SERVER_PREFIX', 'FEDHUB_TRUSTED_KEYS')}))\n"
        "print('CWD=' + os.getcwd())\n")
    fake_jupyter.chmod(0o755)
    cfg = SlurmConfig.model_validate({
        "environment": {"HOSTILE": hostile},
        "prologue": ["echo prologue ran"], "epilogue": ["echo epilogue ran"],
        "jupyter_command": [str(fake_jupyter), "lab"],
        "workdir": "{data_dir}/users dir/{user}-$HOME"})
    backend = SlurmBackend(cfg, tmp_path, jupyter_command=["unused"],
                           trusted_keys=tmp_path / "keys with space.json",
                           runner=FakeRunner(result("")))
    sub = backend.submission(spec())
    script = Path(sub.argv[-1]).read_text()
    assert script.startswith("#!/bin/bash\n")
    assert "prologue ran" in script.splitlines()[2]
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "42", "HOME": str(tmp_path)}
    out = subprocess.run(["bash", sub.argv[-1]], capture_output=True, text=True, env=env,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert not Path("/tmp/pwned").exists()
    lines = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    got_env = json.loads(lines["ENV"])
    assert got_env == {"HOSTILE": hostile, "FEDHUB_SERVER_PREFIX": "/user/alice/",
                       "FEDHUB_TRUSTED_KEYS": str(tmp_path / "keys with space.json")}
    workdir = tmp_path / "users dir" / "alice-$HOME"
    assert lines["CWD"] == str(workdir) and workdir.is_dir()
    args = json.loads(lines["ARGS"])
    reg = read_registration(tmp_path / "slurm" / "servers" / "42.json")
    assert reg is not None
    assert args[0] == "lab"
    assert f"--ServerApp.port={reg[1]}" in args
    assert f"--ServerApp.root_dir={workdir}" in args
    assert "--ServerApp.ip=0.0.0.0" in args and "--ServerApp.base_url=/user/alice/" in args
    assert any(a.startswith("--ServerApp.identity_provider_class=") for a in args)
    assert "prologue ran" in out.stdout and "epilogue ran" in out.stdout
    assert sub.name == "fedhub-alice._-01234567"


def test_batch_script_is_pure(tmp_path: Path) -> None:
    cfg = load_config({"modules": ["python/3.11", "cuda/12.2"]})
    text = batch_script(spec=spec(), config=cfg, workdir="~/fedhub", run_dir=tmp_path,
                        jupyter_argv=["jupyter", "--ServerApp.port=0"], env={"A": "b c"})
    assert "module load python/3.11 || exit 1" in text
    assert "export A='b c'" in text
    assert 'cd "$HOME"/fedhub' in text
    assert 'jupyter --ServerApp.port="$FEDHUB_PORT"' in text
    assert text == batch_script(spec=spec(), config=cfg, workdir="~/fedhub", run_dir=tmp_path,
                                jupyter_argv=["jupyter", "--ServerApp.port=0"],
                                env={"A": "b c"})


# -- sinfo, options, capacity -----------------------------------------------------------


def test_sinfo_partitions() -> None:
    parts = parse_sinfo(data("sinfo.txt"))
    assert set(parts) == {"debug", "long"}
    assert parts["debug"].default and not parts["long"].default
    assert (parts["debug"].cpus_idle, parts["debug"].cpus_total) == (0, 2)
    assert parts["debug"].mem_free_mb == 16108 - 64
    down = parse_sinfo(data("sinfo_down.txt"))
    assert down["gpu"].cpus_idle == 48 and down["gpu"].cpus_total == 96
    assert down["cpu"].cpus_idle == 48 and down["cpu"].mem_free_mb == 256000 - 64000
    assert not down["maint"].up
    with pytest.raises(ValueError):
        parse_sinfo("debug*|up|vm\n")


def test_options_and_capacity_from_sinfo(tmp_path: Path) -> None:
    sinfo = tmp_path / "sinfo"
    sinfo.write_text(f"#!/bin/sh\ncat {DATA / 'sinfo_down.txt'}\n")
    sinfo.chmod(0o755)
    backend = make_backend(tmp_path, FakeRunner(result("")), sinfo=str(sinfo), max_gpus=4)
    opts = {o.name: o for o in backend.options()}
    assert opts["partition"].choices == ("cpu", "gpu", "maint")
    assert opts["partition"].default == "cpu"
    assert "cpu: 48 free cores, 187 GiB free" in opts["partition"].help
    assert "maint: 48 free cores, 187 GiB free (down)" in opts["partition"].help
    assert opts["gpus"].maximum == 4
    normalized = validate_options(backend.options(), {"memory": "4G", "walltime": "2:00:00"})
    assert normalized == {"partition": "cpu", "cores": 1, "memory": 4096, "walltime": 120,
                          "gpus": 0}
    cap = backend.capacity()
    assert cap["cpus"] == 48 + 48  # cn001 counted once although in two partitions
    assert cap["partitions"]["gpu"] == {"up": True, "cpus_free": 48, "cpus": 96,
                                        "mem_free_mb": 191000}


def test_configured_partitions_win_and_sinfo_failure_is_reported(tmp_path: Path) -> None:
    backend = make_backend(tmp_path, FakeRunner(result("")), partitions=["short", "long"],
                           default_partition="long")
    opts = {o.name: o for o in backend.options()}
    assert opts["partition"].choices == ("short", "long")
    assert opts["partition"].default == "long" and opts["partition"].help == ""
    # the heartbeat tells operators (and placement) that Slurm does not answer
    problem = backend.capacity()["problem"]
    assert problem.startswith("Slurm does not answer (sinfo: ") and "no-sinfo" in problem
    bare = make_backend(tmp_path, FakeRunner(result("")))
    assert "partition" not in {o.name for o in bare.options()}  # Slurm's default applies


# -- configuration ----------------------------------------------------------------------


def test_config_defaults_and_units() -> None:
    cfg = load_config({"default_memory": "4G", "max_memory": "1T", "default_walltime": "2h",
                       "max_walltime": "7-00:00"})
    assert (cfg.default_memory, cfg.max_memory) == (4096, 1024 * 1024)
    assert (cfg.default_walltime, cfg.max_walltime) == (120, 7 * 1440)


@pytest.mark.parametrize(("raw", "message"), [
    ({"partiton": ["debug"]}, "partiton: Extra inputs are not permitted"),
    ({"partitions": ["debug; rm"]}, "partitions: 'debug; rm' has characters that are not"),
    ({"default_cores": 8, "max_cores": 4}, "default_cores (8) is above max_cores (4)"),
    ({"default_memory": "lots"}, "default_memory"),
    ({"environment": {"BAD-NAME": "x"}}, "not a valid environment variable name"),
    ({"prologue": ["a\nb"]}, "without newlines"),
    ({"partitions": ["a"], "default_partition": "b"}, "is not in partitions"),
    ({"node_host": "dns"}, "node_host"),
    ({"command_timeout": 0}, "command_timeout"),
])
def test_config_errors_are_clear(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(BackendError) as err:
        load_config(raw)
    assert str(err.value).startswith("invalid Slurm backend_config: ")
    assert message in str(err.value)


def test_from_settings(tmp_path: Path) -> None:
    settings = SiteAgentSettings(site="hpc", backend="slurm", data_dir=tmp_path,
                                 backend_config={"partitions": ["debug"], "max_cores": 2})
    backend = from_settings(settings)
    assert backend.name == "slurm" and backend.config.max_cores == 2
    assert backend.run_dir == tmp_path / "slurm"
    assert backend.jupyter_command == settings.jupyter_command
    on_nodes = SiteAgentSettings(site="hpc", backend="slurm", data_dir=tmp_path,
                                 backend_config={"python": "/opt/py/bin/python"})
    assert from_settings(on_nodes).jupyter_command == ["/opt/py/bin/python", "-m", "jupyterlab"]
    bad = SiteAgentSettings(site="hpc", backend="slurm", data_dir=tmp_path,
                            backend_config={"max_cores": "many"})
    with pytest.raises(BackendError, match="max_cores"):
        from_settings(bad)
