"""Waiting for a server to settle on behalf of an API client: a spawn or a stop.

Waiters watch the projection (``ProjectionRunner.watch``) instead of opening a consumer
of the log each or polling it: hundreds of spawns or stops can wait at once, and NATS
limits the number of consumers (a burst of 500 spawns once ran into that limit and
answered a bare 500; stops opened a consumer each as well).
"""

from __future__ import annotations

import asyncio
from collections.abc import Set

from fedhub.coordinator.servers import status_of
from fedhub.events.store import StoredEvent
from fedhub.schemas.events import ServerStatus

SPAWN_ENDED = frozenset({ServerStatus.READY, ServerStatus.FAILED, ServerStatus.STOPPED})
STOP_ENDED = frozenset({ServerStatus.STOPPED, ServerStatus.FAILED})


async def settled(events: asyncio.Queue[StoredEvent], after: int, done: Set[ServerStatus],
                  timeout: float) -> StoredEvent | None:
    """The first event in ``events`` (a ``ProjectionRunner.watch`` queue of the server's
    subject) after sequence ``after`` whose status is in ``done``, or None if none comes
    within ``timeout`` seconds. The event is already applied to the tables when returned.
    Consumes the queue; never raises for a timeout."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                item = await events.get()
                if item.seq > after and status_of(item) in done:
                    return item
    except TimeoutError:
        return None
