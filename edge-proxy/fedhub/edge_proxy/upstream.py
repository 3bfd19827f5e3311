"""Keep-alive connections to upstreams (user servers, tunnel bridges, the hub) for the fast path.

A connection belongs to at most one client exchange at a time (its ``owner``), which gets
every byte, end of stream and flow-control signal; idle connections wait in the pool, one
LIFO list per address, and are closed after ``IDLE_TIMEOUT`` seconds unused.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Protocol, cast

from fedhub.edge_proxy.address import Address
from fedhub.edge_proxy.errors import UpstreamUnreachable

IDLE_TIMEOUT = 15.0  # below common upstream keep-alive timeouts (nginx 75 s, tornado 3600 s)
MAX_IDLE = 256  # idle connections kept per address


class Owner(Protocol):
    """What a connection reports to the exchange using it."""

    def upstream_data(self, data: bytes) -> None:
        """Bytes from the upstream."""

    def upstream_closed(self, conn: Connection) -> None:
        """The upstream ended its side or the connection was lost."""

    def upstream_blocked(self, blocked: bool) -> None:
        """The upstream's write buffer is full (True) or drained again (False)."""


@dataclass(slots=True)
class ResponseMemo:
    """The last response head on a connection and what the header rules made of it.

    Upstreams repeat heads (nginx's change once a second, with Date): an identical head
    skips parsing and filtering, as the request side's Memo does.
    """

    raw: bytes
    status: int
    keep_alive: bool
    headers: dict[str, str]  # lowercase names of the hop-by-hop and framing headers
    out: bytes  # the head for the client, without framing headers and the empty line


class Connection(asyncio.Protocol):
    """One upstream connection (TCP or UNIX)."""

    __slots__ = (
        "address", "closed", "idle_since", "memo", "owner", "pool", "reading_paused", "transport"
    )

    def __init__(self, pool: Pool, address: Address) -> None:
        self.pool = pool
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.owner: Owner | None = None
        self.closed = False
        self.reading_paused = False
        self.idle_since = 0.0
        self.memo: ResponseMemo | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner.upstream_data(data)
        else:  # an idle connection has nothing to say: it is broken
            self.close()

    def eof_received(self) -> bool:
        self.closed = True
        if self.owner is not None:
            self.owner.upstream_closed(self)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        owner, self.owner = self.owner, None
        if owner is not None:
            owner.upstream_closed(self)

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_blocked(True)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_blocked(False)

    def write(self, data: bytes) -> None:
        """Send ``data`` (ignored once closed)."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self, paused: bool) -> None:
        """Stop (True) or resume (False) reading: the client cannot take more yet."""
        if paused != self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = paused
            if paused:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def close(self) -> None:
        """Close without reuse (idempotent)."""
        self.closed = True
        self.owner = None
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Idle keep-alive connections by address; ``connect`` opens new ones."""

    def __init__(self, connect_timeout: float) -> None:
        self._timeout = connect_timeout
        self._idle: dict[Address, list[Connection]] = {}
        self._sweeper: asyncio.TimerHandle | None = None

    def take(self, address: Address) -> Connection | None:
        """An idle connection to ``address``, or None."""
        idle = self._idle.get(address)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self, address: Address) -> Connection:
        """A new connection to ``address``.

        Raises UpstreamUnreachable if it is refused, unreachable or times out.
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                if address.path:
                    _, conn = await loop.create_unix_connection(
                        lambda: Connection(self, address), address.path)
                else:
                    _, conn = await loop.create_connection(
                        lambda: Connection(self, address), address.host, address.port)
        except TimeoutError as exc:
            raise UpstreamUnreachable(f"connection timed out: {address}") from exc
        except OSError as exc:
            raise UpstreamUnreachable(str(exc) or type(exc).__name__) from exc
        return conn

    def release(self, conn: Connection) -> None:
        """Keep ``conn`` for reuse (or close it if it cannot be reused)."""
        conn.owner = None
        conn.pause_reading(False)
        idle = self._idle.setdefault(conn.address, [])
        if conn.closed or len(idle) >= MAX_IDLE:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = loop.call_later(IDLE_TIMEOUT / 2, self._sweep)

    def forget(self, conn: Connection) -> None:
        """Drop ``conn`` from the idle lists (it was lost)."""
        idle = self._idle.get(conn.address)
        if idle and conn in idle:
            idle.remove(conn)

    def _sweep(self) -> None:
        self._sweeper = None
        loop = asyncio.get_running_loop()
        horizon = loop.time() - IDLE_TIMEOUT
        for address, idle in list(self._idle.items()):
            keep = [c for c in idle if not c.closed and c.idle_since > horizon]
            for conn in idle:
                if conn not in keep:
                    conn.close()
            if keep:
                self._idle[address] = keep
            else:
                del self._idle[address]
        if self._idle:
            self._sweeper = loop.call_later(IDLE_TIMEOUT / 2, self._sweep)

    def close(self) -> None:
        """Close every idle connection (idempotent)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            for conn in idle:
                with contextlib.suppress(Exception):
                    conn.close()
        self._idle.clear()
