"""Sites as the coordinator sees them: registration from the log, health from heartbeats."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from fedhub.coordinator.context import Hub
from fedhub.coordinator.db import Site, rows
from fedhub.coordinator.errors import BadRequest
from fedhub.events.errors import StoreUnavailable
from fedhub.schemas import subjects
from fedhub.schemas.resources import InvalidOptions, OptionSpec, specs_from_json, validate_options

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteView:
    name: str
    backend: str
    description: str
    weight: int
    status: str  # "online" | "offline" | "unknown"
    last_seen: datetime | None
    servers: int = 0
    capacity: dict[str, Any] = field(default_factory=dict)
    options: list[OptionSpec] = field(default_factory=list)

    def model(self) -> dict[str, Any]:
        return {
            "name": self.name, "backend": self.backend, "description": self.description,
            "weight": self.weight, "status": self.status, "servers": self.servers,
            "capacity": self.capacity,
            "options": [o.model_dump(mode="json") for o in self.options],
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
        }


Beats = dict[str, tuple[bytes, datetime]]


async def heartbeats(hub: Hub) -> Beats:
    """The latest heartbeat of every site. One read in flight per coordinator: requests
    arriving meanwhile share its answer (a burst of spawns would otherwise open a
    consumer of the health stream each)."""
    read = hub.heartbeat_read
    if read is None:
        read = asyncio.ensure_future(hub.store.latest_health(f"{subjects.HEALTH_ROOT}.site.>"))
        hub.heartbeat_read = read  # set only while None, cleared only here: no check needed
        read.add_done_callback(lambda done: _read_over(hub, done))
    return await asyncio.shield(read)


def _read_over(hub: Hub, read: asyncio.Future[Beats]) -> None:
    hub.heartbeat_read = None
    if not read.cancelled():
        read.exception()  # taken by whoever waits; if all gave up (shutdown), not an error


_SITES = select(*Site.__table__.columns).order_by(Site.name)


async def list_sites(hub: Hub) -> list[SiteView]:
    """Every registered site with its health from the latest heartbeat."""
    try:
        beats = await heartbeats(hub)
    except StoreUnavailable as exc:
        log.warning("cannot read site health: %s", exc)
        beats = {}
    now = datetime.now(UTC)
    out = []
    for row in rows(hub.engine, _SITES):
        beat = beats.get(subjects.health(row.name))
        status, seen, servers, capacity = "unknown", None, 0, {}
        if beat is not None:
            seen = beat[1]
            age = (now - seen).total_seconds()
            status = "online" if age <= hub.settings.site_offline_after else "offline"
            try:
                data = json.loads(beat[0])
                servers, capacity = int(data.get("servers", 0)), dict(data.get("capacity", {}))
            except (ValueError, TypeError, AttributeError):
                log.warning("malformed heartbeat from site %s", row.name)
        try:
            specs = specs_from_json(row.options or [])
        except InvalidOptions as exc:
            log.warning("site %s declares unusable options: %s", row.name, exc)
            specs = []
        out.append(SiteView(row.name, row.backend, row.description, row.weight, status,
                            seen, servers, capacity, specs))
    return out


async def choose_site(hub: Hub, requested: str | None,
                      options: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """The site to use, why, and the options normalized for it; raises BadRequest for
    unknown, offline or drained sites and for options the site does not offer."""
    sites = await list_sites(hub)
    name, reason = _pick(sites, requested)
    view = next(s for s in sites if s.name == name)
    try:
        return name, reason, validate_options(view.options, options)
    except InvalidOptions as exc:
        raise BadRequest(f"invalid options for site {name}: {exc}") from exc


def problem(view: SiteView) -> str:
    """What the site's agent says keeps it from starting servers now (e.g. its scheduler
    does not answer); "" when nothing does."""
    found = view.capacity.get("problem") if view.status == "online" else None
    return str(found) if found else ""


def free_cpus(view: SiteView) -> float:
    """Free cores as the site reports them (``free_cpus``, else ``cpus - load1``)."""
    cap = view.capacity
    try:
        if "free_cpus" in cap:
            return max(float(cap["free_cpus"]), 0.0)
        return max(float(cap.get("cpus", 0)) - float(cap.get("load1", 0)), 0.0)
    except (TypeError, ValueError):
        return 0.0


def place(sites: list[SiteView]) -> tuple[str, str]:
    """``site=auto``: among online, undrained sites, the highest operator weight, then the
    most free cores, then the fewest servers. Returns (site, the reason, for the log)."""
    usable = [s for s in sites if s.status == "online" and s.weight > 0 and not problem(s)]
    if not usable:
        held = [f"{s.name} {problem(s) or 'drained'}" for s in sites if s.status == "online"]
        why = f" ({'; '.join(held)})" if held else ""
        raise BadRequest(f"no site is online and accepting servers{why}")
    best = max(usable, key=lambda s: (s.weight, free_cpus(s), -s.servers))
    others = ", ".join(f"{s.name}: weight {s.weight}, {free_cpus(s):g} free cores"
                       for s in usable if s is not best)
    reason = (f"auto: weight {best.weight}, {free_cpus(best):g} free cores, "
              f"{best.servers} servers" + (f"; beat {others}" if others else ""))
    skipped = [f"{s.name} ({'drained' if s.weight <= 0 else problem(s) or s.status})"
               for s in sites if s not in usable]
    if skipped:
        reason += f"; not eligible: {', '.join(skipped)}"
    return best.name, reason


def _pick(sites: list[SiteView], requested: str | None) -> tuple[str, str]:
    if not sites:
        raise BadRequest("no sites are registered")
    if requested in (None, "", "auto"):
        return place(sites)
    match = next((s for s in sites if s.name == requested), None)
    if match is None:
        known = ", ".join(s.name for s in sites)
        raise BadRequest(f"unknown site {requested!r}; known sites: {known}")
    if match.status != "online":
        raise BadRequest(f"site {match.name} is {match.status}: its agent has not reported in")
    if match.weight <= 0:
        raise BadRequest(f"site {match.name} is drained and takes no new servers")
    return match.name, "chosen by the user"
