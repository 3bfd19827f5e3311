"""Giving aiohttp's client a transport into an SSH channel: one UNIX-socket bridge per forward.

Why a bridge, and not a custom aiohttp connector or transport adapter: aiohttp has no
public API for "connect with this stream"; a custom connector means overriding the private
``BaseConnector._create_connection`` and handing aiohttp's ``ResponseHandler`` a hand-made
transport whose flow control (pause/resume reading and writing, EOF, abort) must match
asyncio's exactly, in a part of aiohttp that changes between minor releases. The bridge
uses public APIs only: for every tunnelled server the proxy listens on a UNIX socket in
its private runtime directory (mode 0700, so no other local user can reach it), an
``aiohttp.UnixConnector`` session sends requests there with the very same forwarding code
as direct routes (keep-alive pooling, streaming, WebSocket), and each accepted connection
becomes one SSH channel (``conn.open_connection(server_key, port)``) pumped both ways
with backpressure on both sides (``drain``). The price is one extra local copy per chunk,
small next to SSH's encryption; the direct ``http://`` path is untouched.

The socket's name is a hash of (site, server key): server keys can be longer than a UNIX
socket path allows. The bridge looks up the site's current SSH connection for every new
channel, so an agent that reconnects is used by the next request without any rebinding.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import asyncssh

from fedhub.edge_proxy.forward import Forwarder

log = logging.getLogger(__name__)
CHUNK = 256 * 1024
Opener = Callable[[], Awaitable[tuple[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]]]]


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


def _unavailable(message: str) -> bytes:
    body = json.dumps({"status": 503, "message": message}).encode()
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\n"
            f"Connection: close\r\n\r\n").encode()
    return head + body


class Bridge:
    """The UNIX socket of one forward and the Forwarder that uses it."""

    def __init__(self, path: Path, label: str, opener: Opener, timeout: float) -> None:
        self.path = path
        self.label = label
        self._opener = opener
        self.forwarder = TunnelForwarder(timeout, path)
        self._server: asyncio.AbstractServer | None = None
        self._pumps: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Listen on the socket and open the client pool. Raises OSError."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._server = await asyncio.start_unix_server(self._accept, str(self.path))
        await self.forwarder.start()

    async def close(self) -> None:
        """Stop listening, close pooled and pumping connections (idempotent)."""
        if self._server is not None:
            self._server.close()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        await self.forwarder.close()
        for task in list(self._pumps):
            task.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pumps.add(task)
        try:
            try:
                up_reader, up_writer = await self._opener()
            except (OSError, LookupError, asyncssh.Error) as exc:
                # The agent refused the channel (its server does not answer) or the tunnel
                # went away meanwhile: answer like an unreachable upstream would.
                log.info("%s: cannot open a tunnel channel: %s", self.label, exc)
                writer.write(_unavailable(f"{self.label} is not reachable through its tunnel"))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                return
            try:
                await _pump_both(reader, writer, up_reader, up_writer)
            finally:
                up_writer.close()
        except asyncio.CancelledError:
            pass  # closing the bridge: asyncio would log a cancelled connection handler
        finally:
            self._pumps.discard(task)
            writer.close()


async def _pump_both(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     up_reader: asyncssh.SSHReader[bytes],
                     up_writer: asyncssh.SSHWriter[bytes]) -> None:
    async def to_channel() -> None:
        while data := await reader.read(CHUNK):
            up_writer.write(data)
            await up_writer.drain()
        up_writer.write_eof()

    async def to_socket() -> None:
        while data := await up_reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    to_upstream = asyncio.create_task(to_channel())
    to_client = asyncio.create_task(to_socket())
    try:
        await asyncio.wait((to_upstream, to_client), return_when=asyncio.FIRST_COMPLETED)
        if not to_upstream.done() and to_client.exception() is None:
            # The server finished its answer: the pool closes its side once it read it.
            await asyncio.wait((to_upstream,))
    finally:
        for task in (to_upstream, to_client):
            task.cancel()
        await asyncio.gather(to_upstream, to_client, return_exceptions=True)
