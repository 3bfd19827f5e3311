"""The floor under a spawn burst: the same trivial servers started at once with no hub.

Whatever a hub does, a burst of N spawns cannot finish before N trivial servers, started
together on this machine, all answer. The figure says how much of a burst is the servers'
own start-up, and so what is left for the hubs to differ in.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import time
from contextlib import ExitStack

from hubs import TRIVIAL

# The same readiness schedule as fedhub's site agent (FIRST_POLL growing to MAX_POLL), so
# the floor does not flatter either side with a tighter poll.
FIRST_POLL, MAX_POLL, GROWTH = 0.01, 0.25, 1.5


def distinct_ports(n: int) -> list[int]:
    """``n`` free loopback ports, all different (held open together while chosen)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


async def _answers(port: int) -> None:
    pause = FIRST_POLL
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                if (await reader.readline()).startswith(b"HTTP/1.1 200"):
                    return
            finally:
                writer.close()
        except OSError:
            pass
        await asyncio.sleep(pause)
        pause = min(pause * GROWTH, MAX_POLL)


async def bare_burst(n: int) -> tuple[float, float]:
    """Seconds from starting ``n`` trivial servers at once until every one answers 200, and
    the mean CPU seconds each server used (its start-up: nobody else calls it). The CPU
    comes from the reaped children's rusage: /proc's per-process figure counts whole
    10 ms clock ticks, too coarse for a process that starts in a few milliseconds."""
    ports = distinct_ports(n)
    before = _children_cpu()
    t0 = time.perf_counter()
    procs = [await asyncio.create_subprocess_exec(*TRIVIAL, f"--ServerApp.port={p}",
                                                  stdin=asyncio.subprocess.DEVNULL)
             for p in ports]
    try:
        await asyncio.wait_for(asyncio.gather(*(_answers(p) for p in ports)), 600)
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
        await asyncio.gather(*(p.wait() for p in procs))
    return wall, (_children_cpu() - before) / n


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
