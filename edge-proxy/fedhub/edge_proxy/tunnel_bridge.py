"""Giving aiohttp's client a transport into an SSH channel: one UNIX-socket bridge per forward.

Why a bridge, and not a custom aiohttp connector or transport adapter: aiohttp has no
public API for "connect with this stream"; a custom connector means overriding the private
``BaseConnector._create_connection`` and handing aiohttp's ``ResponseHandler`` a hand-made
transport whose flow control (pause/resume reading and writing, EOF, abort) must match
asyncio's exactly, in a part of aiohttp that changes between minor releases. The bridge
uses public APIs only: for every tunnelled server the proxy listens on a UNIX socket in
its private runtime directory (mode 0700, so no other local user can reach it), the fast
path (front.py) connects there as to any upstream, an ``aiohttp.UnixConnector`` session
(opened on first use) sends the requests aiohttp forwards with the very same code as for
direct routes (keep-alive pooling, streaming, WebSocket), and each accepted connection
becomes one SSH channel (``conn.create_connection(..., server_key, port)``). The direct
``http://`` path is untouched.

Each accepted connection is spliced to its channel by two protocol objects rather than two
stream-copying tasks: whatever one side receives is written to the other at once, and
backpressure is the transports' own (a full socket pauses the channel's reading, so its
window is not re-opened; a full channel pauses the socket's reading). No task, await or
drain per chunk. Channels ask for a large window and large packets: every SSH packet
costs a fixed amount of Python (asyncssh also sends an empty ignore packet before each),
so fewer, bigger packets carry the same bytes for less CPU.

The socket's name is a hash of (site, server key): server keys can be longer than a UNIX
socket path allows. The bridge looks up the site's current SSH connection for every new
channel, so an agent that reconnects is used by the next request without any rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

import aiohttp
import asyncssh

from fedhub.edge_proxy.address import Address
from fedhub.edge_proxy.forward import Forwarder
from fedhub.edge_proxy.http1 import HEAD_END, MAX_HEAD, MalformedMessage, parse_request
from fedhub.edge_proxy.pages import render_error

log = logging.getLogger(__name__)
# The receive side of each channel (server -> proxy, where responses flow). The window is
# for the WAN between a site and a proxy, not loopback: a channel moves at most one window
# per round trip (asyncssh's 2 MiB at 50 ms: 40 MiB/s). Its price: a channel whose client
# reads slowly holds up to one window in the proxy's memory. Packets of 128 KiB are a
# quarter as many as asyncssh's default 32 KiB; larger measured no better (asyncssh copies
# each packet several times, and its input buffer grows by concatenation).
CHANNEL_WINDOW = 8 * 1024 * 1024
CHANNEL_PACKET = 128 * 1024
# Bytes the bridge socket may buffer before the channel is paused: with asyncio's 64 KiB
# default, every few packets paused and re-opened the channel (about a third more proxy
# CPU per GiB downloaded, measured with bench/tunnel_bench.py).
SOCKET_HIGH_WATER = 1024 * 1024
# (connection, forward port) of the site's current link; raises LookupError when it has none.
Locator = Callable[[], tuple[asyncssh.SSHServerConnection, int]]


def socket_name(site: str, key: str) -> str:
    """A short, stable file name for the bridge of one forward."""
    return hashlib.sha256(f"{site}\0{key}".encode()).hexdigest()[:24] + ".sock"


class TunnelForwarder(Forwarder):
    """A Forwarder whose pool connects to one bridge socket instead of TCP."""

    def __init__(self, timeout: float, path: Path) -> None:
        super().__init__(timeout)
        self.path = path

    async def start(self) -> None:
        """Open the connection pool (idempotent); same client options as direct routes."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=str(self.path), limit=0, limit_per_host=0),
                timeout=self._timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )


def unreachable_message(site: str) -> str:
    """What a client is told when a tunnelled site cannot be reached from this proxy."""
    return f"the site {site} is unreachable (no tunnel from its agent)"


class _ChannelEnd(asyncssh.SSHTCPSession[bytes]):
    """The channel's side of a splice: what the agent sends goes to the bridge socket."""

    def __init__(self, sock: asyncio.Transport) -> None:
        self._sock = sock

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if not self._sock.is_closing():
            self._sock.write(data)

    def eof_received(self) -> bool:
        if not self._sock.is_closing() and self._sock.can_write_eof():
            self._sock.write_eof()
        return True  # half-close: the client side may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self._sock.close()  # after what is buffered has been written

    def pause_writing(self) -> None:
        if not self._sock.is_closing():
            self._sock.pause_reading()

    def resume_writing(self) -> None:
        if not self._sock.is_closing():
            self._sock.resume_reading()


class _SocketEnd(asyncio.Protocol):
    """The socket's side of a splice: one accepted connection, one SSH channel."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge
        self._sock: asyncio.Transport | None = None
        self._chan: asyncssh.SSHTCPChannel[bytes] | None = None
        self._opening: asyncio.Task[None] | None = None
        # What the client sent before the channel was open (uvloop starts reading after
        # connection_made, so pausing there does not hold the first request back).
        self._early: list[bytes] = []
        self._early_eof = False
        self._refusal: str | None = None  # why no channel opened, once that is known

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's does not derive from asyncio.Transport)
        sock = cast(asyncio.Transport, transport)
        self._sock = sock
        sock.set_write_buffer_limits(high=SOCKET_HIGH_WATER)
        self._bridge.splices.add(self)
        self._opening = asyncio.ensure_future(self._open(sock))

    async def _open(self, sock: asyncio.Transport) -> None:
        bridge = self._bridge
        try:
            conn, port = bridge.locate()
            chan, _ = await conn.create_connection(
                lambda: _ChannelEnd(sock), bridge.key, port,
                window=CHANNEL_WINDOW, max_pktsize=CHANNEL_PACKET)
        except (OSError, LookupError, asyncssh.Error) as exc:
            # The agent refused the channel (its server does not answer) or the tunnel
            # went away meanwhile: answer like an unreachable upstream would, with what
            # the client must be told (both paths relay the answer as it is).
            log.info("%s: cannot open a tunnel channel: %s", bridge.label, exc)
            self._refusal = bridge.refusal()
            if not sock.is_closing():
                sock.resume_reading()  # the rest of the request head says which form
                self._refuse()
            return
        finally:
            self._opening = None
        if sock.is_closing():
            chan.close()
            return
        self._chan = chan
        with contextlib.suppress(OSError):
            for data in self._early:
                chan.write(data)
            if self._early_eof:
                chan.write_eof()
        self._early.clear()
        sock.resume_reading()

    def _refuse(self) -> None:
        """Answer the request with ``_refusal`` once its head is in (an error page for a
        browser, JSON otherwise, as the proxy's own answers), then close."""
        sock = self._sock
        if sock is None or sock.is_closing() or self._refusal is None:
            return
        buf = b"".join(self._early)
        end = buf.find(HEAD_END)
        if end < 0 and not self._early_eof and len(buf) <= MAX_HEAD:
            return  # more of the head is coming
        accept = ""
        if end >= 0:
            with contextlib.suppress(MalformedMessage):
                head = parse_request(buf[:end + 4])
                accept = next((v for n, v in head.headers if n.lower() == "accept"), "")
        self._early.clear()
        sock.write(render_error(503, self._refusal, accept).encode(close=True))
        sock.close()

    def data_received(self, data: bytes) -> None:
        if self._chan is None:
            self._early.append(data)
            if self._refusal is not None:
                self._refuse()
            elif self._sock is not None:
                self._sock.pause_reading()  # until the channel is open
            return
        with contextlib.suppress(OSError):  # the channel closed meanwhile
            self._chan.write(data)

    def eof_received(self) -> bool:
        if self._chan is None:
            self._early_eof = True
            self._refuse()
        else:
            with contextlib.suppress(OSError):
                self._chan.write_eof()
        return True  # half-close: the answer may still be coming

    def connection_lost(self, exc: Exception | None) -> None:
        self._bridge.splices.discard(self)
        # A channel still opening is left to finish and closed then (_open sees the closed
        # socket): cancelling the open would leave the agent's end of it open.
        if self._chan is not None:
            self._chan.close()

    def pause_writing(self) -> None:
        if self._chan is not None:
            self._chan.pause_reading()  # the agent's data waits, the window stays shut

    def resume_writing(self) -> None:
        if self._chan is not None:
            self._chan.resume_reading()

    def close(self) -> asyncio.Task[None] | None:
        """Close both ends; returns the channel-opening task if one was pending."""
        opening = self._opening
        if opening is not None:
            opening.cancel()
        if self._chan is not None:
            self._chan.close()
        if self._sock is not None:
            self._sock.close()
        return opening


class Bridge:
    """The UNIX socket of one forward (``address``, for the fast path's own connections),
    and the aiohttp Forwarder into it for the requests aiohttp forwards."""

    def __init__(self, path: Path, label: str, site: str, key: str, locate: Locator,
                 timeout: float) -> None:
        self.path = path
        self.address = Address(path=str(path))
        self.label = label
        self.site = site
        self.key = key
        self.locate = locate
        self.closed = False
        self.splices: set[_SocketEnd] = set()
        self._timeout = timeout
        self._forwarder: TunnelForwarder | None = None
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Listen on the socket. Raises OSError."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _SocketEnd(self), str(self.path))

    async def forwarder(self) -> TunnelForwarder:
        """The aiohttp Forwarder into this bridge, its pool opened on first use: most
        requests take the fast path, which connects to ``address`` itself, so most
        bridges never need one. Raises OSError once the bridge is closed."""
        if self.closed:
            raise ConnectionResetError(f"the bridge of {self.label} is closed")
        forwarder = self._forwarder
        if forwarder is None:
            forwarder = self._forwarder = TunnelForwarder(self._timeout, self.path)
            await forwarder.start()
        return forwarder

    def refusal(self) -> str:
        """What a client is told when no channel could be opened: that the site is
        unreachable when its tunnel (or this forward) is gone, else that the server does
        not answer through it (the agent refused the channel)."""
        try:
            self.locate()
        except LookupError:
            return unreachable_message(self.site)
        return f"{self.label} is not reachable through its tunnel"

    def retire(self) -> None:
        """Refuse new uses from now on (``closed``); ``close`` does the rest."""
        self.closed = True

    async def close(self) -> None:
        """Stop listening, close pooled and spliced connections (idempotent)."""
        self.closed = True
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        forwarder, self._forwarder = self._forwarder, None
        if forwarder is not None:
            await forwarder.close()
        opening = [t for s in list(self.splices) if (t := s.close()) is not None]
        self.splices.clear()
        await asyncio.gather(*opening, return_exceptions=True)
