"""Process groups of local servers: a server is stopped only once its whole group is."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fedhub.site_agent.backends.local import LocalProcessBackend
from fedhub.site_agent.backends.process import (
    ProcessGroup,
    alive,
    proc_state,
    spawn_detached,
)


def orphaning_group(tmp_path: Path, member_seconds: float) -> tuple[int, int]:
    """A group whose leader (like a server) exits at once, leaving a member (like a
    kernel) running for ``member_seconds``; returns the leader's pid and start time once
    the leader is gone."""
    pid = spawn_detached(["/bin/sh", "-c", f"sleep {member_seconds} & exit 0"],
                         dict(os.environ), tmp_path / "log")
    state = proc_state(pid)
    starttime = state.starttime if state is not None else 0
    deadline = time.monotonic() + 5
    while alive(pid, starttime) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid, starttime)
    return pid, starttime


def group_alive(pid: int) -> bool:
    return ProcessGroup(pid).alive()


def wait_zombie(pid: int) -> None:
    """Wait until our child ``pid`` has exited, without reaping it: it stays a zombie."""
    deadline = time.monotonic() + 5
    while not getattr(proc_state(pid), "zombie", True) and time.monotonic() < deadline:
        time.sleep(0.02)
    state = proc_state(pid)
    assert state is not None and state.zombie


def test_a_group_outlives_its_leader_until_its_last_member_ends(tmp_path: Path) -> None:
    pid, _ = orphaning_group(tmp_path, 0.6)
    assert group_alive(pid), "the leader's child still runs in its group"
    deadline = time.monotonic() + 5
    while group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(pid)


def test_a_zombie_member_does_not_keep_its_group_alive(tmp_path: Path) -> None:
    pid = spawn_detached(["/bin/sh", "-c", "exit 0"], dict(os.environ), tmp_path / "log")
    try:
        wait_zombie(pid)  # still in /proc and in its group, but not running
        state = proc_state(pid)
        assert state is not None and state.group == pid
        assert not group_alive(pid)
    finally:
        os.waitpid(pid, 0)


def test_a_member_forked_after_the_first_check_keeps_the_group_alive(tmp_path: Path) -> None:
    pid = spawn_detached(["/bin/sh", "-c", "sleep 0.4; sleep 1.5 & exit 0"],
                         dict(os.environ), tmp_path / "log")
    try:
        group = ProcessGroup(pid)
        assert group.alive()  # only the leader so far: it is what is remembered
        wait_zombie(pid)
        assert group.alive(), "the member the leader forked later runs in its group"
        deadline = time.monotonic() + 5
        while group.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group.alive()
    finally:
        os.waitpid(pid, 0)


def test_no_group_for_a_pid_that_leads_none() -> None:
    beyond = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no pid is this high
    assert not group_alive(beyond)


async def test_stop_ends_kernels_a_crashed_server_left_behind(tmp_path: Path) -> None:
    pid, starttime = orphaning_group(tmp_path, 60)
    assert group_alive(pid)
    backend = LocalProcessBackend(tmp_path, jupyter_command=["true"])
    await backend.stop({"pid": pid, "starttime": starttime})
    assert not group_alive(pid)
