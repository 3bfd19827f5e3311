"""Keeping the proxy's state in step with the log: publish our key, rebuild, follow."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from contextlib import aclosing

from fedhub.edge_proxy.route_log import check_routes, fold_route
from fedhub.edge_proxy.state import ProxyState, apply
from fedhub.events.envelope import derived_id, new_event
from fedhub.events.errors import EventLogError
from fedhub.events.raw import RawReader
from fedhub.events.signing import SigningKey
from fedhub.events.store import EventStore
from fedhub.schemas import subjects
from fedhub.schemas.events import KeyPublished

log = logging.getLogger(__name__)
ROLE = "edge-proxy"


async def publish_key(store: EventStore, key: SigningKey, name: str) -> None:
    """Announce our public key (idempotent: the event id derives from the key id).

    Raises StoreUnavailable if the log cannot be reached.
    """
    event = new_event(
        subjects.key(key.kid),
        KeyPublished(kid=key.kid, public_key=key.public_b64, role=ROLE, name=name),
        actor=f"{ROLE}:{name}",
        signer=key,
        event_id=derived_id(key.kid, "key-published"),
    )
    await store.append(event)


async def rebuild(store: EventStore, state: ProxyState) -> int:
    """Fold the current state of the log into ``state``; return where to follow from.

    Keys first (everything else is checked against them), then users, every logout and
    token revocation, and the latest event of every route. Route signatures may be left
    for ``follow`` to check (the table checks any route before it is used). Raises
    StoreUnavailable.
    """
    last = await store.last_seq()
    keys = await store.latest_per_subject("fedhub.key.>")
    # Twice: a site-agent key is trusted only once its enrolling coordinator's key is, and
    # a re-published coordinator key can come later in the log than the keys it enrolled.
    for stored in (*keys, *keys):
        apply(state, stored)
    for stored in await store.latest_per_subject("fedhub.user.>"):
        apply(state, stored)
    for family in ("fedhub.login.>", "fedhub.token.>"):
        async with aclosing(store.read(family)) as events:
            async for stored in events:
                apply(state, stored)
    if isinstance(store, RawReader):  # the fast path: see route_log
        async with aclosing(store.latest_raw("fedhub.route.>")) as raw_events:
            async for seq, data in raw_events:
                fold_route(state, seq, data)
    else:
        for stored in await store.latest_per_subject("fedhub.route.>"):
            apply(state, stored)
    for stored in await store.latest_per_subject("fedhub.site.*"):
        apply(state, stored)  # open health episodes
    state.seq = max(state.seq, last)
    return last + 1


async def follow(
    store: EventStore,
    state: ProxyState,
    start: int,
    on_change: Callable[[], None] | None = None,
    retry: float = 1.0,
) -> None:
    """Apply every event from ``start`` on, forever; resume after store failures.

    Meanwhile, check the routes ``rebuild`` left unchecked, in the background.
    """
    checker = asyncio.create_task(check_routes(state), name="edge-check-routes")
    try:
        await _follow(store, state, start, on_change, retry)
    finally:
        checker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checker


async def _follow(
    store: EventStore,
    state: ProxyState,
    start: int,
    on_change: Callable[[], None] | None,
    retry: float,
) -> None:
    position = start
    while True:
        try:
            # aclosing: a cancelled follower must release the store's subscription now.
            async with aclosing(store.follow("fedhub.>", start=position)) as events:
                async for stored in events:
                    apply(state, stored)
                    position = stored.seq + 1
                    if on_change is not None:
                        on_change()
        except EventLogError as exc:
            log.warning("following the log failed at %d (%s); retrying in %.0fs",
                        position, exc, retry)
        except Exception:  # an untranslated client error: keep following all the same
            log.exception("following the log failed at %d; retrying in %.0fs", position, retry)
        await asyncio.sleep(retry)
