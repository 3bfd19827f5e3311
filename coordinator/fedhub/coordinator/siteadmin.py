"""Enrolling, draining and removing sites (operator actions, recorded in the log)."""

from __future__ import annotations

import logging

from fedhub.coordinator.context import Hub
from fedhub.coordinator.db import Server, Site
from fedhub.coordinator.errors import BadRequest, Conflict, NotFound
from fedhub.coordinator.servers import remove_route
from fedhub.events.envelope import derived_id
from fedhub.events.errors import InvalidSignature
from fedhub.events.signing import KeyRing, b64d, key_id
from fedhub.schemas import events as ev
from fedhub.schemas import subjects
from fedhub.schemas.names import InvalidName, normalize_user_name

log = logging.getLogger(__name__)
BACKENDS = frozenset({"local", "slurm", "docker", "ssh", "htcondor"})


def valid_site_name(raw: str) -> str:
    try:
        name = normalize_user_name(raw)
    except InvalidName as exc:
        raise BadRequest(f"invalid site name {raw[:80]!r}: {exc}") from exc
    if name == "auto":
        raise BadRequest("'auto' is reserved for automatic placement")
    return name


async def enroll_site(hub: Hub, raw: str, *, backend: str, public_key: str, weight: int,
                      description: str, actor: str) -> None:
    """Register a site and enroll its agent's public key; raises Conflict if it exists."""
    name = valid_site_name(raw)
    if backend not in BACKENDS:
        known = ", ".join(sorted(BACKENDS))
        raise BadRequest(f"unknown backend {backend!r}; choose one of {known}")
    if weight < 0:
        raise BadRequest("weight must be 0 (drained) or more")
    try:
        kid = key_id(b64d(public_key))
        KeyRing().add(kid, public_key, "site-agent", name)
    except (ValueError, InvalidSignature) as exc:
        raise BadRequest(f"public_key is not an Ed25519 public key: {exc}") from exc
    with hub.sessions() as db:
        if db.get(Site, name) is not None:
            raise Conflict(f"site {name} is already enrolled; remove it first to re-enroll")
    # A consumer of this name is either another site's squatting (a site may create
    # consumers of any name not yet a site's) or what a removed site of the same name left
    # behind: either way not this site's. Its agent creates its own on first use.
    if await hub.store.delete_consumer(subjects.command_consumer(name)):
        log.warning("removed a leftover consumer %s before enrolling site %s",
                    subjects.command_consumer(name), name)
    last = await hub.store.last(subjects.site(name))
    await hub.emit(subjects.site(name), ev.SiteRegistered(
        name=name, backend=backend, description=description[:512], weight=weight),
        actor=actor, expected_seq=last.seq if last else 0)
    await hub.emit(subjects.key(kid), ev.KeyPublished(
        kid=kid, public_key=public_key, role="site-agent", name=name), actor=actor, wait=True)


async def update_site(hub: Hub, raw: str, *, weight: int | None, description: str | None,
                      actor: str) -> None:
    """Change a site's weight (0 drains it) or description."""
    name = valid_site_name(raw)
    with hub.sessions() as db:
        site = db.get(Site, name)
        if site is None:
            raise NotFound(f"no such site: {name}")
        new_weight = site.weight if weight is None else weight
        new_description = site.description if description is None else description[:512]
    if new_weight < 0:
        raise BadRequest("weight must be 0 (drained) or more")
    await hub.emit(subjects.site(name), ev.SiteUpdated(
        name=name, weight=new_weight, description=new_description), actor=actor, wait=True)


async def remove_site(hub: Hub, raw: str, *, actor: str) -> int:
    """Remove a site: its keys are revoked and its servers marked lost. Returns how many
    servers were running there."""
    name = valid_site_name(raw)
    with hub.sessions() as db:
        if db.get(Site, name) is None:
            raise NotFound(f"no such site: {name}")
        active = [(s.user, s.name, s.spawn_id) for s in db.query(Server)
                  .filter(Server.site == name, Server.status.notin_(["stopped", "failed"]))]
    last = await hub.store.last(subjects.site(name))
    removal = await hub.emit(subjects.site(name), ev.SiteRemoved(name=name), actor=actor,
                             expected_seq=last.seq if last else None)
    for key in hub.keyring.named("site-agent", name):
        await hub.emit(subjects.key(key.kid), ev.KeyRevoked(
            kid=key.kid, reason=f"site {name} removed"), actor=actor)
    for user, server, spawn_id in active:
        await mark_lost(hub, user, server, name, spawn_id, f"site {name} was removed",
                        parent=f"{removal}")
    await hub.projection.wait_for(await hub.store.last_seq())
    return len(active)


async def mark_lost(hub: Hub, user: str, server: str, site: str, spawn_id: str, reason: str,
                    parent: str) -> None:
    """End a server the hub can no longer reach (idempotent)."""
    subject = subjects.server(user, server)
    last = await hub.store.last(subject)
    if last is None or last.event.data.get("spawn_id") != spawn_id:
        return
    if last.event.type in ("ServerStopped", "ServerFailed"):
        return
    try:
        await hub.emit(subject, ev.ServerFailed(
            user=user, server=server, site=site, spawn_id=spawn_id, progress=100,
            reason=f"lost: {reason}", message=f"Server lost: {reason}"),
            expected_seq=last.seq, event_id=derived_id(f"{parent}:{spawn_id}", "lost"))
    except Conflict:
        return
    await remove_route(hub, user, server, f"lost: {reason}", parent=spawn_id)
