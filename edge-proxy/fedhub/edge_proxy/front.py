"""The HTTP/1.1 front end: a raw asyncio protocol for the proxy's listening port.

Requests the proxy can forward as they are (a user's own running server, the hub) take
the fast path: the head is parsed with httptools, checked by the same decisions as
always (``Gate.plan``), and sent over a pooled upstream connection; bodies stream both
ways with flow control, one request at a time. Everything else (health, redirects, error
pages, missing routes, HTTP/1.0, anything unusual) is handed over, with the bytes already
read, to aiohttp's server for the rest of that connection.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, cast

from fedhub.edge_proxy import pages
from fedhub.edge_proxy.address import Address
from fedhub.edge_proxy.errors import UpstreamError
from fedhub.edge_proxy.exchange import Exchange, Memo
from fedhub.edge_proxy.http1 import HEAD_END, MAX_HEAD, MalformedMessage, RequestHead, parse_request
from fedhub.edge_proxy.plan import Plan
from fedhub.edge_proxy.upstream import Pool

log = logging.getLogger(__name__)
BUFFER_LIMIT = 256 * 1024  # client bytes held while busy before reading pauses
IDLE_CLIENT = 75.0  # seconds an idle client connection is kept (aiohttp's default too)


class Gate(Protocol):
    """The proxy's decisions, as the front end needs them."""

    def plan(self, head: RequestHead, headers: dict[str, str]) -> Plan | None:
        """Where this request goes if it can take the fast path; None hands it over.

        ``headers`` maps lowercase names to their first value.
        """

    def bridge_address(self, target: str) -> Address | None:
        """The bridge socket of a tunnel target if its bridge is up (no task, no await:
        every tunnelled request asks); None: ask ``open_bridge``. Never raises."""

    def open_bridge(self, target: str) -> Awaitable[Address]:
        """The bridge socket of a tunnel target, starting its bridge if need be.

        Raises UpstreamError if the tunnel is unavailable.
        """

    def failure(self, exc: UpstreamError, plan: Plan) -> tuple[int, str]:
        """Status and message for a failed upstream."""


class Front:
    """The listener; one ``Client`` per connection, sharing one upstream pool."""

    def __init__(self, gate: Gate, fallback: Callable[[], asyncio.Protocol],
                 timeout: float) -> None:
        self.gate = gate
        self.fallback = fallback  # aiohttp's web.Server: a protocol factory
        self.timeout = timeout
        self.tick_interval = min(timeout / 4, 1.0)
        self.clock: Callable[[], float] = time.monotonic  # the loop's clock once started
        self.pool = Pool(timeout)
        self.clients: set[Client] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._ticker: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port``. Raises OSError if the port is taken."""
        loop = asyncio.get_running_loop()
        self.clock = loop.time
        self._server = await loop.create_server(lambda: Client(self), host, port,
                                                backlog=1024)
        self._sweeper = loop.call_later(IDLE_CLIENT / 3, self._sweep)
        self._ticker = loop.call_later(self.tick_interval, self._tick)

    async def stop(self) -> None:
        """Stop listening and close every fast-path connection (idempotent)."""
        for timer in (self._sweeper, self._ticker):
            if timer is not None:
                timer.cancel()
        self._sweeper = self._ticker = None
        if self._server is not None:
            self._server.close()
            self._server = None
        for client in list(self.clients):
            client.abort()
        await asyncio.sleep(0)  # aborted clients' connection_lost closes their upstreams
        self.pool.close()
        await asyncio.sleep(0)  # the loop finishes closing the transports

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        horizon = loop.time() - IDLE_CLIENT
        for client in [c for c in self.clients if c.idle and c.idle_since < horizon]:
            client.abort()
        self._sweeper = loop.call_later(IDLE_CLIENT / 3, self._sweep)

    def _tick(self) -> None:
        now = self.clock()
        for client in list(self.clients):
            if client.exchange is not None:
                client.exchange.tick(now)
        self._ticker = asyncio.get_running_loop().call_later(self.tick_interval, self._tick)


class Client(asyncio.Protocol):
    """One client connection on the fast path (until it is handed over)."""

    __slots__ = (
        "_blocked_by_upstream", "_closing", "_reading_paused", "buf", "exchange", "front",
        "idle_since", "memo", "remote", "transport"
    )

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.remote = ""
        self.buf = b""  # bytes read and not yet used
        self.exchange: Exchange | None = None
        self.memo: Memo | None = None  # the last request head (see Memo)
        self.idle_since = 0.0
        self._blocked_by_upstream = False
        self._reading_paused = False
        self._closing = False  # no further request on this connection

    # -- asyncio callbacks -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else ""
        self.front.clients.add(self)
        self.idle_since = asyncio.get_running_loop().time()

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            if exchange.piping:
                exchange.to_upstream(data)
                return
            self.buf = self.buf + data if self.buf else data
            exchange.pump_request()
            self.update_reading()
            return
        self.buf = self.buf + data if self.buf else data
        self.next_request()

    def eof_received(self) -> bool:
        if self.exchange is not None and not self.exchange.piping:
            self._closing = True  # a half-closed client still gets its answer
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.clients.discard(self)
        self._closing = True
        self.transport = None
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange.abort()

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client_blocked(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client_blocked(False)

    @property
    def idle(self) -> bool:
        """Between requests, waiting for the next one (since ``idle_since``). Not while it
        closes: sweeping it then would cut off the last answer it is still sending."""
        return self.exchange is None and not self._closing

    @property
    def closing(self) -> bool:
        """No request after the current one will be read on this connection."""
        return self._closing

    # -- requests ----------------------------------------------------------------------

    def next_request(self) -> None:
        """Start the next request in ``buf`` if its head is complete."""
        buf = self.buf
        if buf.startswith(b"\r\n"):  # stray empty lines between requests
            buf = self.buf = buf.lstrip(b"\r\n")
        end = buf.find(HEAD_END)
        if end < 0:
            if len(buf) > MAX_HEAD:
                self.refuse(431, "request head too large")
            elif b"\n\n" in buf:  # a head that will never end as HTTP/1.1 says
                self.refuse(400, "malformed request: header lines must end with CRLF")
            return
        if end + 4 > MAX_HEAD:
            self.refuse(431, "request head too large")
            return
        raw = buf if end + 4 == len(buf) else buf[:end + 4]
        memo = self.memo
        if memo is None or memo.raw != raw:
            try:
                head = parse_request(raw)
            except MalformedMessage as exc:
                self.refuse(400, f"malformed request: {exc}")
                return
            target = head.target
            if not target.startswith("/") and not target[:8].lower().startswith(
                    ("http://", "https://")):
                # "*" (OPTIONS) and CONNECT's host:port: nothing here is addressed so
                self.refuse(400, "malformed request: the target must be a path or a URL")
                return
            headers: dict[str, str] = {}
            hosts = 0
            for name, value in head.headers:
                lower = name.lower()
                hosts += lower == "host"
                headers.setdefault(lower, value)
            if hosts > 1 or (hosts == 0 and head.version == "1.1"):
                self.refuse(400, "malformed request: an HTTP/1.1 request has one Host header")
                return
            if head.version != "1.1" or not target.startswith("/"):
                self.hand_over()
                return
            memo = self.memo = Memo(raw, head, headers)
        head = memo.head
        plan = self.front.gate.plan(head, memo.headers)
        if plan is None:
            self.hand_over()
            return
        exchange = Exchange.start(self, memo, plan)
        if exchange is None:
            self.hand_over()
            return
        self.buf = buf[end + 4:]
        self.exchange = exchange
        if not head.keep_alive:
            self._closing = True
        exchange.begin()

    def finished(self, *, close: bool) -> None:
        """The current exchange is over; go on with the next request or close."""
        self.exchange = None
        self._blocked_by_upstream = False
        if close or self._closing or self.transport is None:
            self.close()
            return
        self.idle_since = asyncio.get_running_loop().time()
        self.update_reading()
        if self.buf:
            self.next_request()

    def answer(self, answer: pages.Answer, *, close: bool) -> None:
        """Send one of the proxy's own answers."""
        if self.transport is not None:
            self.transport.write(answer.encode(close=close or self._closing))

    def refuse(self, status: int, message: str) -> None:
        """Answer a request that cannot be read, then close (nothing after it is sane)."""
        self.answer(pages.render_error(status, message, ""), close=True)
        self.close()

    def hand_over(self) -> None:
        """Give this connection, with the bytes already read, to aiohttp's server."""
        transport = self.transport
        if transport is None:
            return
        self.front.clients.discard(self)
        self.transport = None
        protocol = self.front.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        buf, self.buf = self.buf, b""
        if buf:
            protocol.data_received(buf)

    # -- flow control and closing ------------------------------------------------------

    def upstream_blocked(self, blocked: bool) -> None:
        """The upstream cannot take more of the request body (or piped bytes) yet."""
        self._blocked_by_upstream = blocked
        self.update_reading()

    def update_reading(self) -> None:
        """Pause reading while the upstream is full or too much is buffered; else resume."""
        pause = self._blocked_by_upstream or (
            self.exchange is not None and len(self.buf) > BUFFER_LIMIT)
        if pause != self._reading_paused and self.transport is not None:
            self._reading_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        """Send ``data`` to the client (ignored once it is gone)."""
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        """Close after what is buffered has been sent."""
        self._closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close at once (the response cannot be completed)."""
        self._closing = True
        if self.transport is not None:
            self.transport.abort()

