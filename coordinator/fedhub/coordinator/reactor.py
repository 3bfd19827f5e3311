"""Reactions to site events: a started server becomes ready and routed; a stopped one
loses its route; a deleted user's servers are stopped. Every reaction checks the current
state and uses derived event ids, so replaying, restarting or running several
coordinators adds nothing twice."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from sqlalchemy.orm import Session, sessionmaker

from fedhub.coordinator.context import Hub
from fedhub.coordinator.db import Position, save_position
from fedhub.coordinator.errors import Conflict, CoordinatorError
from fedhub.coordinator.ingest import ingest
from fedhub.coordinator.servers import remove_route, stop_all, user_deleted
from fedhub.events.enroll import enroll
from fedhub.events.envelope import derived_id
from fedhub.events.errors import EventLogError
from fedhub.events.lanes import Lanes
from fedhub.events.store import StoredEvent
from fedhub.schemas import events as ev
from fedhub.schemas import subjects
from fedhub.schemas.names import server_prefix

log = logging.getLogger(__name__)
NAME = "reactor"
SAVE_EVERY = 100  # events between position saves
SAVE_AFTER = 1.0  # seconds: a slow trickle of events still saves often


def _position(sessions: sessionmaker[Session]) -> int:
    with sessions() as db:
        pos = db.get(Position, NAME)
        return pos.seq if pos else 0


def lane_of(subject: str) -> str:
    """Which lane an event's reaction runs in: one per server, whether the event is the
    canonical record (``fedhub.server.<key>``) or a site's raw report about it
    (``fedhub.site.<site>.server.<key>``), so a report is always recorded before the
    reactor sees the record; anything else has its subject as its lane."""
    parts = subject.split(".", 4)
    if len(parts) == 5 and parts[1] == "site" and parts[3] == "server":
        return f"server.{parts[4]}"
    if len(parts) >= 3 and parts[1] == "server":
        return f"server.{subject.split('.', 2)[2]}"
    return subject


async def run(hub: Hub) -> None:
    """Follow the whole log in order, resuming from the stored position: enroll keys,
    check and record what sites report, react to server events. Reactions to different
    servers run concurrently (each is a few round trips to the log); one server's events
    are handled in log order."""
    saved = _position(hub.sessions)
    saved_at = time.monotonic()
    lanes = Lanes()
    try:
        async for item in hub.store.follow("fedhub.>", start=saved + 1):
            subject = item.event.subject
            if subject.startswith("fedhub.key."):
                # A key change applies to every later event and none before: let the
                # reactions in flight finish with the ring they were read under.
                await lanes.drain()
                enroll(hub.keyring, item)
            elif (subjects.is_site_fact(subject) or subject.startswith("fedhub.server.")
                  or subject.startswith("fedhub.user.")):
                await lanes.submit(lane_of(subject), item.seq, _reaction(hub, item))
            # Every reaction is idempotent (it checks the current state and uses derived
            # ids), so re-reading a few events after a restart is harmless: save now and
            # then, not after every event, and only as far as every reaction has finished.
            done = lanes.done_through(item.seq)
            if done - saved >= SAVE_EVERY or (done > saved
                                               and time.monotonic() - saved_at >= SAVE_AFTER):
                with hub.sessions.begin() as db:
                    save_position(db, NAME, done)
                saved, saved_at = done, time.monotonic()
    finally:
        await lanes.close()


def _reaction(hub: Hub, item: StoredEvent) -> Callable[[], Awaitable[None]]:
    async def reaction() -> None:
        try:
            if subjects.is_site_fact(item.event.subject):
                await ingest(hub, item)
            else:
                await react(hub, item)
        except (EventLogError, CoordinatorError) as exc:
            log.warning("reaction to event %d (%s) failed: %s", item.seq, item.event.type, exc)
    return reaction


async def react(hub: Hub, item: StoredEvent) -> None:
    """Apply the reaction (if any) to one server or user event."""
    try:
        p = item.event.payload()
    except EventLogError as exc:
        log.warning("reactor skips event %d: %s", item.seq, exc)
        return
    if isinstance(p, ev.ServerStarted):
        await _ready(hub, item, p)
    elif isinstance(p, ev.ServerReady):
        await _route(hub, item, p)
    elif isinstance(p, ev.ServerStopped | ev.ServerFailed):
        await remove_route(hub, p.user, p.server, p.reason or "server ended",
                           parent=item.event.id)
    elif isinstance(p, ev.UserDeleted) and await user_deleted(hub, p.name):
        # also after a coordinator died mid-deletion; a replayed deletion of a name that
        # has an account again must not touch the new account's servers
        await stop_all(hub, p.name, item.event.actor)
    elif isinstance(p, ev.ServerAccepted) and await user_deleted(hub, p.user):
        # requested just before the deletion, placed after it had stopped the rest
        log.warning("stopping %s/%s: its user was deleted", p.user, p.server)
        await stop_all(hub, p.user, hub.actor)


async def _ready(hub: Hub, item: StoredEvent, p: ev.ServerStarted) -> None:
    url = server_prefix(p.user, p.server)
    try:
        await hub.emit(item.event.subject, ev.ServerReady(
            user=p.user, server=p.server, site=p.site, spawn_id=p.spawn_id, url=url,
            target=p.target, progress=100, message=f"Server ready at {url}"),
            expected_seq=item.seq, event_id=derived_id(item.event.id, "ready"))
    except Conflict:
        return  # the server moved on (stop requested) or another coordinator did it


async def _route(hub: Hub, item: StoredEvent, p: ev.ServerReady) -> None:
    latest = await hub.store.last(item.event.subject)
    if latest is None or latest.seq != item.seq:
        return  # no longer ready: do not route to it
    subject = subjects.route(p.user, p.server)
    route = await hub.store.last(subject)
    if route is not None and route.event.type == ev.RouteAdded.TYPE \
            and route.event.data.get("target") == p.target:
        return
    try:
        await hub.emit(subject, ev.RouteAdded(
            prefix=p.url, target=p.target, user=p.user, server=p.server, site=p.site),
            expected_seq=route.seq if route else 0, event_id=derived_id(item.event.id, "route"))
    except Conflict:
        return
