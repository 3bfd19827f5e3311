"""Local processes by pid and start time: spawn detached, check, reap and signal.

A pid alone is not an identity (pids are reused), so every check compares the start time
from ``/proc/<pid>/stat`` (field 22, clock ticks since boot) with the one recorded at spawn.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcState:
    """What /proc says about a pid: its start time, zombie flag and process group."""

    starttime: int
    zombie: bool
    group: int


def proc_state(pid: int) -> ProcState | None:
    """The process's state from ``/proc/<pid>/stat``, or None if there is no such process.
    The one parser of that file: everything else asks here."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state), fields[2] field 5 (process group), fields[19] field 22
    # (starttime).
    return ProcState(starttime=int(fields[19]), zombie=fields[0] in ("Z", "X"),
                     group=int(fields[2]))


def reap(pid: int) -> str | None:
    """Collect the exit status of our own child ``pid`` if it has ended.

    Returns a readable exit reason (``exit code 1``, ``signal SIGKILL``), or None when it
    still runs or is not our child (then init reaps it and /proc tells the rest).
    """
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if done == 0:
        return None
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"signal {name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def alive(pid: int, starttime: int) -> bool:
    """True if ``pid`` is still the process that started at ``starttime`` and not a zombie."""
    reap(pid)
    st = proc_state(pid)
    return st is not None and st.starttime == starttime and not st.zombie


def spawn_detached(argv: list[str], env: dict[str, str], log_path: Path) -> int:
    """Start ``argv`` in a new session (so a Ctrl-C to the agent does not reach it) with
    stdin from /dev/null and stdout and stderr appended to ``log_path``. Returns the pid;
    raises OSError if the program cannot be executed."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), flags, 0o600),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    # posix_spawn rather than subprocess: a Popen object for a server meant to outlive the
    # agent would warn ("still running") when collected, and asyncio would watch the child.
    return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)


def _processes() -> Iterator[tuple[int, ProcState]]:
    """Every process in /proc with its state; those that end meanwhile are left out."""
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit() and (st := proc_state(int(entry.name))) is not None:
                yield int(entry.name), st


class ProcessGroup:
    """The process group led by ``leader`` (a server and its kernels), for checking again
    and again whether any of it still runs, as a stop does every few milliseconds.

    The live members a scan of /proc finds are remembered with their start times; while
    one of them still runs in the group, that alone answers. /proc is scanned again only
    once none does, because a member may have forked a new one meanwhile: the group is
    gone only when a full scan finds no live member.
    """

    def __init__(self, leader: int) -> None:
        self.leader = leader
        self._members: dict[int, int] = {}  # pid -> start time

    def alive(self) -> bool:
        """True while a live (not zombie) process of the group exists. Never raises for
        processes that end meanwhile.

        Zombies do not count: an orphaned kernel waits for init to reap it, which is not
        ours to wait for (and may never happen in a container whose init does not reap).
        """
        try:
            os.killpg(self.leader, 0)
        except ProcessLookupError:
            self._members.clear()
            return False
        except PermissionError:
            pass  # the group exists, we may just not signal all of it
        for pid, starttime in list(self._members.items()):
            st = proc_state(pid)
            if st is not None and st.starttime == starttime and self._counts(st):
                return True
            del self._members[pid]
        self._members = {pid: st.starttime for pid, st in _processes() if self._counts(st)}
        return bool(self._members)

    def _counts(self, st: ProcState) -> bool:
        return st.group == self.leader and not st.zombie


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (the server and its kernels)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
