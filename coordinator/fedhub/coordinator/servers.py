"""Starting and stopping servers, and their models. Decisions are made on the latest
event of the server's subject and appended with that sequence expected, so two
coordinators can never both start (or both stop) the same server."""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import select

from fedhub.coordinator.context import Hub
from fedhub.coordinator.db import Server, Site, detached, rows
from fedhub.coordinator.errors import BadRequest, Conflict, CoordinatorError, NotFound
from fedhub.coordinator.sites import choose_site
from fedhub.coordinator.users import get_user, iso
from fedhub.events.envelope import derived_id, uuid7
from fedhub.events.errors import EventLogError
from fedhub.events.store import StoredEvent
from fedhub.schemas import events as ev
from fedhub.schemas import subjects
from fedhub.schemas.names import InvalidName, server_prefix, validate_server_name

log = logging.getLogger(__name__)
MAX_OPTIONS_BYTES = 16 * 1024


def valid_server(raw: str) -> str:
    try:
        return validate_server_name(raw)
    except InvalidName as exc:
        raise BadRequest(f"invalid server name {raw[:80]!r}: {exc}") from exc


def status_of(item: StoredEvent | None) -> ev.ServerStatus:
    if item is None:
        return ev.ServerStatus.STOPPED
    cls = ev.SERVER_EVENTS.get(item.event.type)
    return cls.STATUS if cls else ev.ServerStatus.STOPPED


def label(user: str, server: str) -> str:
    """A server as messages name it: "alice's server" or "alice's server 'gpu'"."""
    return f"{user}'s server" + (f" {server!r}" if server else "")


def _busy(user: str, server: str, status: ev.ServerStatus) -> str:
    """Why a server cannot be started now, and what to do instead."""
    if status is ev.ServerStatus.READY:
        return (f"{label(user, server)} is already running at {server_prefix(user, server)}; "
                "stop it first to start it again")
    if status is ev.ServerStatus.STOPPING:
        return f"{label(user, server)} is still stopping; start it again once it has stopped"
    step = "its server is up, not yet answering" if status is ev.ServerStatus.RUNNING \
        else status.value
    return f"{label(user, server)} is already starting ({step}); follow its progress, or stop it"


async def start(hub: Hub, user: str, server: str, site: str | None,
                options: dict[str, Any], actor: str) -> int:
    """Request a server; returns the sequence of the request. Raises BadRequest if it is
    already running or pending, or for an unknown user, site or invalid options."""
    user = get_user(hub, user).name
    server = valid_server(server)
    if len(json.dumps(options)) > MAX_OPTIONS_BYTES:
        raise BadRequest(f"user_options larger than {MAX_OPTIONS_BYTES} bytes")
    subject = subjects.server(user, server)
    last = await hub.store.last(subject)
    if status_of(last).active:
        raise BadRequest(_busy(user, server, status_of(last)))
    chosen, reason, options = await choose_site(hub, site, options)
    spawn_id = uuid7()
    try:
        seq = await hub.emit(subject, ev.ServerRequested(
            user=user, server=server, site=site or "auto", options=options, spawn_id=spawn_id,
            progress=0, message="Server requested"), actor=actor,
            expected_seq=last.seq if last else 0)
    except Conflict as exc:
        raise BadRequest(_busy(user, server, ev.ServerStatus.REQUESTED)) from exc
    seq = await hub.emit(subject, ev.ServerAccepted(
        user=user, server=server, site=chosen, spawn_id=spawn_id, reason=reason, progress=10,
        message=f"Placed at site {chosen}"), expected_seq=seq)
    await hub.emit(subjects.command(chosen, "start"), ev.StartServer(
        user=user, server=server, spawn_id=spawn_id, prefix=server_prefix(user, server),
        options=options), event_id=derived_id(spawn_id, "start-command"))
    return seq


async def stop(hub: Hub, user: str, server: str, actor: str) -> bool:
    """Ask the site to stop a server. Returns False if it was not running (nothing to do).
    The route is removed at once so no request reaches a server being stopped."""
    return await _stop(hub, get_user(hub, user).name, valid_server(server), actor)


async def stop_all(hub: Hub, user: str, actor: str) -> None:
    """Stop every server of ``user`` that is on its way or running, as the log (not the
    tables, which may lag) has them: a deleted user's servers must not run on. Tries
    each one; then raises the first failure, if any."""
    failures: list[CoordinatorError | EventLogError] = []
    for item in await hub.store.latest_per_subject(subjects.servers_of(user)):
        server = item.event.data.get("server")
        if status_of(item).active and isinstance(server, str):
            try:
                await _stop(hub, user, server, actor)
            except (CoordinatorError, EventLogError) as exc:
                log.warning("cannot stop %s/%s yet: %s", user, server, exc)
                failures.append(exc)
    if failures:
        raise failures[0]


async def user_deleted(hub: Hub, user: str) -> bool:
    """True if the log's latest word on ``user`` is its deletion."""
    last = await hub.store.last(subjects.user(user))
    return last is not None and last.event.type == ev.UserDeleted.TYPE


async def _stop(hub: Hub, user: str, server: str, actor: str) -> bool:
    subject = subjects.server(user, server)
    for _attempt in range(3):
        last = await hub.store.last(subject)
        status = status_of(last)
        if last is None or not status.active:
            return False
        p = last.event.payload()
        site, spawn_id = getattr(p, "site", ""), getattr(p, "spawn_id", "")
        if status is ev.ServerStatus.REQUESTED or (
                status is ev.ServerStatus.STOPPING and site == "auto"):
            # No site was told to start it (placement comes with ServerAccepted, then the
            # command), so none will answer a stop: end it here.
            try:
                await hub.emit(subject, ev.ServerStopped(
                    user=user, server=server, site=site, spawn_id=spawn_id, progress=100,
                    reason="cancelled before a site was chosen", message="Server stopped"),
                    actor=actor, expected_seq=last.seq)
            except Conflict:
                continue  # placed meanwhile: decide again
            return True
        if status is ev.ServerStatus.STOPPING:
            return True
        try:
            await hub.emit(subject, ev.ServerStopRequested(
                user=user, server=server, site=site, spawn_id=spawn_id, requested_by=actor,
                progress=0, message="Stopping server"), actor=actor, expected_seq=last.seq)
        except Conflict:
            continue  # the agent moved it on meanwhile: decide again on the new state
        await remove_route(hub, user, server, "server stopping", parent=spawn_id)
        await hub.emit(subjects.command(site, "stop"), ev.StopServer(
            user=user, server=server, spawn_id=spawn_id, reason=f"requested by {actor}"),
            event_id=derived_id(spawn_id, "stop-command"))
        return True
    raise Conflict(f"{label(user, server)} keeps changing; try again")


async def remove_route(hub: Hub, user: str, server: str, reason: str, parent: str) -> None:
    """Append RouteRemoved if the route is currently present (idempotent)."""
    subject = subjects.route(user, server)
    last = await hub.store.last(subject)
    if last is None or last.event.type != ev.RouteAdded.TYPE:
        return
    try:
        await hub.emit(subject, ev.RouteRemoved(prefix=server_prefix(user, server), user=user,
                       server=server, reason=reason), expected_seq=last.seq,
                       event_id=derived_id(parent, "route-removed"))
    except Conflict:
        pass  # someone else changed the route first


def progress_message(item: StoredEvent, url: str) -> dict[str, Any] | None:
    """JupyterHub's progress event for one server event (None: not shown)."""
    try:
        p = item.event.payload()
    except EventLogError:
        return None
    if not isinstance(p, ev.ServerEvent):
        return None
    if isinstance(p, ev.ServerReady):
        return {"progress": 100, "ready": True, "message": f"Server ready at {url}",
                "html_message": f'Server ready at <a href="{url}">{url}</a>', "url": url}
    if isinstance(p, ev.ServerFailed):
        return {"progress": 100, "failed": True,
                "message": p.message or f"Spawn failed: {p.reason}"}
    if isinstance(p, ev.ServerStopped):
        return {"progress": 100, "failed": True,
                "message": f"Server stopped: {p.reason}" if p.reason else "Spawn cancelled"}
    if isinstance(p, ev.ServerStopRequested):
        return {"progress": 100, "failed": True, "message": "Spawn cancelled"}
    return {"progress": p.progress, "message": p.message}


_UNREACHABLE = select(Site.name).where(Site.unreachable_since.is_not(None))


def unreachable_sites(hub: Hub) -> set[str]:
    """Sites in an open unreachable episode (from the projection)."""
    return {row.name for row in rows(hub.engine, _UNREACHABLE)}


def server_model(hub: Hub, row: Server, unreachable: set[str] | None = None) -> dict[str, Any]:
    """JupyterHub's server model, plus fedhub's ``site``, ``status`` and ``site_status``
    ("unreachable" while its site is silent: the server is not assumed stopped)."""
    status = ev.ServerStatus(row.status)
    unreachable = unreachable_sites(hub) if unreachable is None else unreachable
    site_down = status.active and row.site in unreachable
    message = (f"site {row.site} is unreachable; the server is kept until it reports again"
               if site_down else row.message)
    prefix = server_prefix(row.user, row.name)
    base = f"/hub/api/users/{row.user}/" + (f"servers/{row.name}" if row.name else "server")
    pending = "spawn" if status.pending else "stop" if status is ev.ServerStatus.STOPPING else None
    return {
        "name": row.name, "full_name": f"{row.user}/{row.name}", "url": prefix,
        "full_url": hub.settings.public_url + prefix, "ready": status is ev.ServerStatus.READY,
        "pending": pending, "stopped": not status.active, "started": iso(row.started),
        "last_activity": iso(row.updated), "user_options": row.options,
        "progress_url": f"{base}/progress", "site": row.site, "status": row.status,
        "site_status": "unreachable" if site_down else "reachable", "message": message,
    }


def get_server(hub: Hub, user: str, server: str) -> Server:
    """The server's row, detached from any session: read it, never add it back. Raises
    NotFound if the user has no such server (in the projection)."""
    row = detached(hub.engine, Server, user=user, name=server)
    if row is None:
        raise NotFound(f"no server {server!r} for user {user}")
    return row
