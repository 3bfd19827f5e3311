"""``fedhub up`` on a data directory another ``fedhub up`` uses, or left parts of."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedhub.coordinator.embedded import RUNTIME_FILE, up
from tests.support.services import free_port


@pytest.fixture(autouse=True)
def no_hub_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a check let ``up`` go on, it fails at once instead of starting a whole hub."""
    monkeypatch.setattr("shutil.which", lambda _name: None)


@pytest.fixture
def process() -> Iterator[subprocess.Popen[bytes]]:
    """A stand-in whose command line reads 'fedhub ... nats-server', as a hub's parts do."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                             "fedhub", "nats-server"])
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    while b"fedhub" not in cmdline.read_bytes():  # until its exec is done (a loaded machine)
        time.sleep(0.01)
    yield proc
    proc.kill()
    proc.wait()


def write_runtime(data_dir: Path, **fields: object) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / RUNTIME_FILE
    path.write_text(json.dumps({"url": "http://127.0.0.1:8000", **fields}))
    return path


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_second_up_names_the_running_hub_and_leaves_its_runtime_file(
        tmp_path: Path, process: subprocess.Popen[bytes],
        capsys: pytest.CaptureFixture[str]) -> None:
    runtime = write_runtime(tmp_path, pid=process.pid)
    before = runtime.read_text()
    assert up(tmp_path, "127.0.0.1", free_port()) == 1
    err = capsys.readouterr().err
    assert f"a hub is already running from {tmp_path} (pid {process.pid}" in err
    assert runtime.read_text() == before  # the CLI still finds the running hub


def test_parts_left_by_a_killed_up_are_named(
        tmp_path: Path, process: subprocess.Popen[bytes],
        capsys: pytest.CaptureFixture[str]) -> None:
    write_runtime(tmp_path, pid=dead_pid(), nats_pid=process.pid)
    assert up(tmp_path, "127.0.0.1", free_port()) == 1
    assert f"still runs from {tmp_path}: stop it (kill {process.pid})" in capsys.readouterr().err


def test_a_stale_runtime_file_or_a_reused_pid_is_no_hub(tmp_path: Path) -> None:
    from fedhub.coordinator.embedded import left_nats, running_hub

    write_runtime(tmp_path, pid=dead_pid(), nats_pid=dead_pid())
    assert running_hub(tmp_path) is None and left_nats(tmp_path) is None
    sleeper = subprocess.Popen(["sleep", "30"])  # a live pid, but not a hub's
    cmdline = Path(f"/proc/{sleeper.pid}/cmdline")
    while b"sleep" not in cmdline.read_bytes():
        time.sleep(0.01)
    try:
        write_runtime(tmp_path, pid=sleeper.pid, nats_pid=sleeper.pid)
        assert running_hub(tmp_path) is None and left_nats(tmp_path) is None
    finally:
        sleeper.kill()
        sleeper.wait()
