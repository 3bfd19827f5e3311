"""Watching sites' heartbeats and recording health episodes in the log.

A site whose agent stops reporting becomes *unreachable* (``SiteUnreachable``): its
servers are shown as such, never declared stopped, because a silent site is not proof
that anything ended. When it reports again, ``SiteReachable`` closes the episode. Only a
site that stays away longer than ``site_lost_after`` has its servers marked lost, with
that reason. Every append expects the site subject's last sequence, so with several
coordinators exactly one records each transition.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from fedhub.coordinator.context import Hub
from fedhub.coordinator.db import Server, Site, aware
from fedhub.coordinator.errors import Conflict, CoordinatorError
from fedhub.coordinator.siteadmin import mark_lost
from fedhub.coordinator.sites import SiteView, list_sites
from fedhub.events.errors import EventLogError
from fedhub.schemas import events as ev
from fedhub.schemas import subjects

log = logging.getLogger(__name__)


async def watch(hub: Hub) -> None:
    """Check every site each ``health_interval`` seconds, forever."""
    while True:
        try:
            await check(hub)
        except (CoordinatorError, EventLogError) as exc:
            log.warning("site health check failed: %s", exc)
        await asyncio.sleep(hub.settings.health_interval)


async def check(hub: Hub, now: datetime | None = None) -> None:
    """Record the health transitions visible now (idempotent)."""
    now = now or datetime.now(UTC)
    with hub.sessions() as db:
        since = {s.name: s.unreachable_since for s in db.query(Site)}
    for view in await list_sites(hub):
        away_since = since.get(view.name)
        if view.status == "offline" and away_since is None:
            await _transition(hub, view, ev.SiteUnreachable(site=view.name,
                                                            last_seen=view.last_seen))
        elif view.status == "online" and away_since is not None:
            away = (now - aware(away_since)).total_seconds()
            await _transition(hub, view, ev.SiteReachable(site=view.name, away_seconds=away))
        elif away_since is not None:
            away = (now - aware(away_since)).total_seconds()
            if away > hub.settings.site_lost_after:
                await _lose_servers(hub, view, away)


async def _transition(hub: Hub, view: SiteView, payload: ev.Payload) -> None:
    subject = subjects.site(view.name)
    last = await hub.store.last(subject)
    if last is not None and last.event.type == payload.TYPE:
        return
    try:
        await hub.emit(subject, payload, expected_seq=last.seq if last else 0, wait=True)
        log.info("site %s: %s", view.name, payload.TYPE)
    except Conflict:
        pass  # another coordinator recorded it (or something else happened): look again


async def _lose_servers(hub: Hub, view: SiteView, away: float) -> None:
    with hub.sessions() as db:
        active = [(s.user, s.name, s.spawn_id) for s in db.query(Server).filter(
            Server.site == view.name, Server.status.notin_(["stopped", "failed"]))]
    episode = await hub.store.last(subjects.site(view.name))
    parent = episode.event.id if episode else view.name
    reason = (f"site {view.name} has been unreachable for {int(away)} s "
              f"(more than {int(hub.settings.site_lost_after)} s)")
    for user, server, spawn_id in active:
        await mark_lost(hub, user, server, view.name, spawn_id, reason, parent=parent)
