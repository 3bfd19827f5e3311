"""HTCondor backend, pure parts: config, options, submit descriptions, job ad -> status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import htcondor2
import pytest

from fedhub.schemas.names import server_prefix
from fedhub.schemas.resources import InvalidOptions, validate_options
from fedhub.site_agent.backends import htcondor as hc
from fedhub.site_agent.backends.base import JobStatus, ServerSpec
from fedhub.site_agent.backends.batch import CommandResult
from fedhub.site_agent.errors import BackendError
from fedhub.site_agent.settings import SiteAgentSettings

DATA = Path(__file__).parent / "data" / "htcondor"


def spec(options: dict[str, Any] | None = None, user: str = "alice",
         server: str = "") -> ServerSpec:
    return ServerSpec(user, server, "3f2a0c", server_prefix(user, server), options or {})


def describe(cfg: hc.HTCondorConfig | None = None, **kw: Any) -> dict[str, str]:
    cfg = cfg or hc.load_config({"run_dir": "/srv/fedhub/htcondor", "users_dir": "/home/jh"})
    args: dict[str, Any] = dict(wrapper=Path("/srv/fedhub/htcondor/fedhub-htcondor-job.py"),
                                servers_dir=Path("/srv/fedhub/htcondor/servers"),
                                trusted_keys=Path("/srv/fedhub/trusted-keys.json"))
    args.update(kw)
    s = args.pop("spec", spec())
    return hc.submit_description(cfg, "hpc", s, **args)


def ads_from_text(text: str) -> list[dict[str, Any]]:
    """Job ads from ``condor_q -long`` text, parsed by the bindings' own ClassAd parser."""
    parsed = htcondor2.classad.parseAds(text, htcondor2.classad.ParserType.Old)
    return [hc.plain_ad(ad) for ad in parsed]


def parse_new_syntax(value: str) -> list[str]:
    """condor_submit's "new syntax" for arguments and environment, per the manual: the whole
    value in double quotes, words split by whitespace, single quotes group words, a doubled
    quote character is a literal one."""
    assert value.startswith('"') and value.endswith('"')
    body, words, word, quoted, have, i = value[1:-1], [], "", False, False, 0
    while i < len(body):
        ch = body[i]
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if ch == '"':
            assert nxt == '"', f"lone double quote at {i} in {value!r}"
            word, have, i = word + '"', True, i + 2
            continue
        if ch == "'":
            if quoted and nxt == "'":
                word, i = word + "'", i + 2
                continue
            quoted, have, i = not quoted, True, i + 1
            continue
        if ch.isspace() and not quoted:
            if have:
                words.append(word)
            word, have, i = "", False, i + 1
            continue
        word, have, i = word + ch, True, i + 1
    assert not quoted, f"unterminated single quote in {value!r}"
    if have:
        words.append(word)
    return words


# --- configuration -----------------------------------------------------------------------

def test_defaults_are_valid() -> None:
    cfg = hc.load_config({})
    assert (cfg.universe, cfg.held, cfg.default_cores) == ("vanilla", "end", 1)
    assert cfg.limits() == (8, 32 * 1024, 7 * 1440)


def test_config_values_are_normalized() -> None:
    cfg = hc.load_config({"default_memory": "4G", "max_memory": "64GiB",
                          "default_walltime": "2:00:00", "max_walltime": "1d",
                          "schedd_address": "<192.0.2.7:9618?alias=submit.example.org>",
                          "submit_extra": {"requirements": 'OpSysAndVer == "AlmaLinux9"',
                                           "+ProjectName": '"physics"',
                                           "accounting_group": "group_jupyter"}})
    assert (cfg.default_memory, cfg.max_memory) == (4096, 65536)
    assert (cfg.default_walltime, cfg.max_walltime) == (120, 1440)


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"scheduler": "x"}, "scheduler: Extra inputs are not permitted"),
    ({"universe": "grid"}, "universe: Input should be 'vanilla' or 'container'"),
    ({"universe": "container"}, "universe = 'container' needs container_image"),
    ({"python": "python3"}, "python: must be an absolute path"),
    ({"run_dir": "/srv/$(Cluster)"}, "run_dir: must not contain quotes, '$'"),
    ({"users_dir": "/srv/u\nqueue"}, "users_dir: must not contain"),
    ({"schedd_address": "192.0.2.7:9618"}, "schedd_address: must look like a sinful string"),
    ({"collector": "cm.example.org:96 18"}, "collector: must look like host or host:port"),
    ({"schedd": "a", "schedd_address": "<192.0.2.7:9618>"}, "not both"),
    ({"default_cores": 0}, "default_cores: Input should be greater than or equal to 1"),
    ({"default_cores": 16, "max_cores": 8}, "default_cores is above max_cores"),
    ({"default_memory": "lots"}, "default_memory: must be a memory size"),
    ({"default_walltime": "forever"}, "default_walltime: must be a duration"),
    ({"max_walltime": "1h"}, "default_walltime is above max_walltime"),
    ({"held": "ignore"}, "held: Input should be 'end' or 'wait'"),
    ({"submit_extra": {"executable": "/bin/sh"}}, "'executable' is not allowed; allowed:"),
    ({"submit_extra": {"periodic_remove": "False"}}, "'periodic_remove' is not allowed"),
    ({"submit_extra": {"+FedhubSite": '"other"'}}, "Fedhub* and job-defining attributes"),
    ({"submit_extra": {"MY.fedhubKey": '"x"'}}, "Fedhub* and job-defining attributes"),
    ({"submit_extra": {"MY.RequestCpus": "64"}}, "Fedhub* and job-defining attributes"),
    ({"submit_extra": {"+AllowedExecuteDuration": "0"}}, "job-defining attributes"),
    ({"submit_extra": {"requirements": "True\nexecutable = /bin/sh"}},
     "'requirements': value must not contain '$' or control characters"),
    ({"submit_extra": {"rank": "$(Memory)"}}, "value must not contain '$'"),
])
def test_invalid_config_is_explained(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(BackendError) as err:
        hc.load_config(raw)
    assert str(err.value).startswith("invalid HTCondor backend_config: ")
    assert fragment in str(err.value)


def test_several_problems_are_named_at_once() -> None:
    with pytest.raises(BackendError) as err:
        hc.load_config({"python": "py", "collector": "a b", "bogus": 1})
    assert all(k in str(err.value) for k in ("python:", "collector:", "bogus:"))


def test_config_from_settings_fills_dirs(tmp_path: Path) -> None:
    settings = SiteAgentSettings(site="hpc", data_dir=tmp_path,
                                 backend_config={"max_cores": 4})
    cfg = hc.config_from_settings(settings)
    assert cfg.run_dir == str(tmp_path / "htcondor")
    assert cfg.users_dir == str(tmp_path / "users")
    assert cfg.max_cores == 4


def test_config_from_settings_refuses_an_unquotable_data_dir(tmp_path: Path) -> None:
    settings = SiteAgentSettings(site="hpc", data_dir=tmp_path / "it's")
    with pytest.raises(BackendError, match="run_dir: must not contain quotes"):
        hc.config_from_settings(settings)


# --- options -----------------------------------------------------------------------------

def test_options_declare_cores_memory_walltime_with_defaults() -> None:
    specs = hc.resource_options(hc.load_config({"max_cores": 4, "default_memory": "4G"}))
    assert [s.name for s in specs] == ["cores", "memory", "walltime"]
    assert validate_options(specs, {}) == {"cores": 1, "memory": 4096, "walltime": 480}
    assert validate_options(specs, {"cores": "4", "memory": "8G", "walltime": "1-00:00"}) == {
        "cores": 4, "memory": 8192, "walltime": 1440}


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"cores": 5}, "CPU cores: must be at most 4"),
    ({"cores": "1; rm -rf /"}, "CPU cores: must be a whole number"),
    ({"memory": "100M"}, "Memory: must be at least 256 MiB"),
    ({"memory": "1T"}, "Memory: must be at most 32768 MiB"),
    ({"walltime": "8d"}, "Walltime: must be at most 10080 minutes"),
    ({"walltime": "1h\nqueue"}, "Walltime: must be a duration"),
    ({"universe": "grid"}, "unknown option 'universe'"),
])
def test_options_refuse_bad_values(raw: dict[str, Any], fragment: str) -> None:
    specs = hc.resource_options(hc.load_config({"max_cores": 4}))
    with pytest.raises(InvalidOptions) as err:
        validate_options(specs, raw)
    assert fragment in str(err.value)


# --- submit descriptions -----------------------------------------------------------------

def test_typical_description() -> None:
    d = describe(spec=spec({"cores": 4, "memory": 8192, "walltime": 120}))
    assert d["universe"] == "vanilla"
    assert d["executable"] == "/srv/fedhub/htcondor/fedhub-htcondor-job.py"
    assert d["transfer_executable"] == "true"
    assert parse_new_syntax(d["arguments"]) == [
        "--prefix=/user/alice/", "--root=/home/jh/alice", "--servers=/srv/fedhub/htcondor/servers",
        "--keys=/srv/fedhub/trusted-keys.json", "--user=alice"]
    assert d["environment"] == '"FEDHUB_JOB_ID=$(ClusterId).$(ProcId)"'
    assert (d["request_cpus"], d["request_memory"]) == ("4", "8192")
    assert d["allowed_execute_duration"] == "7200"
    assert d["batch_name"] == "fedhub-hpc.alice._"
    assert d["MY.FedhubSite"] == '"hpc"' and d["MY.FedhubKey"] == '"alice._"'
    assert d["MY.FedhubSpawn"] == '"3f2a0c"'
    assert d["output"] == "/srv/fedhub/htcondor/jobs/alice._.3f2a0c.out"
    assert d["error"].endswith(".err") and d["log"].endswith(".log")
    assert d["getenv"] == "false"
    assert "NumJobStarts > 0" in d["periodic_remove"]
    assert "time() - EnteredCurrentStatus) > 300" in d["periodic_remove"]
    # The bindings accept it and write one line per key (plus the queue statement).
    text = str(htcondor2.Submit(d))
    assert len(text.strip().splitlines()) == len(d) + 1


def test_defaults_fill_missing_options() -> None:
    d = describe()
    assert (d["request_cpus"], d["request_memory"], d["allowed_execute_duration"]) == (
        "1", "2048", str(8 * 3600))


def test_held_wait_policy_keeps_held_jobs_in_the_queue() -> None:
    d = describe(hc.load_config({"held": "wait", "run_dir": "/r", "users_dir": "/u"}))
    assert d["periodic_remove"] == "(JobStatus == 1 && NumJobStarts > 0)"


def test_container_universe_and_extra_lines() -> None:
    cfg = hc.load_config({"universe": "container", "container_image": "/cvmfs/img.sif",
                          "run_dir": "/r", "users_dir": "/u",
                          "submit_extra": {"requirements": 'Arch == "X86_64"',
                                           "+ProjectName": '"physics"'}})
    d = describe(cfg)
    assert (d["universe"], d["container_image"]) == ("container", "/cvmfs/img.sif")
    assert d["requirements"] == 'Arch == "X86_64"'
    assert 'MY.ProjectName = "physics"' in str(htcondor2.Submit(d))


def test_user_names_with_odd_characters_stay_quoted() -> None:
    s = spec(user="o'brien@uni.example", server="lab-2")
    d = describe(spec=s)
    words = parse_new_syntax(d["arguments"])
    assert words[0] == f"--prefix={s.prefix}" and words[-1] == "--user=o'brien@uni.example"
    assert d["MY.FedhubKey"] == f'"{s.key}"'
    assert len(str(htcondor2.Submit(d)).strip().splitlines()) == len(d) + 1


@pytest.mark.parametrize("argv", [
    ["it's a \"test\" 'x'", "", "  spaced  ", "''", '""', "a'b\"c"],
    ["--user=x' --keys=/etc/passwd '", '--prefix=/"; rm -rf / #'],
])
def test_quoting_round_trips_hostile_looking_arguments(argv: list[str]) -> None:
    quoted = hc.quote_arguments(argv)
    assert parse_new_syntax(quoted) == argv
    d = {"executable": "/bin/true", "arguments": quoted}
    assert len(str(htcondor2.Submit(d)).strip().splitlines()) == 3


@pytest.mark.parametrize("bad", ["a\nqueue", "x\rexecutable = /bin/sh", "$(ENV(HOME))",
                                 "tab\there", "nul\x00"])
def test_values_that_could_break_out_are_refused(bad: str) -> None:
    with pytest.raises(BackendError, match="refused"):
        hc.quote_arguments(["--x", bad])
    with pytest.raises(BackendError, match="refused"):
        describe(wrapper=Path(f"/opt/{bad}"))
    with pytest.raises(BackendError, match="refused"):
        describe(trusted_keys=Path(f"/srv/{bad}"))
    with pytest.raises(BackendError, match="refused"):
        describe(spec=ServerSpec("alice", "", bad, "/user/alice/"))


def test_site_constraint_is_one_exact_match() -> None:
    assert hc.site_constraint("hpc") == 'FedhubSite =?= "hpc"'
    assert hc.site_constraint('a"b') == 'FedhubSite =?= "a\\"b"'
    assert hc.batch_name("hpc", "alice._") == "fedhub-hpc.alice._"


# --- job ads -> status -------------------------------------------------------------------

@pytest.fixture
def queue() -> list[dict[str, Any]]:
    return ads_from_text((DATA / "site_queue.ads").read_text())


@pytest.fixture
def expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DATA / "expected.json").read_text())
    return data


def test_captured_queue_parses(queue: list[dict[str, Any]]) -> None:
    assert [hc.job_id(ad) for ad in queue] == [f"{n}.0" for n in range(101, 113)]
    assert {ad["JobStatus"] for ad in queue} == set(range(1, 8))


@pytest.mark.parametrize("policy", ["end", "wait"])
def test_every_job_status_maps(queue: list[dict[str, Any]], expected: dict[str, Any],
                               policy: str) -> None:
    reports = hc.HTCondorScheduler("hpc", held=policy).parse_status(
        result(json.dumps(queue)), list(expected))
    for jid, want in expected.items():
        status, reason = ((want["status"], want["reason"]) if policy == "end"
                          else want["wait"])
        got = reports[jid]
        assert (got.status.value, got.reason) == (status, reason), jid


async def test_status_in_one_query_missing_is_gone_and_no_id_is_unknown(
        tmp_path: Path, queue: list[dict[str, Any]]) -> None:
    seen: list[list[str]] = []

    async def runner(argv: Any, stdin: Any, timeout: float) -> CommandResult:
        seen.append(list(argv))
        return result(json.dumps(queue))

    b = backend(tmp_path, runner=runner)
    reports = await b.status({"a": {"job_id": "999.0"}, "b": {}, "c": {"job_id": "102.0"},
                              "d": {"job_id": "103.0"}})
    assert reports["a"].status is JobStatus.GONE and "no longer in" in reports["a"].reason
    assert reports["b"].status is JobStatus.UNKNOWN
    assert reports["c"].status is JobStatus.RUNNING
    assert reports["d"].status is JobStatus.GONE and "walltime reached" in reports["d"].reason
    assert seen == [["htcondor2", "query", 'FedhubSite =?= "hpc"']]  # one query for all


@pytest.mark.parametrize("status", [0, 8, None, "2"])
def test_unexpected_job_status_is_unknown(status: Any) -> None:
    assert hc.report_for_ad({"ClusterId": 1, "JobStatus": status}).status is JobStatus.UNKNOWN


def test_hold_without_reason_and_case_insensitive_attributes() -> None:
    r = hc.report_for_ad({"jobstatus": 5})
    assert (r.status, r.reason) == (JobStatus.GONE, "held: no reason given")
    r = hc.report_for_ad({"JOBSTATUS": 5, "holdreasoncode": 46}, held="wait")
    assert (r.status, r.reason) == (JobStatus.PENDING, "held: allowed job duration exceeded")


def test_long_hold_reasons_are_cut() -> None:
    r = hc.report_for_ad({"JobStatus": 5, "HoldReason": "x" * 5000})
    assert len(r.reason) < 400


# --- the scheduler half and the schedd boundary ------------------------------------------

def result(stdout: str = "", rc: int = 0, stderr: str = "") -> CommandResult:
    return CommandResult(("htcondor2", "x"), rc, stdout, stderr)


def test_scheduler_commands_and_submit_parsing() -> None:
    sch = hc.HTCondorScheduler("hpc")
    assert sch.status_command(["1.0", "2.0"]) == ["htcondor2", "query", 'FedhubSite =?= "hpc"']
    assert sch.cancel_command(["1.0"]) == ["htcondor2", "remove", "1.0"]
    assert sch.cancel_by_name_command("ab12") == [
        "htcondor2", "remove-where", 'FedhubSite =?= "hpc" && FedhubSpawn =?= "ab12"']
    assert sch.parse_submit(result("4711.0\n")) == "4711.0"
    with pytest.raises(BackendError, match="HTCondor refused the job: HTCondorException: no"):
        sch.parse_submit(result(rc=1, stderr="HTCondorException: no"))
    with pytest.raises(BackendError, match="refused"):
        sch.parse_submit(result("Submitting job(s).\n"))


def test_parse_status_from_the_runners_json(queue: list[dict[str, Any]]) -> None:
    sch = hc.HTCondorScheduler("hpc", held="wait")
    reports = sch.parse_status(result(json.dumps(queue)), ["102.0", "103.0", "999.0"])
    assert reports["102.0"].status is JobStatus.RUNNING
    assert reports["103.0"].status is JobStatus.PENDING
    assert reports["999.0"].status is JobStatus.GONE
    for garbage in ["", "{}", '[1, 2]', "Failed to fetch ads", '{"ClusterId": 1}']:
        with pytest.raises(ValueError):
            sch.parse_status(result(garbage), ["1.0"])


def backend(tmp_path: Path, runner: Any = None, **cfg: Any) -> hc.HTCondorBackend:
    conf = hc.load_config({"run_dir": str(tmp_path / "run"), "users_dir": str(tmp_path / "u"),
                           **cfg})
    return hc.HTCondorBackend(conf, "hpc", tmp_path / "keys.json", runner=runner)


async def test_schedd_errors_and_hangs_are_unknown_never_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    class Broken:
        def __init__(self, *_a: object) -> None:
            raise htcondor2.HTCondorException("Unable to locate local daemon.")

    monkeypatch.setattr(htcondor2, "Schedd", Broken)
    b = backend(tmp_path, query_timeout=0.3)
    states = {"alice._": {"job_id": "12.0"}, "bob._": {}}
    reports = await b.status(states)
    assert reports["alice._"].status is JobStatus.UNKNOWN
    assert "Unable to locate local daemon" in reports["alice._"].reason
    assert reports["bob._"].status is JobStatus.UNKNOWN

    class Slow:
        def __init__(self, *_a: object) -> None:
            time.sleep(1.0)

    monkeypatch.setattr(htcondor2, "Schedd", Slow)
    reports = await b.status(states)
    assert reports["alice._"].status is JobStatus.UNKNOWN
    assert "did not answer within" in reports["alice._"].reason


async def test_unreachable_schedd_is_unknown_with_the_real_bindings(tmp_path: Path) -> None:
    b = backend(tmp_path, schedd_address="<127.0.0.1:9>", query_timeout=20)
    report = (await b.status({"k": {"job_id": "1.0"}}))["k"]
    assert report.status is JobStatus.UNKNOWN and "Failed" in report.reason


async def test_submit_failure_is_a_readable_backend_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from contextlib import aclosing

    class Refusing:
        def __init__(self, *_a: object) -> None:
            pass

        def submit(self, *_a: object, **_k: object) -> object:
            raise htcondor2.HTCondorException("Failed to connect to schedd")

    monkeypatch.setattr(htcondor2, "Schedd", Refusing)
    b = backend(tmp_path)
    with pytest.raises(BackendError, match="HTCondor refused the job: .*Failed to connect"):
        async with aclosing(b.start(spec())) as gen:
            async for _ in gen:
                pass
    wrapper = tmp_path / "run" / "fedhub-htcondor-job.py"
    assert wrapper.read_text().startswith(f"#!{sys.executable}\n")
    assert os.access(wrapper, os.X_OK)
    compile(wrapper.read_text(), str(wrapper), "exec")  # valid Python


async def test_runner_performs_operations_with_the_bindings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, queue: list[dict[str, Any]]) -> None:
    calls: list[tuple[Any, ...]] = []

    class Recording:
        def __init__(self, *_a: object) -> None:
            pass

        def submit(self, desc: Any, count: int) -> Any:
            calls.append(("submit", str(desc), count))
            return type("R", (), {"cluster": lambda self: 4711})()

        def query(self, constraint: str, projection: list[str]) -> list[Any]:
            calls.append(("query", constraint, tuple(projection)))
            return [htcondor2.classad.ClassAd(ad) for ad in queue[:2]]

        def act(self, action: Any, spec: Any) -> None:
            calls.append(("act", action, spec))

    monkeypatch.setattr(htcondor2, "Schedd", Recording)
    run = hc.CondorRunner(hc.load_config({}))
    desc = describe()
    r = await run(["htcondor2", "submit"], json.dumps(desc), 5)
    assert (r.ok, r.stdout) == (True, "4711.0\n")
    assert "MY.FedhubSite = \"hpc\"" in calls[0][1] and calls[0][2] == 1
    r = await run(["htcondor2", "query", hc.site_constraint("hpc")], None, 5)
    assert [hc.job_id(ad) for ad in json.loads(r.stdout)] == ["101.0", "102.0"]
    assert calls[1][1] == 'FedhubSite =?= "hpc"' and "JobStatus" in calls[1][2]
    await run(["htcondor2", "remove", "12.0", "1.0 || True", "x"], None, 5)
    await run(["htcondor2", "remove", ""], None, 5)
    assert calls[2] == ("act", htcondor2.JobAction.Remove, ["12.0"]) and len(calls) == 3
    r = await run(["condor_rm", "-all"], None, 5)
    assert not r.ok and "not an HTCondor operation" in r.stderr


def test_backend_declares_options_and_capacity(tmp_path: Path) -> None:
    b = backend(tmp_path, max_cores=4)
    assert b.name == "htcondor"
    assert validate_options(b.options(), {})["cores"] == 1
    assert b.capacity()["max_cores"] == 4


def test_registry_builds_the_backend_and_explains_bad_config(tmp_path: Path) -> None:
    from fedhub.site_agent.backends.registry import make_backend

    ok = SiteAgentSettings(site="hpc", data_dir=tmp_path, backend="htcondor",
                           backend_config={"max_cores": 2})
    made = make_backend(ok)
    assert isinstance(made, hc.HTCondorBackend) and made.run_dir == tmp_path / "htcondor"
    bad = SiteAgentSettings(site="hpc", data_dir=tmp_path, backend="htcondor",
                            backend_config={"schedd_adress": "<1.2.3.4:9618>"})
    with pytest.raises(BackendError, match="schedd_adress: Extra inputs are not permitted"):
        make_backend(bad)


# --- importing the bindings --------------------------------------------------------------

@pytest.mark.parametrize(("preset", "want"), [(None, None), ("/dev/null", "/dev/null")])
def test_import_needs_no_condor_config(preset: str | None, want: str | None) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CONDOR_CONFIG"}
    if preset:
        env["CONDOR_CONFIG"] = preset
    code = ("import os, fedhub.site_agent.backends.htcondor as m; "
            "print(os.environ.get('CONDOR_CONFIG'))")
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env,
                         capture_output=True, text=True, timeout=60, check=True)
    assert out.stderr == ""
    has_config = any(os.path.isfile(p) for p in hc._CONFIG_FILES)
    expect = want or (None if has_config else "ONLY_ENV")
    assert out.stdout.strip() == str(expect)
