"""The agent's heartbeat on the health stream (latest value per site only)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from fedhub.events.errors import EventLogError
from fedhub.events.store import EventStore
from fedhub.schemas import subjects
from fedhub.schemas.events import SiteHeartbeat

log = logging.getLogger(__name__)


async def beat_forever(
    store: EventStore, interval: float, make: Callable[[], SiteHeartbeat]
) -> None:
    """Put ``make()`` on the site's health subject every ``interval`` seconds, forever.

    A failed put is logged and retried at the next beat; it never ends the loop.
    """
    while True:
        beat = make()
        try:
            await store.put_health(subjects.health(beat.site), beat.model_dump_json().encode())
        except EventLogError as exc:
            log.warning("heartbeat not sent: %s", exc)
        except Exception:  # a dead heartbeat would silently mark the site down
            log.exception("heartbeat not sent")
        await asyncio.sleep(interval)
