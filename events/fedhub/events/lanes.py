"""Working through the log concurrently without reordering any one aggregate's events.

A follower that awaits each reaction before reading the next event is as slow as the sum
of its round trips to the log: a burst of spawns then queues behind one another although
different servers never depend on each other. ``Lanes`` runs work for different keys
concurrently and work for the same key strictly in the order it was submitted. The
coordinator's reactor runs its reactions in lanes, a site agent its commands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)
Work = Callable[[], Awaitable[None]]


class Lanes:
    """One lane per key; at most ``limit`` pieces of work queued or running at once."""

    def __init__(self, limit: int = 256) -> None:
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: set[int] = set()
        self._slots = asyncio.Semaphore(limit)

    async def submit(self, key: str, seq: int, work: Work) -> None:
        """Queue ``work`` (for the event at ``seq``) behind earlier work for ``key``.

        Waits while ``limit`` pieces are in flight. ``seq`` names the work in logs and
        feeds ``done_through``, which needs it to grow with every call.
        Exceptions of ``work`` are logged, never raised: one bad event stops no lane.
        """
        await self._slots.acquire()
        ahead = self._tails.get(key)
        self._pending.add(seq)
        task = asyncio.create_task(self._run(ahead, work), name=f"lane-{key}")
        self._tails[key] = task
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._pending.discard(seq)
            self._slots.release()
            if self._tails.get(key) is t:
                del self._tails[key]
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.error("work for event %d (%s) failed", seq, key, exc_info=exc)

        task.add_done_callback(done)

    @staticmethod
    async def _run(ahead: asyncio.Task[None] | None, work: Work) -> None:
        if ahead is not None:
            await asyncio.wait({ahead})  # its outcome is its own; only the order matters
        await work()

    def done_through(self, read: int) -> int:
        """The highest sequence up to which all work has finished, given that every event
        up to ``read`` was either submitted or needed none."""
        return min(self._pending) - 1 if self._pending else read

    async def drain(self) -> None:
        """Return once everything submitted so far has finished (a barrier)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def close(self) -> None:
        """Cancel whatever is still queued or running and wait for it. Idempotent."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
