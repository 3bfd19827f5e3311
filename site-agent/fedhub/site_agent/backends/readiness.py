"""Waiting for a single-user server to answer, the last step of every backend's start."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp

from fedhub.site_agent.errors import BackendError

# Seconds between readiness checks: a server that is up within milliseconds is seen
# within milliseconds, and one that takes a minute costs only four checks a second.
FIRST_POLL = 0.01
MAX_POLL = 0.25
POLL_GROWTH = 1.5


async def answers(http: aiohttp.ClientSession, url: str) -> bool:
    """True if ``url`` answers 200 now (Jupyter's unauthenticated ``<prefix>api``)."""
    try:
        async with http.get(url) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_until_ready(url: str, timeout: float,
                           still_running: Callable[[], Awaitable[None]]) -> None:
    """Poll ``url`` until it answers 200. Before every try ``still_running()`` raises
    BackendError if the job has ended (with the reason, e.g. the log's last lines).
    Raises BackendError when ``timeout`` seconds pass without an answer."""
    deadline = time.monotonic() + timeout
    pause = FIRST_POLL
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            await still_running()
            if await answers(http, url):
                return
            if time.monotonic() > deadline:
                raise BackendError(f"Jupyter did not answer at {url} within {timeout:.0f} s")
            await asyncio.sleep(pause)
            pause = min(pause * POLL_GROWTH, MAX_POLL)
