"""Handling commands for different servers concurrently, each server's in order.

Handling a start costs a round trip to the log and a process spawn; awaited one command
at a time, a burst of 500 starts queues behind itself. Commands for one server must still
be handled in the order they were sent (a start, then its stop).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Lanes:
    """One lane per key; at most ``limit`` commands queued or being handled at once."""

    def __init__(self, limit: int = 256) -> None:
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(limit)

    async def submit(self, key: str, work: Callable[[], Awaitable[None]]) -> None:
        """Queue ``work`` behind earlier work for ``key``; waits while ``limit`` pieces are
        in flight. Exceptions of ``work`` are logged, never raised."""
        await self._slots.acquire()
        ahead = self._tails.get(key)
        task = asyncio.create_task(self._run(ahead, work), name=f"command-lane-{key}")
        self._tails[key] = task
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._slots.release()
            if self._tails.get(key) is t:
                del self._tails[key]
            if not t.cancelled() and (exc := t.exception()) is not None:
                log.error("handling a command for %s failed", key, exc_info=exc)

        task.add_done_callback(done)

    @staticmethod
    async def _run(ahead: asyncio.Task[None] | None, work: Callable[[], Awaitable[None]]
                   ) -> None:
        if ahead is not None:
            await asyncio.wait({ahead})  # its outcome is its own; only the order matters
        await work()

    async def close(self) -> None:
        """Cancel whatever is still queued or being handled and wait for it. Idempotent."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
