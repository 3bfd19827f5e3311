"""Local processes by pid and start time: spawn detached, check, reap and signal.

A pid alone is not an identity (pids are reused), so every check compares the start time
from ``/proc/<pid>/stat`` (field 22, clock ticks since boot) with the one recorded at spawn.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcState:
    """What /proc says about a pid: its start time and whether it is a zombie."""

    starttime: int
    zombie: bool


def proc_state(pid: int) -> ProcState | None:
    """The process's start time and zombie flag, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); field 22 (starttime) is fields[19].
    return ProcState(starttime=int(fields[19]), zombie=fields[0] in ("Z", "X"))


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


def group_alive(pid: int) -> bool:
    """True while a live (not zombie) process of the group led by ``pid`` exists.

    Zombies do not count: an orphaned kernel waits for init to reap it, which is not ours
    to wait for (and may never happen in a container whose init does not reap).
    """
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                raw = Path(f"/proc/{entry.name}/stat").read_text()
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            fields = raw[raw.rindex(")") + 2 :].split()
            # fields[0] is field 3 (state), fields[2] field 5 (process group).
            if fields[2] == str(pid) and fields[0] not in ("Z", "X"):
                return True
    return False


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid`` (the server and its kernels)."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
