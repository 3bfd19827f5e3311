"""Keeping a component's long-running loops (log followers, monitors) alive."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)
HEALTHY_RUN = 60.0  # seconds of good running after which a failure is a first one again
FIRST_PAUSE = 1.0
MAX_PAUSE = 30.0


async def keep_running(name: str, run: Callable[[], Awaitable[None]]) -> None:
    """``await run()`` again whenever it fails, after 1 s, then twice as long after each
    failure in a row (up to 30 s); return when it returns. Each loop given here resumes
    from its own saved position, so a restart loses nothing."""
    pause = FIRST_PAUSE
    while True:
        began = time.monotonic()
        try:
            await run()
            return
        except Exception:  # keep the component alive; the log or database may come back
            if time.monotonic() - began > HEALTHY_RUN:
                pause = FIRST_PAUSE
            log.exception("%s loop failed; restarting in %.0f s", name, pause)
        await asyncio.sleep(pause)
        pause = min(pause * 2, MAX_PAUSE)
