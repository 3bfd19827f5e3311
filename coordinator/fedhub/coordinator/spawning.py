"""Waiting for a spawn on behalf of an API client or a spawn page, on the projection
(see ``waiting``), never on a consumer of the log per request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse

from fedhub.coordinator import servers, waiting
from fedhub.coordinator.context import Hub
from fedhub.events.store import StoredEvent
from fedhub.schemas import subjects
from fedhub.schemas.events import RouteAdded, ServerStatus
from fedhub.schemas.names import server_prefix

KEEPALIVE = 8.0  # seconds between keep-alive lines of a quiet progress stream


async def spawn(hub: Hub, user: str, server: str, site: str | None, options: dict[str, Any],
                actor: str, patience: float) -> Response:
    """Request a server and answer as ``POST .../server`` does: 201 with the server model
    once ready and routed within ``patience`` seconds, 202 if still pending, 500 with the
    reason if it failed. Raises what ``servers.start`` raises."""
    # Watched before the request, so no event of this spawn can be missed.
    with hub.projection.watch(subjects.server(user, server)) as events, \
            hub.projection.watch(subjects.route(user, server)) as routes:
        seq = await servers.start(hub, user, server, site, options, actor)
        ended = await waiting.settled(events, seq, waiting.SPAWN_ENDED, patience)
        if ended is None:
            return JSONResponse({"status": 202, "message": "spawn pending"}, 202)
        if servers.status_of(ended) is not ServerStatus.READY:
            row = servers.get_server(hub, user, server)  # ``ended`` is applied already
            return JSONResponse({"status": 500, "message": row.message or "spawn failed"}, 500)
        if not await _routed(hub, routes, subjects.route(user, server), ended.seq):
            return JSONResponse({"status": 202, "message": "spawn pending"}, 202)
        return JSONResponse(servers.server_model(hub, servers.get_server(hub, user, server)),
                            201)


async def _routed(hub: Hub, routes: asyncio.Queue[StoredEvent], subject: str, after: int,
                  timeout: float = 5.0) -> bool:
    """True once a route was added after ``after`` (the ready event), in the log or, via
    ``routes`` (watched before the spawn was requested or followed), once projected."""
    last = await hub.store.last(subject)
    if last is not None and last.seq > after and last.event.type == RouteAdded.TYPE:
        return True
    try:
        async with asyncio.timeout(timeout):
            while True:
                item = await routes.get()
                if item.seq > after and item.event.type == RouteAdded.TYPE:
                    return True
    except TimeoutError:
        return False


async def progress_stream(hub: Hub, user: str, server: str) -> AsyncIterator[str]:
    """Replays the current spawn's events, then follows until ready or failed."""
    url = server_prefix(user, server)
    subject = subjects.server(user, server)
    with hub.projection.watch(subject) as events, \
            hub.projection.watch(subjects.route(user, server)) as routes:
        history = [i async for i in hub.store.read(subject)]
        start = max((i.seq for i in history if i.event.type == "ServerRequested"), default=0)
        replay = [i for i in history if i.seq >= start]
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def pump() -> None:
            seen, pending = (replay[-1].seq if replay else 0), list(replay)
            while True:
                if pending:
                    item = pending.pop(0)
                else:  # watched before the history was read: skip what it replayed
                    item = await events.get()
                    if item.seq <= seen:
                        continue
                    seen = item.seq
                msg = servers.progress_message(item, url)
                if msg is None:
                    continue
                if msg.get("ready"):
                    await _routed(hub, routes, subjects.route(user, server), item.seq)
                await queue.put(msg)
                if msg.get("ready") or msg.get("failed"):
                    break
            await queue.put(None)

        task = asyncio.create_task(pump())
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    yield "\n\n"
                    continue
                if msg is None:
                    return
                yield f"data: {json.dumps(msg)}\n\n"
        finally:
            task.cancel()
