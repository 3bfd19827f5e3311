"""What the SSH backend runs on a remote host, and how it reads the answers: pure functions.

Every remote command is one line that any login shell (sh, bash, zsh, even csh) reads the
same way: words quoted with :func:`shlex.quote`, and the programs themselves (launch,
stop, log tail) sent as base64 to the remote Python together with their arguments as
base64 JSON. So no user-chosen text (user name, prefix, paths under them) is ever parsed by
a remote shell; it reaches the remote program as data.

The remote host must be Linux (``/proc``) with the Python that runs Jupyter.
"""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass
from typing import Any

STATUS_MARK = "fedhub-status-end"

# Runs a base64 program with base64 JSON arguments; contains no shell metacharacters that
# matter inside single quotes, and no newline (csh refuses newlines in quotes).
_BOOTSTRAP = (
    "import base64,json,sys;"
    "A=json.loads(base64.b64decode(sys.argv[2]));"
    "exec(compile(base64.b64decode(sys.argv[1]),'<fedhub>','exec'))"
)

# Finds a free port, starts Jupyter in a new session (immune to the SSH channel closing),
# and prints what identifies the process: pid, start time in clock ticks, boot id.
LAUNCH = r"""
import os, socket, subprocess, time
def stat(pid):
    with open('/proc/%d/stat' % pid) as fh:
        raw = fh.read()
    return raw[raw.rindex(')') + 2:].split()
data = os.path.abspath(A['data_dir'])
root = os.path.join(data, 'users', A['user_dir'])
logs = os.path.join(data, 'logs')
log_path = os.path.join(logs, A['key'] + '.log')
os.makedirs(root, exist_ok=True)
os.makedirs(logs, exist_ok=True)
with socket.socket() as s:
    s.bind((A['bind'], 0))
    port = s.getsockname()[1]
argv = list(A['argv']) + [
    '--ServerApp.port=%d' % port,
    '--ServerApp.root_dir=' + root,
] + (['--allow-root'] if os.geteuid() == 0 else [])
env = dict(os.environ)
env.update(A['env'])
env['FEDHUB_TRUSTED_KEYS'] = os.path.join(data, 'trusted-keys.json')
with open(log_path, 'ab') as log:
    log.write(('--- fedhub: starting spawn %s on port %d\n' % (A['spawn_id'], port)).encode())
    log.flush()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, cwd=root, env=env,
                            start_new_session=True)
with open('/proc/sys/kernel/random/boot_id') as fh:
    boot_id = fh.read().strip()
print(json.dumps({'pid': proc.pid, 'port': port, 'starttime': int(stat(proc.pid)[19]),
                  'boot_id': boot_id, 'log': log_path, 'root': root,
                  'started_at': time.time()}))
"""

# Stops the process group of a pid, but only if the pid is still the process we started
# (same start time): pids are reused. Prints "gone" or "running".
STOP = r"""
import os, signal, time
def state(pid):
    try:
        with open('/proc/%d/stat' % pid) as fh:
            raw = fh.read()
    except OSError:
        return None
    f = raw[raw.rindex(')') + 2:].split()
    return f[0], int(f[19])
def boot_id():
    with open('/proc/sys/kernel/random/boot_id') as fh:
        return fh.read().strip()
def ours():
    if boot_id() != A['boot_id']:
        return False  # the host rebooted: the pid is someone else's
    st = state(A['pid'])
    return st is not None and st[1] == A['starttime'] and st[0] not in ('Z', 'X')
def wait(limit):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if not ours():
            return True
        time.sleep(0.1)
    return not ours()
def kill(sig):
    try:
        os.killpg(A['pid'], sig)
    except ProcessLookupError:
        pass
if ours():
    kill(signal.SIGTERM)
    if not wait(A['grace']):
        kill(signal.SIGKILL)
        wait(5.0)
print('running' if ours() else 'gone')
"""

# The last lines of a log file, for error messages.
TAIL = r"""
try:
    with open(A['path'], 'rb') as fh:
        fh.seek(0, 2)
        fh.seek(max(0, fh.tell() - 16384))
        text = fh.read().decode(errors='replace')
except OSError:
    text = ''
print('\n'.join(text.splitlines()[-A['lines']:])[-A['limit']:])
"""


def python_command(python: str, program: str, args: dict[str, Any]) -> str:
    """A shell line running ``program`` with the remote ``python``; ``args`` become ``A``."""
    encoded_program = base64.b64encode(program.encode()).decode()
    encoded_args = base64.b64encode(json.dumps(args).encode()).decode()
    return shlex.join([python, "-c", _BOOTSTRAP, encoded_program, encoded_args])


def status_command(pids: list[int]) -> str:
    """One shell line that prints the boot id, the ``/proc/<pid>/stat`` line of every
    pid that still exists, and :data:`STATUS_MARK` last (proof the listing is complete)."""
    files = ["/proc/sys/kernel/random/boot_id", "/proc/loadavg"]
    files += [f"/proc/{int(pid)}/stat" for pid in sorted(set(pids))]
    # A missing pid makes cat fail, which is expected: the marker follows regardless.
    return f"{shlex.join(['cat', *files])} ; echo {STATUS_MARK} ; nproc"


@dataclass(frozen=True)
class RemoteProc:
    """One process as the remote ``/proc`` shows it."""

    pid: int
    starttime: int
    zombie: bool


@dataclass(frozen=True)
class HostListing:
    """A parsed status listing of one host."""

    boot_id: str
    procs: dict[int, RemoteProc]
    load1: float | None = None
    cpus: int | None = None


class ListingError(ValueError):
    """The remote output is not a complete status listing (treat every job as UNKNOWN)."""


def parse_stat_line(line: str) -> RemoteProc:
    """Parse one ``/proc/<pid>/stat`` line; the command name may hold spaces and ')'."""
    try:
        head, _, rest = line.rpartition(")")
        pid = int(head.split("(", 1)[0])
        fields = rest.split()
        return RemoteProc(pid=pid, starttime=int(fields[19]), zombie=fields[0] in ("Z", "X"))
    except (ValueError, IndexError) as exc:
        raise ListingError(f"unreadable /proc stat line: {line[:120]!r}") from exc


def parse_status_output(output: str) -> HostListing:
    """Parse the output of :func:`status_command`; raises ListingError if incomplete."""
    lines = output.splitlines()
    if STATUS_MARK not in lines:
        raise ListingError("the status listing ended early")
    end = lines.index(STATUS_MARK)
    body, tail = lines[:end], lines[end + 1 :]
    if len(body) < 2 or not body[0].strip():
        raise ListingError("the status listing has no boot id")
    boot_id = body[0].strip()
    load1: float | None
    try:
        load1 = float(body[1].split()[0])
    except (ValueError, IndexError):
        load1 = None
    procs = {}
    for line in body[2:]:
        if line.strip():
            proc = parse_stat_line(line)
            procs[proc.pid] = proc
    cpus = int(tail[0]) if tail and tail[0].strip().isdigit() else None
    return HostListing(boot_id=boot_id, procs=procs, load1=load1, cpus=cpus)


def parse_launch_output(output: str) -> dict[str, Any]:
    """The JSON line printed by :data:`LAUNCH`; raises ValueError if it is not there."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            doc = json.loads(line)
            if isinstance(doc, dict) and {"pid", "port", "starttime", "boot_id"} <= set(doc):
                return doc
    raise ValueError(f"the remote launcher printed no process details: {output[-300:]!r}")
