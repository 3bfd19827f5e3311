"""The fast-path front end over real sockets: HTTP/1.1 edge cases, byte for byte.

A scripted upstream answers exactly what each test needs; clients are raw sockets so that
framing, pipelining and connection handling are visible. Every test runs on asyncio's
loop and on uvloop (see conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import cast

import aiohttp
import asyncssh
import pytest
from aiohttp import web

from fedhub.edge_proxy.exchange import Exchange
from fedhub.edge_proxy.front import Client, Front
from fedhub.edge_proxy.proxy import EdgeProxy
from fedhub.edge_proxy.settings import EdgeProxySettings
from fedhub.edge_proxy.tunnel_bridge import Bridge
from fedhub.events.memory import MemoryStore
from tests.support.polling import until
from tests.support.services import free_port
from tests.unit.edge_proxy.factories import World

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, bytes], Awaitable[bool]]


class Scripted:
    """An upstream whose answer to each request head is a test's coroutine."""

    def __init__(self) -> None:
        self.port = free_port()
        self.heads: list[bytes] = []
        self.connections = 0
        self.handler: Handler = _ok
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:  # every connection ever accepted, closed or not
            writer.transport.abort()
        await asyncio.sleep(0.01)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                if not await self.handler(reader, writer, head):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

async def _ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
    body = head.split(b" ", 2)[1]
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: keep-alive\r\n"
                 b"X-Up: 1\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    return True


def once_per_connection(handler: Handler) -> Handler:
    """``handler`` for a connection's first request; the next finds the connection
    closed, as after an upstream's idle timeout."""
    answered: set[asyncio.StreamWriter] = set()

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   head: bytes) -> bool:
        if writer in answered:
            return False
        answered.add(writer)
        return await handler(reader, writer, head)

    return once


@pytest.fixture
async def upstream() -> AsyncIterator[Scripted]:
    up = Scripted()
    await up.start()
    yield up
    await up.stop()


@pytest.fixture
async def proxy(upstream: Scripted, tmp_path: Path) -> AsyncIterator[EdgeProxy]:
    world = World()
    store = MemoryStore()
    for env in [*world.keys(), world.user("alice"), world.user("bob"),
                world.route("alice", f"http://127.0.0.1:{upstream.port}")]:
        await store.append(env)
    settings = EdgeProxySettings(port=free_port(), hub_url="http://127.0.0.1:9",
                                 data_dir=tmp_path, upstream_timeout=0.5, tunnel_port=-1)
    proxy = EdgeProxy(settings, store)
    proxy.world = world  # type: ignore[attr-defined]
    proxy.test_clients = []  # type: ignore[attr-defined]
    await proxy.start()
    yield proxy
    for writer in proxy.test_clients:  # type: ignore[attr-defined]
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    await proxy.stop()
    await asyncio.sleep(0.05)


def world_of(proxy: EdgeProxy) -> World:
    return cast(World, proxy.world)  # type: ignore[attr-defined]


async def add_route(proxy: EdgeProxy, user: str, target: str, site: str = "site1") -> None:
    """Announce a route and wait until the proxy serves it."""
    await proxy.store.append(world_of(proxy).route(user, target, site=site))

    def served() -> bool:
        route = proxy.state.routes.match(f"/user/{user}/")
        return route is not None and route.target == target.rstrip("/")

    await until(served, timeout=5, what=f"the proxy to route /user/{user}/ to {target}")


def auth(proxy: EdgeProxy) -> bytes:
    return b"Authorization: token " + world_of(proxy).api_token("alice").encode()


async def connect(proxy: EdgeProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.settings.port)
    proxy.test_clients.append(writer)  # type: ignore[attr-defined]
    return reader, writer


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False
                        ) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lowercase names), de-chunked body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if head_request or status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if not size:
                return status, headers, body
            body += chunk[:-2]
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    return status, headers, await asyncio.wait_for(reader.read(), 5)


def get(path: str, proxy: EdgeProxy, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    return (method + b" " + path.encode() + b" HTTP/1.1\r\nHost: example.org\r\n" + auth(proxy)
            + b"\r\n" + extra + b"\r\n")


async def test_forwards_with_the_proxy_headers_and_keeps_both_connections(
    proxy: EdgeProxy, upstream: Scripted
) -> None:
    reader, writer = await connect(proxy)
    token = world_of(proxy).api_token("alice")
    writer.write(f"GET /user/alice/q?a=1&token={token}&b=2 HTTP/1.1\r\nHost: h\r\n\r\n"
                 .encode())
    assert (await read_response(reader))[2] == b"/user/alice/q?a=1&b=2"
    writer.write(get(f"/user/alice/h?%74oken={token}", proxy))  # authenticated by header
    assert (await read_response(reader))[2] == b"/user/alice/h"
    # a page opened with ?token= names it in the Referer of everything it loads
    writer.write(get("/user/alice/r", proxy, f"Referer: http://h/user/alice/lab?token={token}"
                     "&x=1\r\n".encode()))
    assert (await read_response(reader))[2] == b"/user/alice/r"
    assert b"Referer: http://h/user/alice/lab?x=1\r\n" in upstream.heads[-1]
    for i in range(2):
        writer.write(get(f"/user/alice/x{i}", proxy, b"Connection: keep-alive, X-Hop\r\n"
                         b"X-Hop: 1\r\nX-Fedhub-Assertion: forged\r\n"))
        status, headers, body = await read_response(reader)
        assert (status, body) == (200, f"/user/alice/x{i}".encode())
        assert headers["x-up"] == "1" and "connection" not in headers
    head = upstream.heads[-1].decode()
    assert "X-Fedhub-Assertion: eyJ" in head and "forged" not in head
    assert "Authorization" not in head and "X-Hop" not in head
    assert "X-Forwarded-For: 127.0.0.1" in head and "Host: example.org" in head
    assert upstream.connections == 1  # one pooled upstream connection served them all


async def test_chunked_response_and_chunked_request(proxy: EdgeProxy, upstream: Scripted
                                                    ) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> bool:
        body = b""
        if b"chunked" in head.lower():
            while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\ngot\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        return True

    upstream.handler = chunked
    reader, writer = await connect(proxy)
    writer.write(get("/user/alice/up", proxy, b"Transfer-Encoding: chunked\r\n", b"POST")
                 + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, headers["transfer-encoding"], body) == (200, "chunked", b"gothello world")
    writer.write(get("/user/alice/again", proxy))
    assert (await read_response(reader))[2] == b"got"


async def test_head_204_and_304_have_no_body_and_keep_the_connection(
    proxy: EdgeProxy, upstream: Scripted
) -> None:
    async def bodiless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       head: bytes) -> bool:
        if head.startswith(b"HEAD"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        elif b"/204" in head:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n")
        return True

    upstream.handler = bodiless
    reader, writer = await connect(proxy)
    writer.write(get("/user/alice/f", proxy, method=b"HEAD"))
    status, headers, _ = await read_response(reader, head_request=True)
    assert (status, headers["content-length"]) == (200, "1000")
    writer.write(get("/user/alice/204", proxy))
    assert (await read_response(reader))[0] == 204
    writer.write(get("/user/alice/304", proxy))
    assert (await read_response(reader))[0] == 304
    upstream.handler = _ok
    writer.write(get("/user/alice/last", proxy))
    assert (await read_response(reader))[2] == b"/user/alice/last"


async def test_connection_close_and_pipelining(proxy: EdgeProxy, upstream: Scripted) -> None:
    reader, writer = await connect(proxy)
    writer.write(get("/user/alice/1", proxy) + get("/user/alice/2", proxy)
                 + get("/user/alice/3", proxy, b"Connection: close\r\n"))
    bodies = [(await read_response(reader))[2] for _ in range(3)]
    assert bodies == [b"/user/alice/1", b"/user/alice/2", b"/user/alice/3"]
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the third


async def test_expect_100_continue(proxy: EdgeProxy, upstream: Scripted) -> None:
    async def upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     head: bytes) -> bool:
        body = await reader.readexactly(5)
        assert b"expect" not in head.lower()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + body)
        return True

    upstream.handler = upload
    reader, writer = await connect(proxy)
    writer.write(get("/user/alice/u", proxy, b"Content-Length: 5\r\nExpect: 100-continue\r\n",
                     b"PUT"))
    assert (await read_response(reader))[0] == 100
    writer.write(b"hello")
    assert (await read_response(reader))[1:] == ({"content-length": "5"}, b"hello")


async def test_read_until_close_response_closes_the_client(
    proxy: EdgeProxy, upstream: Scripted
) -> None:
    async def legacy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     head: bytes) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        return False

    upstream.handler = legacy
    reader, writer = await connect(proxy)
    writer.write(get("/user/alice/old", proxy))
    status, headers, body = await read_response(reader)
    assert (status, headers["connection"], body) == (200, "close", b"all of it")


async def test_closed_pooled_connection_is_retried(proxy: EdgeProxy, upstream: Scripted
                                                   ) -> None:
    upstream.handler = once_per_connection(_ok)
    reader, writer = await connect(proxy)
    for i in range(3):
        writer.write(get(f"/user/alice/{i}", proxy))
        assert (await read_response(reader))[:1] == (200,)
    # Requests 2 and 3 each found their pooled connection closed and went out again.
    assert upstream.connections == 3
    assert len(upstream.heads) == 5


async def _echo_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     head: bytes) -> bool:
    """Answers with the body the head's Content-Length announced (none without one)."""
    lines = head.decode("latin-1").lower().split("\r\n")
    length = next((int(v) for n, _, v in (ln.partition(":") for ln in lines)
                   if n == "content-length"), 0)
    body = await reader.readexactly(length)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    await writer.drain()
    return True


async def test_content_length_named_in_connection_still_frames_the_body(
        proxy: EdgeProxy, upstream: Scripted) -> None:
    # Dropping it as hop-by-hop would leave the body on the pooled upstream connection,
    # to be read there as the next request, with the next user's request behind it.
    upstream.handler = _echo_body
    smuggled = b"GET /user/alice/smuggled HTTP/1.1\r\nX: "
    reader, writer = await connect(proxy)
    writer.write(get("/user/alice/post", proxy, b"Connection: keep-alive, Content-Length\r\n"
                     b"Content-Length: %d\r\n" % len(smuggled), b"POST") + smuggled)
    status, _, body = await read_response(reader)
    assert (status, body) == (200, smuggled)  # the server got it as the POST's body
    writer.write(get("/user/alice/next", proxy))
    assert (await read_response(reader))[:1] == (200,)
    assert [h.split(b" ", 2)[1] for h in upstream.heads] == [b"/user/alice/post",
                                                             b"/user/alice/next"]


async def test_a_request_with_a_body_is_not_resent_on_a_fresh_connection(
        proxy: EdgeProxy, upstream: Scripted) -> None:
    # Its body went out as it arrived and is not kept: sending the head again alone would
    # leave the server waiting for a body that never comes (and the user for a 504).
    upstream.handler = once_per_connection(_echo_body)
    reader, writer = await connect(proxy)
    writer.write(get("/user/alice/first", proxy))
    assert (await read_response(reader))[:1] == (200,)
    writer.write(get("/user/alice/save", proxy, b"Content-Length: 5\r\n", b"PUT") + b"hello")
    status, _, body = await read_response(reader)
    assert status == 502 and b"answered badly" in body  # at once, not a 504 much later
    assert upstream.connections == 1  # not sent again without its body


async def test_backpressure_pauses_the_upstream(proxy: EdgeProxy, upstream: Scripted) -> None:
    size = 64 * 1024 * 1024
    sent = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    head: bytes) -> bool:
        nonlocal sent
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"x" * 65536
        while sent < size:
            writer.write(block)
            await writer.drain()
            sent += len(block)
        return True

    upstream.handler = flood
    reader, writer = await connect(proxy)
    writer.write(get("/user/alice/big", proxy))
    await asyncio.sleep(0.5)  # the client reads nothing yet
    assert sent < size // 2  # the proxy stopped reading instead of buffering it all
    digest = hashlib.sha256()
    await reader.readuntil(b"\r\n\r\n")
    received = 0
    while received < size:
        chunk = await reader.read(1 << 20)
        assert chunk
        received += len(chunk)
        digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(b"x" * size).hexdigest()


async def test_upstream_errors_are_pages(proxy: EdgeProxy, upstream: Scripted) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     head: bytes) -> bool:
        await asyncio.sleep(3)
        return False

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      head: bytes) -> bool:
        writer.write(b"NOT HTTP\r\n\r\n")
        return False

    reader, writer = await connect(proxy)
    upstream.handler = silent
    writer.write(get("/user/alice/slow", proxy))
    status, _, body = await read_response(reader)
    assert status == 504 and b"did not answer in time" in body
    upstream.handler = garbage
    writer.write(get("/user/alice/bad", proxy, b"Accept: text/html\r\n"))
    status, headers, body = await read_response(reader)
    assert status == 502 and headers["content-type"].startswith("text/html")
    assert b"answered badly" in body
    await upstream.stop()
    upstream.handler = _ok
    writer.write(get("/user/alice/gone", proxy))
    status, _, body = await read_response(reader)
    assert status == 503 and b"is not reachable" in body


async def test_malformed_and_oversized_requests(proxy: EdgeProxy) -> None:
    reader, writer = await connect(proxy)
    writer.write(b"GET /user/alice/ HTTP/1.1\r\nBad Header\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 400
    assert await asyncio.wait_for(reader.read(), 5) == b""
    reader, writer = await connect(proxy)
    writer.write(b"GET /user/alice/ HTTP/1.1\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 431
    assert await asyncio.wait_for(reader.read(), 5) == b""


@pytest.mark.parametrize("request_bytes", [
    b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    b"OPTIONS * HTTP/1.0\r\n\r\n",
    b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
    b"GET /user/alice/ HTTP/1.1\r\n\r\n",  # no Host
    b"GET /user/alice/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /user/alice/ HTTP/1.1\nHost: a\n\n",  # bare LF: the head would never end
    b"\r\nGET /user/alice/ HTTP/1.1\nHost: a\n\n",  # the same after a stray empty line
])
async def test_requests_no_server_should_see_get_a_400_at_once(
    proxy: EdgeProxy, upstream: Scripted, request_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = len(upstream.heads)
    reader, writer = await connect(proxy)
    writer.write(request_bytes)
    status, _, body = await read_response(reader)
    assert status == 400 and b"malformed request" in body
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert len(upstream.heads) == seen
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # no traceback either


async def test_a_malformed_request_after_a_hand_over_is_one_info_line_not_a_traceback(
    proxy: EdgeProxy, caplog: pytest.LogCaptureFixture,
) -> None:
    reader, writer = await connect(proxy)
    with caplog.at_level(logging.INFO, logger="fedhub.edge_proxy.http"):
        # handed over with what follows it; aiohttp's parser refuses the second request
        writer.write(b"GET /_fedhub/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                     b"POST /user/alice/x HTTP/1.0\r\nContent-Length: 1\r\n"
                     b"Content-Length: 2\r\n\r\nab")
        assert (await read_response(reader))[0] == 400
        await asyncio.wait_for(reader.read(), 5)
    told = [r for r in caplog.records if r.name == "fedhub.edge_proxy.http"]
    assert [(r.levelname, r.exc_info) for r in told] == [("INFO", None)]
    assert "400" in told[0].getMessage() and "Content-Length" in told[0].getMessage()


async def test_an_asterisk_target_after_a_hand_over_gets_a_400(
    proxy: EdgeProxy, caplog: pytest.LogCaptureFixture,
) -> None:
    reader, writer = await connect(proxy)  # HTTP/1.0 keep-alive: aiohttp's from the start
    writer.write(b"GET /_fedhub/health HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
                 b"OPTIONS * HTTP/1.0\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    status, _, body = await read_response(reader)
    assert status == 400 and b"malformed request" in body
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_empty_lines_before_a_request_are_skipped(
    proxy: EdgeProxy, upstream: Scripted
) -> None:
    reader, writer = await connect(proxy)  # RFC 9112 2.2: a server ignores them
    writer.write(b"\r\n\r\n" + get("/user/alice/after-blank-lines", proxy))
    assert (await read_response(reader))[2] == b"/user/alice/after-blank-lines"


@pytest.mark.parametrize("body", [
    b"0x3\r\nabc\r\n0\r\n\r\n",  # Python's int() reads 0x3; servers do not
    b"3\nabc\n0\n\n",  # bare LF
    b"3\r\nabc\r\n0\r\nX-Fedhub-Assertion: forged\r\n\r\n",  # a trailer
])
async def test_a_chunked_body_servers_would_read_otherwise_is_refused(
    proxy: EdgeProxy, upstream: Scripted, body: bytes
) -> None:
    got: list[bytes] = []

    async def read_all(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       head: bytes) -> bool:
        try:  # all the proxy sends after the head, until it closes the connection
            got.append(await asyncio.wait_for(reader.read(), 5))
        except TimeoutError:
            got.append(b"(the proxy kept the connection open)")
        return False  # never answers: the proxy must answer by itself

    upstream.handler = read_all
    reader, writer = await connect(proxy)
    writer.write(get("/user/alice/up", proxy, b"Transfer-Encoding: chunked\r\n",
                     method=b"POST") + body)
    status, _, answer = await read_response(reader)
    assert status == 400 and b"malformed request body" in answer
    await until(lambda: got, what="the upstream to see its connection end")
    assert got == [b""]  # no byte of the body reached the server


@pytest.mark.parametrize("framing", [
    b"Content-Length: 3\r\nContent-Length: 13\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
])
async def test_a_request_with_two_framings_is_refused_not_forwarded(
    proxy: EdgeProxy, upstream: Scripted, framing: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # Which framing wins is what request smuggling exploits: nothing reaches the server.
    reader, writer = await connect(proxy)
    seen = len(upstream.heads)
    writer.write(get("/user/alice/s", proxy, framing, method=b"POST") + b"abcGET /x HTTP/1.1\r\n")
    status, _, _ = await read_response(reader)
    assert status == 400
    assert len(upstream.heads) == seen
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # a client's fault


async def test_other_requests_are_handed_to_aiohttp_mid_connection(
    proxy: EdgeProxy, upstream: Scripted
) -> None:
    reader, writer = await connect(proxy)
    writer.write(get("/user/alice/a", proxy))
    assert (await read_response(reader))[0] == 200
    writer.write(b"GET /_fedhub/health HTTP/1.1\r\nHost: x\r\n\r\n" + get("/user/bob/x", proxy))
    status, _, body = await read_response(reader)
    assert status == 200 and b'"ready": true' in body
    status, _, body = await read_response(reader)  # alice may not use bob's server
    assert status == 403
    writer.write(get("/user/alice/b", proxy))  # aiohttp's own forwarding from now on
    assert (await read_response(reader))[2] == b"/user/alice/b"
    reader, writer = await connect(proxy)
    writer.write(b"GET /user/alice/old HTTP/1.0\r\n" + auth(proxy) + b"\r\n\r\n")
    assert (await read_response(reader))[2] == b"/user/alice/old"


async def test_websocket_is_piped(proxy: EdgeProxy, tmp_path: Path) -> None:
    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("p1",))
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str(f"{request.headers.get('X-Fedhub-Assertion', '')[:3]}"
                              f":{msg.data}")
        return ws

    app = web.Application()
    app.router.add_get("/{tail:.*}", ws_handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    world = world_of(proxy)
    await add_route(proxy, "bob", f"http://127.0.0.1:{port}")
    token = world.api_token("bob", jti="tok-bob")
    try:
        async with aiohttp.ClientSession() as session, session.ws_connect(
            f"{proxy.url}/user/bob/ws", headers={"Authorization": f"token {token}"},
            protocols=("p1",),
        ) as ws:
            assert ws.protocol == "p1"
            for i in range(20):
                await ws.send_str(f"m{i}")
                assert await ws.receive_str(timeout=5) == f"eyJ:m{i}"
    finally:
        await runner.cleanup()


async def test_with_the_access_log_on_aiohttp_answers_and_logs_every_request(
    upstream: Scripted, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = World()
    store = MemoryStore()
    for env in [*world.keys(), world.user("alice"),
                world.route("alice", f"http://127.0.0.1:{upstream.port}")]:
        await store.append(env)
    settings = EdgeProxySettings(port=free_port(), hub_url="http://127.0.0.1:9",
                                 data_dir=tmp_path, tunnel_port=-1, access_log=True)
    proxy = EdgeProxy(settings, store)
    await proxy.start()
    try:
        with caplog.at_level("INFO", logger="fedhub.edge_proxy.proxy"):
            async with aiohttp.ClientSession() as session, session.get(
                f"{proxy.url}/user/alice/logged",
                headers={"Authorization": f"token {world.api_token('alice')}"},
            ) as resp:
                assert resp.status == 200 and await resp.read() == b"/user/alice/logged"
        assert any("/user/alice/logged" in r.getMessage() for r in caplog.records)
    finally:
        await proxy.stop()


class _Refusing:
    """An SSH connection whose agent refuses every channel (its server does not answer)."""

    async def create_connection(self, *args: object, **kwargs: object) -> None:
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "Connection refused")


@pytest.mark.parametrize(("tunnel", "accept", "message"), [
    ("gone", "", "the site site1 is unreachable (no tunnel from its agent)"),
    ("gone", "text/html", "the site site1 is unreachable (no tunnel from its agent)"),
    ("refused", "", "bob._ at site site1 is not reachable through its tunnel"),
])
async def test_a_bridge_that_cannot_open_a_channel_says_why_and_the_fast_path_relays_it(
    proxy: EdgeProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tunnel: str,
    accept: str, message: str
) -> None:
    def locate() -> tuple[asyncssh.SSHServerConnection, int]:
        if tunnel == "gone":  # as the proxy's locator says when the site has no link
            raise LookupError("the tunnel is gone")
        return cast(asyncssh.SSHServerConnection, _Refusing()), 1

    world = world_of(proxy)
    await add_route(proxy, "bob", "tunnel://site1/bob._", site="site1")
    bridge = Bridge(tmp_path / "bob.sock", "bob._ at site site1", "site1", "bob._", locate,
                    1.0)
    await bridge.start()
    # The bridge was up when the request was planned; its tunnel went before the channel.
    monkeypatch.setattr(proxy, "bridge_address", lambda target: bridge.address)
    try:
        reader, writer = await connect(proxy)
        token = world.api_token("bob", jti="tok-bob").encode()
        writer.write(b"GET /user/bob/x HTTP/1.1\r\nHost: h\r\nAuthorization: token " + token
                     + (b"\r\nAccept: " + accept.encode() if accept else b"") + b"\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 503
        if accept:
            assert headers["content-type"].startswith("text/html")
            assert message.encode() in body
        else:
            assert json.loads(body) == {"status": 503, "message": message}
        writer.write(get("/user/alice/after", proxy))  # the client's connection lives on
        assert (await read_response(reader))[2] == b"/user/alice/after"
    finally:
        await bridge.close()


async def test_a_target_the_fast_path_cannot_send_to_is_handed_to_aiohttp(
    proxy: EdgeProxy, upstream: Scripted
) -> None:
    # The fast path sends the request's own target; a route's path is aiohttp's to add.
    await add_route(proxy, "alice", f"http://127.0.0.1:{upstream.port}/prefix")
    route = proxy.state.routes.match("/user/alice/")
    assert route is not None and route.address is None
    reader, writer = await connect(proxy)
    writer.write(get("/user/alice/x", proxy))
    assert (await read_response(reader))[2] == b"/prefix/user/alice/x"


def test_a_client_is_idle_between_requests_only_and_never_while_closing() -> None:
    client = Client(cast(Front, None))
    assert client.idle
    client.exchange = cast(Exchange, object())
    assert not client.idle
    client.exchange = None
    assert client.idle
    client.close()  # its last answer may still be on its way: the sweeper must wait
    assert not client.idle
