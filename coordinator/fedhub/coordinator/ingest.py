"""Turning what sites report into the canonical record, after checking it.

A site writes only under ``fedhub.site.<site>.>`` (its NATS credential allows nothing
else). A report is accepted when it is signed by a key a coordinator enrolled for that
very site, names that site, and fits the spawn the coordinator accepted there; it is then
appended to the server's canonical subject. Forgeries are refused and reported as
``SiteEventRejected``; stale reports (a race with a newer spawn) are only logged.
"""

from __future__ import annotations

import logging

from fedhub.coordinator.context import Hub
from fedhub.coordinator.errors import Conflict
from fedhub.events.envelope import derived_id
from fedhub.events.errors import EventLogError, InvalidSignature
from fedhub.events.store import StoredEvent
from fedhub.schemas import events as ev
from fedhub.schemas import subjects
from fedhub.schemas.names import InvalidName, from_subject_token, server_key, subject_token

log = logging.getLogger(__name__)
SITE_ROLE = frozenset({"site-agent"})
REPORTS = (ev.ServerSubmitted, ev.ServerQueued, ev.ServerStarted, ev.ServerStopped,
           ev.ServerFailed)
# What a report may follow on the canonical subject.
_AFTER: dict[str, frozenset[str]] = {
    "ServerSubmitted": frozenset({"ServerAccepted"}),
    "ServerQueued": frozenset({"ServerSubmitted", "ServerQueued"}),
    "ServerStarted": frozenset({"ServerAccepted", "ServerSubmitted", "ServerQueued"}),
    "ServerStopped": frozenset({"ServerAccepted", "ServerSubmitted", "ServerQueued",
                                "ServerStarted", "ServerReady", "ServerStopRequested"}),
    "ServerFailed": frozenset({"ServerAccepted", "ServerSubmitted", "ServerQueued",
                               "ServerStarted", "ServerReady", "ServerStopRequested"}),
}


class Rejected(Exception):
    """A report that must not be trusted; the message says why."""


async def ingest(hub: Hub, item: StoredEvent) -> None:
    """Check one site-written event and record what it establishes (idempotent)."""
    env = item.event
    parts = env.subject.split(".")
    try:
        site = from_subject_token(parts[2])
    except (InvalidName, IndexError):
        log.warning("ignoring site event on malformed subject %s", env.subject)
        return
    try:
        payload = _verified(hub, item, site)
        if isinstance(payload, ev.SiteAgentStarted):
            await hub.emit(subjects.site(site), payload, actor=f"site:{site}",
                           event_id=derived_id(env.id, "canonical"))
        elif isinstance(payload, REPORTS):
            await _record(hub, item, site, payload)
    except Rejected as exc:
        log.warning("rejected %s from site %s (seq %d): %s", env.type, site, item.seq, exc)
        await hub.emit(subjects.security(site), ev.SiteEventRejected(
            site=site, subject=env.subject, seq=item.seq, event_type=env.type,
            reason=str(exc)), event_id=derived_id(env.id, "rejected"))


def _verified(hub: Hub, item: StoredEvent, site: str) -> ev.Payload:
    env = item.event
    try:
        key = env.verify(hub.keyring, SITE_ROLE)
    except InvalidSignature as exc:
        raise Rejected(f"signature: {exc}") from exc
    if key.name != site:
        raise Rejected(f"signed by the key of site {key.name!r}, published under site {site!r}")
    try:
        payload = env.payload()
    except EventLogError as exc:
        raise Rejected(f"malformed: {exc}") from exc
    claimed = getattr(payload, "site", site)
    if claimed != site:
        raise Rejected(f"claims site {claimed!r} but was published under site {site!r}")
    if isinstance(payload, ev.ServerEvent):
        expected = subjects.site_server(site, payload.user, payload.server)
        if env.subject != expected:
            raise Rejected(f"about {server_key(payload.user, payload.server)} but published "
                           f"on {env.subject}")
    if isinstance(payload, ev.ServerStarted):
        _check_target(site, payload)
    return payload


def _check_target(site: str, started: ev.ServerStarted) -> None:
    """A site may route only into its own tunnel, to the server it reports about."""
    scheme, _, rest = started.target.partition("://")
    if scheme == "tunnel":
        own = f"{subject_token(site)}/{server_key(started.user, started.server)}"
        if rest != own:
            raise Rejected(f"target {started.target!r} is not this site's tunnel to this server")
    elif scheme not in ("http", "https") or not rest:
        raise Rejected(f"target {started.target[:80]!r} is not an http(s) or tunnel URL")


async def _record(hub: Hub, item: StoredEvent, site: str, report: ev.ServerEvent) -> None:
    subject = subjects.server(report.user, report.server)
    for _attempt in range(3):
        latest = await hub.store.last(subject)
        if latest is None:
            log.info("ignoring %s for unknown server %s", report.TYPE, subject)
            return
        data = latest.event.data
        if data.get("spawn_id") != getattr(report, "spawn_id", None):
            log.info("ignoring stale %s for %s (spawn %s, current %s)", report.TYPE, subject,
                     getattr(report, "spawn_id", ""), data.get("spawn_id"))
            return
        if data.get("site") not in (site, "auto") and latest.event.type != "ServerRequested":
            raise Rejected(f"spawn {data.get('spawn_id')} runs at site {data.get('site')!r}")
        repeated = latest.event.type == report.TYPE and report.TYPE != "ServerQueued"
        if repeated or latest.event.type not in _AFTER[report.TYPE]:
            return  # already recorded, or overtaken (e.g. started after a stop request)
        try:
            await hub.emit(subject, report, actor=f"site:{site}", expected_seq=latest.seq,
                           event_id=derived_id(item.event.id, "canonical"))
            return
        except Conflict:
            continue
