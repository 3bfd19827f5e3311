"""Process groups of local servers: a server is stopped only once its whole group is."""

from __future__ import annotations

import os
import time
from pathlib import Path

from fedhub.site_agent.backends.process import alive, group_alive, proc_state, spawn_detached


def test_a_group_outlives_its_leader_until_its_last_member_ends(tmp_path: Path) -> None:
    # The leader exits at once; the member it started (like a kernel) lives on briefly.
    pid = spawn_detached(["/bin/sh", "-c", "sleep 0.6 & exit 0"], dict(os.environ),
                         tmp_path / "log")
    state = proc_state(pid)
    starttime = state.starttime if state is not None else 0
    deadline = time.monotonic() + 5
    while alive(pid, starttime) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid, starttime)
    assert group_alive(pid), "the leader's child still runs in its group"
    while group_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(pid)


def test_no_group_for_a_pid_that_leads_none() -> None:
    beyond = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no pid is this high
    assert not group_alive(beyond)
