"""Tunnels from site agents: the SSH endpoint, its announcement, and forwarding into it.

On start the proxy listens for SSH on ``tunnel_host:tunnel_port`` with its own Ed25519
signing key as host key, and announces ``EdgeProxyStarted`` (the advertised host, the bound
port, its key id) on ``fedhub.proxy.<name>``, signed by that key: agents learn from the
log where to dial and which host key to pin. Routes whose target is
``tunnel://<site>/<server-key>`` are forwarded through the site's current connection
(see tunnel_server.py for who may connect, tunnel_bridge.py for how aiohttp gets there).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import shutil
import tempfile
from pathlib import Path

import asyncssh

from fedhub.edge_proxy.errors import UpstreamUnreachable
from fedhub.edge_proxy.forward import Forwarder
from fedhub.edge_proxy.settings import EdgeProxySettings
from fedhub.edge_proxy.state import ProxyState
from fedhub.edge_proxy.tunnel_bridge import Bridge, socket_name, unreachable_message
from fedhub.edge_proxy.tunnel_server import AgentServer, Registry
from fedhub.edge_proxy.tunnel_target import format_target, parse_target
from fedhub.events.envelope import derived_id, new_event
from fedhub.events.signing import SigningKey
from fedhub.events.sshkeys import CIPHERS, ssh_private_key
from fedhub.events.store import EventStore
from fedhub.schemas import subjects
from fedhub.schemas.events import EdgeProxyStarted

log = logging.getLogger(__name__)
ROLE = "edge-proxy"
TUNNEL_BASE = "http://127.0.0.1"  # URL base for bridged requests (Host is the client's)


class TunnelUnavailable(UpstreamUnreachable):
    """The route's site has no live tunnel to this proxy, or no forward for the server."""


async def publish_started(store: EventStore, key: SigningKey, name: str, host: str,
                          port: int) -> None:
    """Announce this proxy's tunnel endpoint (idempotent per key, host and port).

    Raises StoreUnavailable if the log cannot be reached.
    """
    event = new_event(
        subjects.proxy(name),
        EdgeProxyStarted(name=name, kid=key.kid, tunnel_host=host, tunnel_port=port),
        actor=f"{ROLE}:{name}",
        signer=key,
        event_id=derived_id(key.kid, f"edge-proxy-started:{host}:{port}"),
    )
    await store.append(event)


class Tunnels:
    """The proxy's SSH endpoint for agents and the bridges into their forwards."""

    def __init__(self, settings: EdgeProxySettings, state: ProxyState, key: SigningKey) -> None:
        self.settings = settings
        self._state = state
        self._key = key
        self.registry = Registry(self._forward_gone)
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._dir: Path | None = None
        self._bridges: dict[tuple[str, str], asyncio.Task[Bridge]] = {}
        # Started bridges by target, for ``ready`` (no parsing, no task per request).
        self._ready: dict[str, Bridge] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._serial = itertools.count(1)  # a new bridge never reuses a closing one's path
        self.port = 0

    @property
    def enabled(self) -> bool:
        """False when ``tunnel_port`` is negative (no SSH endpoint at all)."""
        return self.settings.tunnel_port >= 0

    @property
    def advertised_host(self) -> str:
        """The host agents are told to dial."""
        return self.settings.tunnel_advertise_host or self.settings.tunnel_host

    async def start(self, store: EventStore) -> None:
        """Listen for agents and announce the endpoint (or announce none when disabled).

        Raises OSError if the port cannot be bound, StoreUnavailable if the log is down.
        """
        if not self.enabled:
            await publish_started(store, self._key, self.settings.name, "", 0)
            return
        self._dir = Path(tempfile.mkdtemp(prefix="fedhub-tunnels-"))  # mode 0700
        self._acceptor = await asyncssh.create_server(
            lambda: AgentServer(self.registry, self._state.keyring),
            self.settings.tunnel_host, self.settings.tunnel_port,
            server_host_keys=[ssh_private_key(self._key)],
            allow_pty=False, x11_forwarding=False, agent_forwarding=False,
            gss_host=None, login_timeout=30, encryption_algs=CIPHERS, compression_algs=None,
            keepalive_interval=self.settings.tunnel_keepalive, keepalive_count_max=3,
        )
        self.port = self._acceptor.get_port()
        await publish_started(store, self._key, self.settings.name, self.advertised_host,
                              self.port)
        log.info("tunnel endpoint on %s:%d (advertised as %s)", self.settings.tunnel_host,
                 self.port, self.advertised_host)

    async def stop(self) -> None:
        """Disconnect every agent, close the bridges (idempotent)."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        for link in list(self.registry.links.values()):
            self.registry.detach(link)
            link.conn.close()
        bridges, self._bridges = list(self._bridges.values()), {}
        self._ready.clear()
        for task in bridges:
            await _close_bridge(task)
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def revalidate(self) -> None:
        """Disconnect agents whose key was revoked (call after the key ring changed)."""
        if self.registry.links:
            self.registry.revalidate(self._state.keyring)

    def ready(self, target: str) -> Bridge | None:
        """The started bridge of a ``tunnel://`` target if its tunnel is live, at the cost
        of two dict lookups (every tunnelled request asks); None when there is no bridge
        yet or its tunnel is gone: ``bridge`` then starts one or raises. Never raises."""
        bridge = self._ready.get(target)
        if bridge is None:
            return None
        if bridge.closed:  # its forward went away: forget it (stop() clears the rest)
            del self._ready[target]
            return None
        if self.registry.lookup(bridge.site, bridge.key) is None:
            return None
        return bridge

    async def bridge(self, target: str) -> Bridge:
        """The bridge into the tunnel of a ``tunnel://`` target, started on first use
        (concurrent callers share one start).

        Raises TunnelUnavailable when the site has no live tunnel or no such forward, or
        the bridge cannot listen; ValueError for a malformed target.
        """
        site, key = parse_target(target)
        if self.registry.lookup(site, key) is None or self._dir is None:
            raise TunnelUnavailable(unreachable_message(site))
        task = self._bridges.get((site, key))
        if task is None:
            task = asyncio.ensure_future(self._bridge(site, key, self._dir))
            self._bridges[site, key] = task
        try:
            bridge = await asyncio.shield(task)
        except OSError as exc:
            if self._bridges.get((site, key)) is task:
                del self._bridges[site, key]
            raise TunnelUnavailable(f"cannot bridge into the tunnel of {site}: {exc}") from exc
        if self._bridges.get((site, key)) is not task:  # its forward went away meanwhile
            raise TunnelUnavailable(unreachable_message(site))
        self._ready[target] = bridge
        return bridge

    async def forwarder(self, target: str) -> Forwarder:
        """The aiohttp Forwarder reaching a ``tunnel://`` target (its pool is opened on
        first use). Raises as ``bridge`` does, and TunnelUnavailable if the bridge closed
        meanwhile (its forward went away)."""
        bridge = await self.bridge(target)
        try:
            return await bridge.forwarder()
        except OSError as exc:
            raise TunnelUnavailable(unreachable_message(bridge.site)) from exc

    async def _bridge(self, site: str, key: str, directory: Path) -> Bridge:
        def locate() -> tuple[asyncssh.SSHServerConnection, int]:
            found = self.registry.lookup(site, key)
            if found is None:
                raise LookupError(unreachable_message(site))
            link, port = found
            return link.conn, port

        path = directory / f"{next(self._serial)}-{socket_name(site, key)}"
        bridge = Bridge(path, f"{key} at site {site}", site, key, locate,
                        self.settings.upstream_timeout)
        await bridge.start()
        return bridge

    def _forward_gone(self, site: str, key: str) -> None:
        # The forward may come back at once (an agent reconnecting): keep the bridge then.
        if self.registry.lookup(site, key) is not None:
            return
        task = self._bridges.pop((site, key), None)
        if task is not None:
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().retire()  # ``ready`` must not hand it out while it closes
            # Routes' targets are canonical; any other spelling ``ready`` drops when asked.
            self._ready.pop(format_target(site, key), None)
            closing = asyncio.ensure_future(_close_bridge(task))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)


async def _close_bridge(task: asyncio.Task[Bridge]) -> None:
    try:
        bridge = await task
    except (OSError, asyncio.CancelledError):
        return
    await bridge.close()
