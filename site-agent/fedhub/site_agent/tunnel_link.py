"""One agent's SSH connection to one edge proxy, kept up forever, carrying its forwards.

The agent dials out (username = site name, client key = the agent's enrolled key) and
accepts only the host key the log announced for that proxy (pinned; an unknown host key
fails the connection). After every (re)connect it asks for one remote forward per running
server, named ``<user-token>.<server-token>`` and leading to that server's local address,
which the agent chose: the proxy can open channels only to those names. asyncssh's client
refuses every other channel the proxy could try to open (sessions, direct-tcpip, X11,
agent forwarding, forwards it never requested). Lost connections are retried with
exponential backoff (1 s doubling to 30 s, with jitter) forever.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import random
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import cast

import asyncssh

from fedhub.events.sshkeys import CIPHERS

log = logging.getLogger(__name__)
BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
JITTER = 0.2  # +-20 %: agents of many sites do not all come back in the same second
FORWARD_PORT = 1  # part of the forward's name on the proxy; no port is bound anywhere
# The receive side of each forwarded channel (proxy -> server: requests, uploads). A
# channel moves at most one window per round trip, and sites are far from proxies
# (asyncssh's 2 MiB at 50 ms: 40 MiB/s); a slowly read channel holds up to one window here.
# Fewer, larger SSH packets cost less CPU per byte: asyncssh spends a fixed amount of
# Python on each (and sends an empty ignore packet before each).
CHANNEL_WINDOW = 8 * 1024 * 1024
CHANNEL_PACKET = 128 * 1024
# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
Destination = tuple[str, int]


@functools.cache  # process-wide: once is enough, however many proxies the agent links to
def keep_freed_memory() -> None:
    """Ask glibc's allocator to keep freed buffers of a few MiB instead of unmapping them.

    asyncssh copies every packet it sends into several fresh buffers of the packet's size.
    The edge proxy asks for 128 KiB packets, and at that size glibc by default maps each
    buffer anew and returns it to the kernel on free (its mmap and trim thresholds start
    at 128 KiB), so every packet page-faults in zeroed memory: measured with
    bench/tunnel_bench.py, the agent's system time per GiB sent rose from 0.7 s to 3-4 s.
    Process-wide and idempotent; a no-op where mallopt is missing (not glibc).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_MMAP_THRESHOLD, 4 << 20)
    mallopt(M_TRIM_THRESHOLD, 32 << 20)


def backoff_delay(attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect ``attempt`` (0, 1, 2...): 1, 2, 4... up to 30 s,
    each multiplied by a random factor in [0.8, 1.2]."""
    base = min(BACKOFF_MAX, BACKOFF_START * 2.0 ** min(attempt, 16))
    return base * (rng or random).uniform(1 - JITTER, 1 + JITTER)


@dataclass(frozen=True)
class Endpoint:
    """Where one edge proxy listens for tunnels and the host key it must present."""

    name: str
    kid: str
    host: str
    port: int
    host_key: asyncssh.SSHKey

    def same_as(self, other: Endpoint) -> bool:
        """True if ``other`` is the same address with the same pinned key."""
        return (self.host, self.port, self.kid) == (other.host, other.port, other.kid)


class ProxyLink:
    """Keeps one tunnel to ``endpoint`` with a forward for every entry of ``servers``.

    ``servers`` (server key -> local host and port) is owned by the caller; call
    :meth:`changed` after modifying it.
    """

    def __init__(self, site: str, client_key: asyncssh.SSHKey, endpoint: Endpoint,
                 servers: dict[str, Destination], keepalive: float = 15.0) -> None:
        self.site = site
        self.endpoint = endpoint
        self._client_key = client_key
        self._servers = servers
        self._keepalive = keepalive
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.conn: asyncssh.SSHClientConnection | None = None
        self.forwarded: dict[str, tuple[asyncssh.SSHListener, Destination]] = {}
        self.connects = 0  # successful connections so far (tests, status)

    def start(self) -> None:
        """Begin connecting in the background (idempotent)."""
        if self._task is None:
            keep_freed_memory()
            self._task = asyncio.create_task(self._run(), name=f"tunnel-{self.endpoint.name}")

    async def close(self) -> None:
        """Stop reconnecting and close the connection (idempotent)."""
        self._closing = True  # no new attempt, even if a cancellation is swallowed
        task, self._task = self._task, None
        if task is None:
            return
        # Python 3.11's asyncio.wait_for can swallow a cancellation that arrives as the
        # connection attempt fails: cancel again until the task is really over.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("tunnel to edge proxy %s ended with %r", self.endpoint.name, exc)

    def changed(self) -> None:
        """The set of servers changed: add and remove forwards accordingly."""
        self._changed.set()

    def in_sync(self, key: str) -> bool:
        """True when ``key`` is forwarded, or there is no connection to forward it on."""
        return self.conn is None or key in self.forwarded

    async def _run(self) -> None:
        attempt = 0
        while not self._closing:
            try:
                conn = await self._connect()
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                delay = backoff_delay(attempt)
                attempt += 1
                log.warning("no tunnel to edge proxy %s at %s:%d (%s); retrying in %.1f s",
                            self.endpoint.name, self.endpoint.host, self.endpoint.port,
                            exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self.connects += 1
            log.info("tunnel to edge proxy %s (%s:%d) is up", self.endpoint.name,
                     self.endpoint.host, self.endpoint.port)
            try:
                await self._serve(conn)
            except (OSError, asyncssh.Error) as exc:
                log.warning("tunnel to edge proxy %s failed: %s", self.endpoint.name, exc)
            finally:
                self.conn = None
                self.forwarded.clear()
                conn.close()
            delay = backoff_delay(0)
            log.warning("tunnel to edge proxy %s was lost; reconnecting in %.1f s",
                        self.endpoint.name, delay)
            await asyncio.sleep(delay)

    async def _connect(self) -> asyncssh.SSHClientConnection:
        ep = self.endpoint
        return await asyncssh.connect(
            ep.host, ep.port, username=self.site,
            client_keys=[self._client_key], known_hosts=([ep.host_key], [], []),
            server_host_key_algs=["ssh-ed25519"], preferred_auth="publickey",
            agent_path=None, agent_forwarding=False, config=None, gss_host=None,
            connect_timeout=15, login_timeout=30, encryption_algs=CIPHERS, compression_algs=None,
            keepalive_interval=self._keepalive, keepalive_count_max=3,
        )

    async def _serve(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn
        closed = asyncio.ensure_future(conn.wait_closed())
        try:
            while not closed.done():
                self._changed.clear()
                await self._sync(conn)
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait((closed, changed), return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
        finally:
            closed.cancel()

    async def _sync(self, conn: asyncssh.SSHClientConnection) -> None:
        for key, (listener, dest) in list(self.forwarded.items()):
            if self._servers.get(key) != dest:
                del self.forwarded[key]
                listener.close()  # cancel-tcpip-forward: the proxy forgets the name
        for key, dest in list(self._servers.items()):
            if key in self.forwarded:
                continue
            try:
                listener = await self._forward(conn, key, dest)
            except asyncssh.ChannelListenError as exc:
                log.warning("edge proxy %s refused the forward for %s: %s",
                            self.endpoint.name, key, exc)
                continue
            if self._servers.get(key) != dest:  # ended while we asked
                listener.close()
                continue
            self.forwarded[key] = (listener, dest)

    @staticmethod
    async def _forward(conn: asyncssh.SSHClientConnection, key: str,
                       dest: Destination) -> asyncssh.SSHListener:
        """Ask for the remote forward ``key``; its channels connect to ``dest``.

        Like ``forward_remote_port``, but with this module's window and packet size.
        Raises ChannelListenError if the proxy refuses the name.
        """
        host, port = dest

        def splice(_orig_host: str, _orig_port: int) -> Awaitable[asyncssh.SSHTCPSession[bytes]]:
            # asyncssh's own forwarder (a protocol pair, no task per connection); it
            # implements the session interface without deriving from it.
            return cast(Awaitable[asyncssh.SSHTCPSession[bytes]],
                        conn.forward_connection(host, port))

        return await conn.create_server(splice, key, FORWARD_PORT,
                                        window=CHANNEL_WINDOW, max_pktsize=CHANNEL_PACKET)
