"""Forwarding HTTP requests and WebSocket sessions to an upstream, streaming both ways.

This is aiohttp's path, for the requests the fast path (front.py) hands over: HTTP/1.0
clients, connections handed over earlier, https upstreams, routes that appear late.

One pooled ClientSession serves every upstream: keep-alive connections are reused, bodies
are never buffered or decompressed, redirects are passed to the client. aiohttp's client
exceptions are translated into fedhub.edge_proxy.errors here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from fedhub.edge_proxy.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from fedhub.edge_proxy.headers import downstream_headers

log = logging.getLogger(__name__)


def translate(exc: BaseException) -> UpstreamError:
    """The UpstreamError for an aiohttp client failure (or a timeout)."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamUnreachable(f"connection timed out: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnreachable(str(exc))
    if isinstance(exc, aiohttp.ServerTimeoutError | asyncio.TimeoutError):
        return UpstreamTimeout("the server did not answer in time")
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return UpstreamProtocolError(f"WebSocket handshake refused ({exc.status})")
    return UpstreamProtocolError(str(exc) or type(exc).__name__)


def upstream_url(target: str, request: web.BaseRequest) -> URL:
    """``target`` (``http://host:port``) plus the request's path and query, unchanged."""
    raw = request.raw_path
    if not raw.startswith("/"):  # absolute-form request target
        raw = request.rel_url.raw_path_qs
    return URL(target + raw, encoded=True)


class Forwarder:
    """Sends requests upstream over one connection pool; ``start`` before, ``close`` after."""

    def __init__(self, timeout: float) -> None:
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=timeout, sock_read=timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the connection pool (idempotent)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60),
                timeout=self._timeout,
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )

    async def close(self) -> None:
        """Close the pool and its connections (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Forwarder not started")
        return self._session

    async def http(
        self, request: web.BaseRequest, url: URL, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        """Forward ``request`` to ``url`` and stream the answer back to the client.

        Raises UpstreamError if the upstream fails before its response headers arrived;
        a failure after that aborts the client connection (the status was already sent).
        """
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0
        body = request.content if request.body_exists else None
        try:
            upstream = await self.session.request(
                request.method, url, headers=headers, data=body,
                allow_redirects=False, compress=None,
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise translate(exc) from exc
        response = web.StreamResponse(
            status=upstream.status, reason=upstream.reason,
            headers=downstream_headers(upstream.headers),
        )
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except ConnectionError:
            # The client went away (aiohttp's ClientConnectionResetError lands here too):
            # nobody is left to answer, so drop the upstream connection quietly.
            upstream.close()
            return response
        except (TimeoutError, aiohttp.ClientError) as exc:
            log.info("upstream %s failed mid-response: %s", url.origin(), translate(exc))
            upstream.close()
            if request.transport is not None:
                request.transport.abort()
            return response
        finally:
            upstream.release()
        return response

    async def websocket(
        self, request: web.BaseRequest, url: URL, headers: CIMultiDict[str]
    ) -> web.WebSocketResponse:
        """Connect to ``url`` as a WebSocket, accept the client's upgrade, pump frames.

        Raises UpstreamError if the upstream cannot be reached or refuses the handshake
        (the client's upgrade is not accepted then, so it gets a normal error answer).
        """
        offered = request.headers.get("Sec-WebSocket-Protocol", "")
        protocols = tuple(p.strip() for p in offered.split(",") if p.strip())
        try:
            upstream = await self.session.ws_connect(
                url, headers=headers, protocols=protocols, autoping=True,
                max_msg_size=0, compress=0, timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
            )
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise translate(exc) from exc
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            max_msg_size=0, compress=False, autoping=True,
        )
        try:
            await client.prepare(request)
            await _pump_both(client, upstream)
        finally:
            await upstream.close()
            await client.close()
        return client


async def _pump_both(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
                     ) -> None:
    to_upstream = asyncio.create_task(_pump(client, upstream))
    to_client = asyncio.create_task(_pump(upstream, client))
    try:
        await asyncio.wait((to_upstream, to_client), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (to_upstream, to_client):
            task.cancel()
        await asyncio.gather(to_upstream, to_client, return_exceptions=True)


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Copy frames until ``source`` closes; then close ``sink`` with the same code."""
    async for msg in source:
        if msg.type is aiohttp.WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type is aiohttp.WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type is aiohttp.WSMsgType.ERROR:
            break
    code = source.close_code or aiohttp.WSCloseCode.OK
    # 1005/1006 are reserved: they may not be sent in a close frame.
    if code in (1005, 1006):
        code = aiohttp.WSCloseCode.GOING_AWAY
    await sink.close(code=code, message=b"")
