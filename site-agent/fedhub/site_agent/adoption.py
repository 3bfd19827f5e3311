"""Finding, in the log, the servers a restarted agent must take care of again."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from fedhub.events.errors import EventLogError
from fedhub.events.store import EventStore
from fedhub.schemas import subjects
from fedhub.schemas.events import (
    ServerEvent,
    ServerStarted,
    ServerSubmitted,
)
from fedhub.schemas.names import server_prefix
from fedhub.site_agent.backends.base import ServerSpec

log = logging.getLogger(__name__)

# Latest report types that mean "this site may still run a job for this server"; a stop
# requested meanwhile arrives as a StopServer command from the agent's durable consumer.
ADOPTABLE = frozenset({"ServerSubmitted", "ServerStarted"})


@dataclass
class Orphan:
    """A server whose latest event says it may be running at this site."""

    spec: ServerSpec
    latest_type: str
    latest_id: str
    state: dict[str, Any] = field(default_factory=dict)
    job_id: str = ""
    target: str = ""

    @property
    def started(self) -> bool:
        """True if the server had passed its readiness check (ServerStarted was seen)."""
        return bool(self.target)


async def find_orphans(store: EventStore, site: str) -> list[Orphan]:
    """The servers whose latest report by ``site`` is submitted or started, with the job
    state from their last Submitted/Started report (the site's own subjects only)."""
    found: list[Orphan] = []
    reports = subjects.site_server(site, "x", "").rsplit(".", 2)[0]
    for item in await store.latest_per_subject(f"{reports}.>"):
        env = item.event
        if env.type not in ADOPTABLE:
            continue
        try:
            latest = env.payload()
        except EventLogError as exc:
            log.warning("cannot re-adopt from %s: %s", env.subject, exc)
            continue
        if not isinstance(latest, ServerEvent) or getattr(latest, "site", None) != site:
            continue
        spawn_id = str(getattr(latest, "spawn_id", ""))
        orphan = Orphan(ServerSpec(latest.user, latest.server, spawn_id,
                                   server_prefix(latest.user, latest.server)), env.type, env.id)
        async for old in store.read(env.subject):
            if old.event.type not in ("ServerSubmitted", "ServerStarted"):
                continue
            try:
                past = old.event.payload()
            except EventLogError:
                continue
            if isinstance(past, ServerSubmitted | ServerStarted) and past.spawn_id == spawn_id:
                orphan.state = dict(past.state)
                orphan.job_id = getattr(past, "job_id", orphan.job_id)
                if isinstance(past, ServerStarted):
                    orphan.target = past.target
        prefix = orphan.state.get("prefix")
        if isinstance(prefix, str) and prefix:
            orphan.spec = replace(orphan.spec, prefix=prefix)
        found.append(orphan)
    return found
