"""Signed appends to the log on behalf of one site agent."""

from __future__ import annotations

import asyncio
import logging

from fedhub.events.envelope import derived_id, new_event
from fedhub.events.errors import StoreUnavailable
from fedhub.events.signing import SigningKey
from fedhub.events.store import EventStore
from fedhub.schemas.events import Payload

log = logging.getLogger(__name__)


class Publisher:
    """Appends events signed by the agent's key, as actor ``site:<site>``."""

    def __init__(self, store: EventStore, key: SigningKey, site: str, *, retries: int = 5
                 ) -> None:
        self.store = store
        self.key = key
        self.actor = f"site:{site}"
        self.retries = retries

    async def publish(self, subject: str, payload: Payload, *, parent: str | None = None,
                      purpose: str = "") -> int:
        """Append ``payload`` on ``subject``; returns its stream sequence.

        With ``parent`` the event id is ``derived_id(parent, purpose)``, so publishing the
        same reaction twice (a redelivered command, a restarted agent) stores it once.
        Retries while the store is unavailable, then raises StoreUnavailable.
        """
        event_id = derived_id(parent, purpose) if parent is not None else None
        env = new_event(subject, payload, actor=self.actor, signer=self.key, event_id=event_id)
        delay = 0.5
        for attempt in range(self.retries):
            try:
                return await self.store.append(env)
            except StoreUnavailable as exc:
                if attempt == self.retries - 1:
                    raise
                log.warning("cannot append %s on %s (%s); retrying", payload.TYPE, subject, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        raise AssertionError("unreachable")
