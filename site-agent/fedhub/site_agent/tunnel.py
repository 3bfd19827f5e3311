"""The agent's tunnels to every edge proxy, as announced in the log.

Edge proxies announce their tunnel endpoint in ``EdgeProxyStarted`` on
``fedhub.proxy.<name>``, signed with their key; their ``KeyPublished`` (self-signed, trusted
by ``fedhub.events.enroll``) gives the host key to pin. The manager follows the
announcements and hears of key changes from the agent's :class:`KeyBook`, keeps one
:class:`ProxyLink` per trusted announcement (the latest per proxy name), and drops a link
whose proxy key was revoked. A server of a tunnelled site gets
the route target ``tunnel://<site-token>/<user-token>.<server-token>`` while its
readiness checks and forwards go to the local address its backend reported; that local
address is kept in the ServerStarted state (``tunnel_local_target``) so a restarted agent
forwards its re-adopted servers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from contextlib import aclosing
from typing import Any
from urllib.parse import urlsplit

from fedhub.events.errors import EventLogError
from fedhub.events.signing import SigningKey
from fedhub.events.sshkeys import ssh_private_key, ssh_public_key
from fedhub.events.store import EventStore, StoredEvent
from fedhub.schemas import subjects
from fedhub.schemas.events import EdgeProxyStarted
from fedhub.schemas.names import subject_token
from fedhub.site_agent.keys import KeyBook
from fedhub.site_agent.tunnel_link import Destination, Endpoint, ProxyLink

log = logging.getLogger(__name__)
LOCAL_TARGET = "tunnel_local_target"
PROXY_ROLE = "edge-proxy"
KEEP_ANNOUNCEMENTS = 8


def tunnel_target(site: str, server_key: str) -> str:
    """The route target of a tunnelled server: ``tunnel://<site-token>/<server-key>``."""
    return f"tunnel://{subject_token(site)}/{server_key}"


def local_destination(target: str) -> Destination:
    """Host and port of a local ``http://host:port`` target; ValueError otherwise."""
    parts = urlsplit(target)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"cannot tunnel to {target!r}: not an http://host:port URL")
    return parts.hostname, parts.port or 80


class TunnelManager:
    """One tunnel per trusted edge proxy, each forwarding every running server."""

    def __init__(self, site: str, key: SigningKey, store: EventStore, keys: KeyBook,
                 keepalive: float = 15.0) -> None:
        """``keys``: the agent's key book (its owner follows the log's key events)."""
        self.site = site
        self.store = store
        self.keys = keys
        keys.on_change(self._reconcile)
        self.servers: dict[str, Destination] = {}
        self.links: dict[str, ProxyLink] = {}
        self._client_key = ssh_private_key(key)
        self._keepalive = keepalive
        # proxy name -> its latest announcements, newest last: the newest one that verifies
        # wins, so a forged or not yet verifiable announcement never hides a good one.
        self._announced: dict[str, list[StoredEvent]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    # -- the log ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow proxy announcements forever (safe to restart after a failure).

        The announcements already in the log are read before any link is dialled: after a
        proxy restarted on another port, dialling each old endpoint in turn only filled the
        log with refused connections.
        """
        history = await self.store.latest_per_subject("fedhub.proxy.>")
        history_end = max((item.seq for item in history), default=0)
        async with aclosing(self.store.follow("fedhub.proxy.>")) as events:
            async for item in events:
                if item.seq >= history_end:  # even when this last one is ignored
                    self.announced(item)
                else:
                    self._remember(item)

    def announced(self, item: StoredEvent) -> None:
        """One announcement from the log: remember it, then open, move or close links."""
        self._remember(item)
        self._reconcile()

    def _remember(self, item: StoredEvent) -> None:
        try:
            started = item.event.payload_as(EdgeProxyStarted)
        except EventLogError as exc:
            log.warning("ignoring %s on %s: %s", item.event.type, item.event.subject, exc)
            return
        if item.event.subject != subjects.proxy(started.name):
            log.warning("ignoring an announcement of %s on %s", started.name,
                        item.event.subject)
            return
        if self._verified(item) is None:
            log.info("edge proxy %s's announcement (seq %d) is not verifiable (yet)",
                     started.name, item.seq)
        recent = self._announced.setdefault(started.name, [])
        recent.append(item)
        del recent[:-KEEP_ANNOUNCEMENTS]

    def _verified(self, item: StoredEvent) -> EdgeProxyStarted | None:
        """The announcement if the proxy it names signed it with its trusted key."""
        env = item.event
        started = env.payload_as(EdgeProxyStarted)
        try:
            signer = env.verify(self.keys.ring, frozenset({PROXY_ROLE}))
        except EventLogError:
            return None  # its key is unknown (yet), revoked, or it is forged
        if signer.kid != started.kid or signer.name != started.name:
            log.debug("announcement of proxy %s signed by %s (%s)", started.name, signer.name,
                      signer.kid)
            return None
        return started

    def _endpoint(self, item: StoredEvent) -> Endpoint | None:
        """Where a verified announcement says to dial, or None (tunnels disabled)."""
        started = item.event.payload_as(EdgeProxyStarted)
        if not started.tunnel_host or started.tunnel_port <= 0:
            return None
        public = self.keys.ring.as_dict()[started.kid]["public_key"]
        return Endpoint(started.name, started.kid, started.tunnel_host, started.tunnel_port,
                        ssh_public_key(public))

    def _reconcile(self) -> None:
        wanted: dict[str, Endpoint] = {}
        for name, items in self._announced.items():
            for item in reversed(items):
                if self._verified(item) is not None:
                    if (ep := self._endpoint(item)) is not None:
                        wanted[name] = ep
                    break
        for name, link in list(self.links.items()):
            ep = wanted.get(name)
            if ep is None or not ep.same_as(link.endpoint):
                log.info("closing the tunnel to edge proxy %s (%s)", name,
                         "moved" if ep is not None else "no longer trusted or announced")
                del self.links[name]
                closing = asyncio.ensure_future(link.close())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
        for name, ep in wanted.items():
            if name not in self.links:
                link = ProxyLink(self.site, self._client_key, ep, self.servers, self._keepalive)
                self.links[name] = link
                link.start()

    # -- servers ---------------------------------------------------------------------------

    async def add_server(self, key: str, local_target: str, state: Mapping[str, Any],
                         wait: float = 5.0) -> tuple[str, dict[str, Any]]:
        """Forward ``key`` to ``local_target`` through every tunnel.

        Waits up to ``wait`` seconds for the connected proxies to accept the forward (so
        the route works once published); returns the target and state to publish in
        ServerStarted. Raises ValueError if the target cannot be tunnelled.
        """
        self.servers[key] = local_destination(local_target)
        self._changed()
        deadline = time.monotonic() + wait
        while not all(link.in_sync(key) for link in self.links.values()):
            if time.monotonic() >= deadline:
                log.warning("not every edge proxy accepted the forward of %s in time", key)
                break
            await asyncio.sleep(0.02)
        return tunnel_target(self.site, key), {**state, LOCAL_TARGET: local_target}

    def adopt_server(self, key: str, target: str, state: Mapping[str, Any]) -> None:
        """Forward a re-adopted running server again (its local address from ``state``)."""
        local = state.get(LOCAL_TARGET, target)
        try:
            self.servers[key] = local_destination(str(local))
        except ValueError as exc:
            log.warning("cannot tunnel re-adopted %s: %s", key, exc)
            return
        self._changed()

    def remove_server(self, key: str) -> None:
        """Stop forwarding ``key`` (the server ended). Idempotent."""
        if self.servers.pop(key, None) is not None:
            self._changed()

    def _changed(self) -> None:
        for link in self.links.values():
            link.changed()

    async def close(self) -> None:
        """Close every tunnel (idempotent)."""
        links, self.links = list(self.links.values()), {}
        await asyncio.gather(*(link.close() for link in links), *self._closing,
                             return_exceptions=True)
