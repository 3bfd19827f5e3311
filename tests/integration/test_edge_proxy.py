"""The edge proxy in-process against an in-memory log, a real upstream and a fake hub."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from fedhub.edge_proxy.proxy import EdgeProxy
from fedhub.edge_proxy.settings import EdgeProxySettings
from fedhub.events.memory import MemoryStore
from fedhub.events.signing import KeyRing
from fedhub.events.store import EventStore
from fedhub.schemas import subjects
from fedhub.schemas.events import KeyPublished
from tests.support.services import free_port
from tests.unit.edge_proxy.factories import World

BIG = 10 * 1024 * 1024
HTML = {"Accept": "text/html,application/xhtml+xml"}


@dataclass
class Upstream:
    """A stand-in Jupyter server: echoes what it received, streams, echoes WebSockets."""

    port: int
    seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def _serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def _upstream_app(up: Upstream) -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse(protocols=("v1.kernel.websocket.jupyter.org",))
            await ws.prepare(request)
            up.seen.append({"ws_protocol": ws.ws_protocol,
                            "headers": dict(request.headers)})
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT:
                    await ws.send_str(f"echo:{msg.data}")
                elif msg.type is aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data[::-1])
            return ws
        tail = request.path.rsplit("/", 1)[-1]
        if tail == "big":
            resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            await resp.prepare(request)
            for _ in range(BIG // 65536):
                await resp.write(b"x" * 65536)
            await resp.write_eof()
            return resp
        if tail == "slow":
            await asyncio.sleep(1.5)
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        up.seen.append({"headers": dict(request.headers), "path": request.raw_path})
        resp = web.json_response({"path": request.raw_path, "size": size,
                                  "sha256": digest.hexdigest(), "method": request.method})
        resp.set_cookie("jupyter-thing", "1")
        resp.headers.add("Set-Cookie", "other=2; Path=/")
        return resp

    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def _hub_app_runner(port: int) -> web.AppRunner:
    async def hub(request: web.Request) -> web.Response:
        return web.json_response({"hub": request.raw_path,
                                  "cookie": request.headers.get("Cookie", "")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hub)
    return await _serve(app, port)


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    up = Upstream(free_port())
    runner = await _serve(_upstream_app(up), up.port)
    yield up
    await runner.cleanup()


@pytest.fixture
async def hub_url() -> AsyncIterator[str]:
    port = free_port()
    runner = await _hub_app_runner(port)
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
def world() -> World:
    return World()


async def seed(store: EventStore, world: World, upstream: Upstream) -> None:
    for env in [*world.keys(), world.user("alice"), world.user("bob"),
                world.user("root", admin=True), world.route("alice", upstream.url)]:
        await store.append(env)


def make_proxy(store: EventStore, hub_url: str, tmp_path: Path, **extra: Any) -> EdgeProxy:
    settings = EdgeProxySettings(port=free_port(), hub_url=hub_url, data_dir=tmp_path, **extra)
    return EdgeProxy(settings, store)


@pytest.fixture
async def store(world: World, upstream: Upstream) -> MemoryStore:
    store = MemoryStore()
    await seed(store, world, upstream)
    return store


@pytest.fixture
async def proxy(store: MemoryStore, hub_url: str, tmp_path: Path) -> AsyncIterator[EdgeProxy]:
    proxy = make_proxy(store, hub_url, tmp_path)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def proxy_ring(proxy: EdgeProxy) -> KeyRing:
    ring = KeyRing()
    ring.add_signing_key(proxy.key, "edge-proxy", proxy.settings.name)
    return ring


async def get(client: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any, Any]:
    # encoded=True: send the path and query exactly as written (no re-quoting by yarl)
    async with client.get(URL(url, encoded=True), allow_redirects=False, **kw) as resp:
        body = await resp.read()
        try:
            data: Any = json.loads(body)
        except ValueError:
            data = body.decode(errors="replace")
        return resp.status, resp.headers, data


async def test_key_published_and_health(proxy: EdgeProxy, store: MemoryStore,
                                        client: aiohttp.ClientSession) -> None:
    stored = await store.last(subjects.key(proxy.key.kid))
    assert stored is not None and stored.event.actor == "edge-proxy:edge"
    published: KeyPublished = stored.event.payload_as(KeyPublished)
    assert (published.role, published.name) == ("edge-proxy", "edge")
    status, _, body = await get(client, f"{proxy.url}/_fedhub/health")
    assert status == 200 and body["ready"] is True and body["routes"] == 1
    # Rebuilt routes are signature-checked in the background: the count reaches 0.
    for _ in range(100):
        if body["unchecked"] == 0:
            break
        await asyncio.sleep(0.02)
        _, _, body = await get(client, f"{proxy.url}/_fedhub/health")
    assert body["unchecked"] == 0


async def test_cookie_request_reaches_server_with_assertion_not_cookie(
    proxy: EdgeProxy, world: World, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    cookie = f"_xsrf=abc; fedhub-session={world.session('alice')}"
    status, headers, body = await get(
        client, f"{proxy.url}/user/al%69ce/api/contents?a=%2F1",
        headers={"Cookie": cookie, "X-Forwarded-For": "10.1.1.1"})
    assert status == 200 and body["path"] == "/user/al%69ce/api/contents?a=%2F1"
    assert sorted(headers.getall("Set-Cookie")) == ["jupyter-thing=1; Path=/", "other=2; Path=/"]
    seen = upstream.seen[-1]["headers"]
    assert seen["Cookie"] == "_xsrf=abc"
    assert seen["Host"] == f"127.0.0.1:{proxy.settings.port}"
    assert seen["X-Forwarded-For"] == "10.1.1.1, 127.0.0.1"
    assert seen["X-Forwarded-Proto"] == "http"
    claims = proxy_ring(proxy).decode_token(
        seen["X-Fedhub-Assertion"], typ="assertion", roles=frozenset({"edge-proxy"}))
    assert (claims["sub"], claims["prefix"], claims["adm"]) == ("alice", "/user/alice/", False)


async def test_api_token_in_header_or_query_is_not_forwarded(
    proxy: EdgeProxy, world: World, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    token = world.api_token("alice")
    status, _, _ = await get(client, f"{proxy.url}/user/alice/api",
                             headers={"Authorization": f"token {token}"})
    assert status == 200 and "Authorization" not in upstream.seen[-1]["headers"]
    status, _, body = await get(client, f"{proxy.url}/user/alice/api?x=1&token={token}")
    assert status == 200 and body["path"] == "/user/alice/api?x=1"
    # authenticated by the header, the query's token is still a fedhub credential
    status, _, body = await get(client, f"{proxy.url}/user/alice/api?token={token}&y=2",
                                headers={"Authorization": f"token {token}"})
    assert status == 200 and body["path"] == "/user/alice/api?y=2"


async def test_forged_assertion_is_replaced(
    proxy: EdgeProxy, world: World, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    forged = world.coordinator.token({"typ": "assertion", "sub": "root", "adm": True})
    status, _, _ = await get(client, f"{proxy.url}/user/alice/", headers={
        "Authorization": f"bearer {world.api_token('alice')}", "X-Fedhub-Assertion": forged})
    assert status == 200
    assertion = upstream.seen[-1]["headers"]["X-Fedhub-Assertion"]
    assert assertion != forged
    claims = proxy_ring(proxy).decode_token(
        assertion, typ="assertion", roles=frozenset({"edge-proxy"}))
    assert claims["sub"] == "alice"


async def test_other_user_is_forbidden(
    proxy: EdgeProxy, world: World, client: aiohttp.ClientSession
) -> None:
    cookie = {"Cookie": f"fedhub-session={world.session('bob')}"}
    status, _, body = await get(client, f"{proxy.url}/user/alice/api", headers=cookie)
    assert status == 403 and "bob" in body["message"] and "alice" in body["message"]
    status, headers, page = await get(client, f"{proxy.url}/user/alice/lab",
                                      headers={**cookie, **HTML})
    assert status == 403 and headers["Content-Type"].startswith("text/html")
    assert "belongs to alice" in page
    # An admin is refused too unless the proxy is configured with admin_access.
    root = {"Cookie": f"fedhub-session={world.session('root')}"}
    status, _, _ = await get(client, f"{proxy.url}/user/alice/api", headers=root)
    assert status == 403


async def test_admin_access(
    store: MemoryStore, hub_url: str, tmp_path: Path, world: World, upstream: Upstream,
    client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture,
) -> None:
    proxy = make_proxy(store, hub_url, tmp_path, admin_access=True)
    with caplog.at_level(logging.WARNING, logger="fedhub.edge_proxy"):
        await proxy.start()
    try:
        # the operator is told what the setting risks
        assert any("admin_access is on" in r.getMessage() and "session" in r.getMessage()
                   for r in caplog.records)
        root = {"Cookie": f"fedhub-session={world.session('root')}"}
        status, _, _ = await get(client, f"{proxy.url}/user/alice/api", headers=root)
        assert status == 200
        claims = proxy_ring(proxy).decode_token(
            upstream.seen[-1]["headers"]["X-Fedhub-Assertion"], typ="assertion",
            roles=frozenset({"edge-proxy"}))
        assert (claims["sub"], claims["adm"]) == ("root", True)
    finally:
        await proxy.stop()


async def test_unauthenticated(proxy: EdgeProxy, client: aiohttp.ClientSession) -> None:
    status, headers, _ = await get(client, f"{proxy.url}/user/alice/lab?x=1", headers=HTML)
    assert status == 302
    assert headers["Location"] == "/hub/login?next=%2Fuser%2Falice%2Flab%3Fx%3D1"
    status, _, body = await get(client, f"{proxy.url}/user/alice/api",
                                headers={"Cookie": "fedhub-session=forged.token"})
    assert status == 401 and body["message"].startswith("not accepted (session: ")
    status, _, body = await get(client, f"{proxy.url}/user/alice/api")  # nothing sent
    assert status == 401 and body["message"].startswith("authentication required: log in")
    status, _, body = await get(client, f"{proxy.url}/user/alice/api",
                                headers={"Authorization": "token bogus"})
    assert status == 401 and "API token: " in body["message"] and "valid" in body["message"]


async def test_revocation_applies_live(
    proxy: EdgeProxy, store: MemoryStore, world: World, client: aiohttp.ClientSession
) -> None:
    cookie = {"Cookie": f"fedhub-session={world.session('alice', sid='live')}"}
    assert (await get(client, f"{proxy.url}/user/alice/", headers=cookie))[0] == 200
    await store.append(world.logout("alice", "live"))
    await asyncio.sleep(0.05)
    assert (await get(client, f"{proxy.url}/user/alice/", headers=cookie))[0] == 401


async def test_route_removed_live_redirects_to_hub(
    proxy: EdgeProxy, store: MemoryStore, world: World, client: aiohttp.ClientSession
) -> None:
    cookie = {"Cookie": f"fedhub-session={world.session('alice')}"}
    await store.append(world.unroute("alice"))
    await asyncio.sleep(0.05)
    status, headers, _ = await get(client, f"{proxy.url}/user/alice/lab",
                                   headers={**cookie, **HTML})
    assert status == 302 and headers["Location"] == "/hub/user/alice/"
    assert headers["Set-Cookie"].startswith("fedhub-redirects=1; Path=/user/alice/")
    status, _, body = await get(client, f"{proxy.url}/user/alice/api", headers=cookie)
    assert status == 503 and "server not running" in body["message"]
    # The hub sent the browser straight back a few times: stop redirecting.
    looped = {"Cookie": f"{cookie['Cookie']}; fedhub-redirects=3", **HTML}
    status, _, page = await get(client, f"{proxy.url}/user/alice/lab", headers=looped)
    assert status == 503 and "not running" in page


async def test_route_arriving_while_redirected_is_used(
    proxy: EdgeProxy, store: MemoryStore, world: World, upstream: Upstream,
    client: aiohttp.ClientSession,
) -> None:
    await store.append(world.unroute("alice"))
    await asyncio.sleep(0.05)
    headers = {"Cookie": f"fedhub-session={world.session('alice')}; fedhub-redirects=1", **HTML}
    request = asyncio.ensure_future(get(client, f"{proxy.url}/user/alice/lab", headers=headers))
    await asyncio.sleep(0.2)
    await store.append(world.route("alice", upstream.url))
    status, _, body = await request
    assert status == 200 and body["path"] == "/user/alice/lab"
    # The coordinator's own counter (?redirects=N) makes the proxy wait as well.
    await store.append(world.unroute("alice"))
    await asyncio.sleep(0.05)
    headers = {"Cookie": f"fedhub-session={world.session('alice')}", **HTML}
    request = asyncio.ensure_future(
        get(client, f"{proxy.url}/user/alice/?redirects=1", headers=headers))
    await asyncio.sleep(0.2)
    await store.append(world.route("alice", upstream.url))
    status, _, body = await request
    assert status == 200 and body["path"] == "/user/alice/?redirects=1"


async def test_named_server_redirect(
    proxy: EdgeProxy, store: MemoryStore, world: World, upstream: Upstream,
    client: aiohttp.ClientSession,
) -> None:
    await store.append(world.route("alice", upstream.url, server="gpu"))
    await store.append(world.unroute("alice", "gpu"))
    await asyncio.sleep(0.05)
    headers = {"Cookie": f"fedhub-session={world.session('alice')}", **HTML}
    status, resp_headers, _ = await get(client, f"{proxy.url}/user/alice/gpu/lab",
                                        headers=headers)
    assert status == 200  # the default server's route still matches /user/alice/
    await store.append(world.unroute("alice"))
    await asyncio.sleep(0.05)
    status, resp_headers, _ = await get(client, f"{proxy.url}/user/alice/gpu/lab",
                                        headers=headers)
    assert status == 302 and resp_headers["Location"] == "/hub/user/alice/gpu"


async def test_upstream_down_is_503_with_message(
    proxy: EdgeProxy, store: MemoryStore, world: World, client: aiohttp.ClientSession
) -> None:
    await store.append(world.route("bob", f"http://127.0.0.1:{free_port()}", site="hpc"))
    await asyncio.sleep(0.05)
    cookie = {"Cookie": f"fedhub-session={world.session('bob')}"}
    status, _, body = await get(client, f"{proxy.url}/user/bob/api", headers=cookie)
    assert status == 503
    assert body["message"] == "the server of bob at site hpc is not reachable"
    status, _, page = await get(client, f"{proxy.url}/user/bob/lab", headers={**cookie, **HTML})
    assert status == 503 and "is not reachable" in page


async def test_upstream_timeout_is_504(
    store: MemoryStore, hub_url: str, tmp_path: Path, world: World,
    client: aiohttp.ClientSession,
) -> None:
    proxy = make_proxy(store, hub_url, tmp_path, upstream_timeout=0.3)
    await proxy.start()
    try:
        status, _, body = await get(
            client, f"{proxy.url}/user/alice/slow",
            headers={"Cookie": f"fedhub-session={world.session('alice')}"})
        assert status == 504 and "did not answer in time" in body["message"]
    finally:
        await proxy.stop()


async def test_websocket_echo(
    proxy: EdgeProxy, world: World, upstream: Upstream, client: aiohttp.ClientSession
) -> None:
    headers = {"Cookie": f"fedhub-session={world.session('alice')}",
               "Origin": proxy.url}
    async with client.ws_connect(
        f"{proxy.url}/user/alice/api/kernels/k1/channels", headers=headers,
        protocols=("v1.kernel.websocket.jupyter.org",),
    ) as ws:
        assert ws.protocol == "v1.kernel.websocket.jupyter.org"
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "echo:hello"
        await ws.send_bytes(b"\x01\x02\x03")
        assert await ws.receive_bytes(timeout=5) == b"\x03\x02\x01"
    seen = upstream.seen[-1]
    assert seen["ws_protocol"] == "v1.kernel.websocket.jupyter.org"
    assert seen["headers"]["Origin"] == proxy.url
    assert "X-Fedhub-Assertion" in seen["headers"]
    assert "fedhub-session" not in seen["headers"].get("Cookie", "")


async def test_websocket_to_unreachable_server_is_503(
    proxy: EdgeProxy, store: MemoryStore, world: World, client: aiohttp.ClientSession
) -> None:
    await store.append(world.route("bob", f"http://127.0.0.1:{free_port()}"))
    await asyncio.sleep(0.05)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"{proxy.url}/user/bob/ws",
                                headers={"Cookie": f"fedhub-session={world.session('bob')}"})
    assert info.value.status == 503


async def test_large_upload_and_download_are_streamed(
    proxy: EdgeProxy, world: World, client: aiohttp.ClientSession
) -> None:
    headers = {"Authorization": f"token {world.api_token('alice')}"}

    async def body() -> AsyncIterator[bytes]:
        for i in range(BIG // 65536):
            yield bytes([i % 256]) * 65536

    expected = hashlib.sha256()
    for i in range(BIG // 65536):
        expected.update(bytes([i % 256]) * 65536)
    async with client.put(f"{proxy.url}/user/alice/upload", data=body(),
                          headers=headers) as resp:
        result = await resp.json()
    assert resp.status == 200
    assert (result["size"], result["sha256"]) == (BIG, expected.hexdigest())
    async with client.get(f"{proxy.url}/user/alice/big", headers=headers) as resp:
        size = 0
        async for chunk in resp.content.iter_any():
            size += len(chunk)
    assert resp.status == 200 and size == BIG


async def test_hub_paths_go_to_the_hub_unauthenticated(
    proxy: EdgeProxy, client: aiohttp.ClientSession
) -> None:
    status, headers, _ = await get(client, f"{proxy.url}/")
    assert status == 302 and headers["Location"] == "/hub/"
    status, _, body = await get(client, f"{proxy.url}/hub/login?next=%2Fuser%2Fa",
                                headers={"Cookie": "fedhub-session=abc"})
    assert status == 200
    assert body == {"hub": "/hub/login?next=%2Fuser%2Fa", "cookie": "fedhub-session=abc"}
    status, _, body = await get(client, f"{proxy.url}/favicon.ico")
    assert status == 200 and body["hub"] == "/favicon.ico"


async def test_restarted_proxy_rebuilds_routes_from_the_log(
    proxy: EdgeProxy, store: MemoryStore, hub_url: str, tmp_path: Path, world: World,
    upstream: Upstream, client: aiohttp.ClientSession,
) -> None:
    await store.append(world.route("bob", upstream.url))
    await store.append(world.logout("alice", "gone"))
    await proxy.stop()
    again = make_proxy(store, hub_url, tmp_path)
    await again.start()
    try:
        assert again.key.kid == proxy.key.kid  # same data dir, same key
        assert {r.user for r in again.state.routes.routes()} == {"alice", "bob"}
        assert "gone" in again.state.revoked_sessions
        status, _, _ = await get(client, f"{again.url}/user/bob/api",
                                 headers={"Cookie": f"fedhub-session={world.session('bob')}"})
        assert status == 200
    finally:
        await again.stop()


async def test_not_ready_answers_503(store: MemoryStore, hub_url: str, tmp_path: Path) -> None:
    from aiohttp.test_utils import make_mocked_request

    proxy = make_proxy(store, hub_url, tmp_path)
    resp = await proxy.handle(make_mocked_request("GET", "/user/alice/"))
    assert resp.status == 503
    assert isinstance(resp, web.Response) and resp.text is not None
    assert "edge proxy starting" in resp.text
    health = await proxy.handle(make_mocked_request("GET", "/_fedhub/health"))
    assert health.status == 503


async def test_against_jetstream(
    nats_url: str, hub_url: str, tmp_path: Path, world: World, upstream: Upstream,
    client: aiohttp.ClientSession,
) -> None:
    from fedhub.events.jetstream import JetStreamStore

    store = await JetStreamStore.connect(nats_url)
    proxy: EdgeProxy | None = None
    try:
        await seed(store, world, upstream)
        proxy = make_proxy(store, hub_url, tmp_path)
        await proxy.start()
        cookie = {"Cookie": f"fedhub-session={world.session('alice')}"}
        assert (await get(client, f"{proxy.url}/user/alice/api", headers=cookie))[0] == 200
        await store.append(world.unroute("alice"))
        for _ in range(50):
            if not len(proxy.state.routes):
                break
            await asyncio.sleep(0.05)
        status, _, _ = await get(client, f"{proxy.url}/user/alice/api", headers=cookie)
        assert status == 503
    finally:
        if proxy is not None:
            await proxy.stop()
        await store.close()
