"""Tunnels for real: an edge proxy, an agent's tunnel manager and a real SSH connection
(asyncssh on loopback) between them, a real upstream behind the agent, and the log in
memory or in a real nats-server."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncssh
import pytest
import uvloop  # the proxy's loop; a dependency (uvicorn[standard])

from fedhub.edge_proxy.proxy import EdgeProxy
from fedhub.edge_proxy.settings import EdgeProxySettings
from fedhub.events.envelope import new_event
from fedhub.events.memory import MemoryStore
from fedhub.events.signing import SigningKey
from fedhub.events.sshkeys import ssh_private_key, ssh_public_key
from fedhub.events.store import EventStore
from fedhub.schemas import subjects
from fedhub.schemas.events import EdgeProxyStarted, KeyRevoked
from fedhub.site_agent.keys import KeyBook
from fedhub.site_agent.tunnel import TunnelManager
from tests.integration.test_edge_proxy import BIG, Upstream, _serve, _upstream_app, get
from tests.support.polling import until
from tests.support.services import free_port
from tests.unit.edge_proxy.factories import World, enrolled_key_event

SITE = "site1"
KEY = "alice._"  # names.server_key("alice", "")


@dataclass
class Setup:
    world: World
    store: EventStore
    upstream: Upstream
    tmp: Path
    proxies: list[EdgeProxy]
    managers: list[TunnelManager]
    tasks: list[asyncio.Task[None]]

    def cookie(self) -> dict[str, str]:
        return {"Cookie": f"fedhub-session={self.world.session('alice')}"}

    async def proxy(self, name: str) -> EdgeProxy:
        settings = EdgeProxySettings(port=free_port(), hub_url="http://127.0.0.1:9",
                                     data_dir=self.tmp, name=name, tunnel_keepalive=1.0)
        proxy = EdgeProxy(settings, self.store)
        await proxy.start()
        self.proxies.append(proxy)
        return proxy

    async def agent(self, key: SigningKey, site: str = SITE) -> TunnelManager:
        keys = KeyBook(self.tmp / f"{site}-{len(self.managers)}-trusted-keys.json")
        manager = TunnelManager(site, key, self.store, keys, keepalive=1.0)
        self.managers.append(manager)
        self.tasks += [asyncio.create_task(keys.follow(self.store)),
                       asyncio.create_task(manager.run())]
        await manager.add_server(KEY, self.upstream.url, {}, wait=0)
        return manager


async def make_setup(store: EventStore, tmp: Path) -> Setup:
    world = World()
    up = Upstream(free_port())
    runner = await _serve(_upstream_app(up), up.port)
    for env in [*world.keys(), world.user("alice"),
                world.route("alice", f"tunnel://{SITE}/{KEY}", site=SITE)]:
        await store.append(env)
    setup = Setup(world, store, up, tmp, [], [], [])
    setup.tasks.append(asyncio.create_task(_cleanup_on_cancel(runner)))
    return setup


async def _cleanup_on_cancel(runner: Any) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


async def teardown(setup: Setup) -> None:
    for manager in setup.managers:
        await manager.close()
    for proxy in setup.proxies:
        await proxy.stop()
    for task in setup.tasks:
        task.cancel()
    await asyncio.gather(*setup.tasks, return_exceptions=True)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    s = await make_setup(MemoryStore(), tmp_path)
    yield s
    await teardown(s)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


def tunnelled(proxy: EdgeProxy, key: str = KEY) -> Callable[[], bool]:
    return lambda: proxy.tunnels.registry.lookup(SITE, key) is not None


async def check_traffic(proxy: EdgeProxy, setup: Setup, client: aiohttp.ClientSession) -> None:
    """GET, a 10 MB upload, a 10 MB download and a WebSocket echo through ``proxy``."""
    headers = setup.cookie()
    status, _, body = await get(client, f"{proxy.url}/user/alice/api/status?x=1",
                                headers=headers)
    assert status == 200 and body["path"] == "/user/alice/api/status?x=1", body
    assert setup.upstream.seen[-1]["headers"]["X-Fedhub-Assertion"]

    digest = hashlib.sha256()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(BIG // 65536):
            block = bytes([i % 251]) * 65536
            digest.update(block)
            yield block

    async with client.post(f"{proxy.url}/user/alice/upload", data=chunks(),
                           headers=headers) as resp:
        result = await resp.json()
    assert resp.status == 200
    assert (result["size"], result["sha256"]) == (BIG, digest.hexdigest())

    async with client.get(f"{proxy.url}/user/alice/big", headers=headers) as resp:
        size = sum([len(c) async for c in resp.content.iter_any()])
    assert resp.status == 200 and size == BIG

    async with client.ws_connect(f"{proxy.url}/user/alice/api/kernels/k/channels",
                                 headers=headers,
                                 protocols=("v1.kernel.websocket.jupyter.org",)) as ws:
        assert ws.protocol == "v1.kernel.websocket.jupyter.org"
        await ws.send_str("1+1")
        assert (await ws.receive_str(timeout=5)) == "echo:1+1"
        await ws.send_bytes(b"abc")
        assert (await ws.receive_bytes(timeout=5)) == b"cba"


async def test_announcement_is_signed_and_pins_the_host_key(setup: Setup) -> None:
    proxy = await setup.proxy("edge1")
    stored = await setup.store.last(subjects.proxy("edge1"))
    assert stored is not None and stored.event.kid == proxy.key.kid
    started = stored.event.payload_as(EdgeProxyStarted)
    assert (started.kid, started.tunnel_host, started.tunnel_port) == (
        proxy.key.kid, "127.0.0.1", proxy.tunnels.port)
    # A wrong host key for the same address is refused by the agent's side of SSH.
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await asyncssh.connect(
            "127.0.0.1", proxy.tunnels.port, username=SITE,
            client_keys=[ssh_private_key(setup.world.agent)],
            known_hosts=([ssh_public_key(SigningKey.generate().public_b64)], [], []),
            agent_path=None, config=None)


async def test_http_upload_download_and_websocket_through_the_tunnel(
    setup: Setup, client: aiohttp.ClientSession
) -> None:
    proxy = await setup.proxy("edge1")
    await setup.agent(setup.world.agent)
    await until(tunnelled(proxy), what="the forward")
    await check_traffic(proxy, setup, client)
    # keep-alive: many small requests reuse the bridged channel(s)
    for _ in range(50):
        status, _, _ = await get(client, f"{proxy.url}/user/alice/x", headers=setup.cookie())
        assert status == 200


async def test_the_fast_path_finds_a_started_bridge_at_once_and_needs_no_aiohttp_pool(
    setup: Setup, client: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = await setup.proxy("edge1")
    await setup.agent(setup.world.agent)
    await until(tunnelled(proxy), what="the forward")
    target = f"tunnel://{SITE}/{KEY}"
    status, _, _ = await get(client, f"{proxy.url}/user/alice/x", headers=setup.cookie())
    assert status == 200
    bridge = proxy.tunnels.ready(target)
    assert bridge is not None
    assert bridge._forwarder is None  # the fast path connects to the socket itself
    started: list[str] = []
    start = proxy.tunnels.bridge

    async def counted(target: str) -> Any:
        started.append(target)
        return await start(target)

    monkeypatch.setattr(proxy.tunnels, "bridge", counted)
    for _ in range(5):
        status, _, _ = await get(client, f"{proxy.url}/user/alice/x", headers=setup.cookie())
        assert status == 200
    assert started == []  # looked up without awaiting (or a task) every time
    # A request aiohttp forwards (HTTP/1.0 is handed over) opens the pool on first use.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.settings.port)
    writer.write(b"GET /user/alice/old HTTP/1.0\r\nCookie: " + setup.cookie()["Cookie"].encode()
                 + b"\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), 5)).split(b" ", 2)[1] == b"200"
    writer.close()
    await writer.wait_closed()
    assert bridge._forwarder is not None
    proxy.tunnels.registry.links[SITE].conn.abort()
    await until(lambda: SITE not in proxy.tunnels.registry.links, what="the loss")
    assert proxy.tunnels.ready(target) is None


async def test_a_key_that_is_not_enrolled_for_the_site_is_refused(
    setup: Setup, client: aiohttp.ClientSession
) -> None:
    proxy = await setup.proxy("edge1")
    other = SigningKey.generate()  # enrolled, but for another site
    await setup.store.append(enrolled_key_event(setup.world.coordinator, other, "site2"))
    for key in (SigningKey.generate(), other):
        with pytest.raises(asyncssh.PermissionDenied):
            await asyncssh.connect(
                "127.0.0.1", proxy.tunnels.port, username=SITE,
                client_keys=[ssh_private_key(key)],
                known_hosts=([ssh_public_key(proxy.key.public_b64)], [], []),
                agent_path=None, config=None)
    stranger = await setup.agent(SigningKey.generate())
    await until(lambda: bool(stranger.links), what="a link")
    await asyncio.sleep(1.0)
    assert [link.connects for link in stranger.links.values()] == [0]
    assert not proxy.tunnels.registry.links
    status, _, body = await get(client, f"{proxy.url}/user/alice/", headers=setup.cookie())
    assert status == 503
    assert body["message"] == f"the site {SITE} is unreachable (no tunnel from its agent)"


async def test_a_revoked_key_is_disconnected_and_refused(
    setup: Setup, client: aiohttp.ClientSession
) -> None:
    proxy = await setup.proxy("edge1")
    manager = await setup.agent(setup.world.agent)
    await until(tunnelled(proxy), what="the forward")
    revoke = new_event(subjects.key(setup.world.agent.kid),
                       KeyRevoked(kid=setup.world.agent.kid, reason="site removed"),
                       actor="coordinator", signer=setup.world.coordinator)
    await setup.store.append(revoke)
    await until(lambda: not proxy.tunnels.registry.links, what="the disconnect")
    status, _, body = await get(client, f"{proxy.url}/user/alice/", headers=setup.cookie())
    assert status == 503 and "unreachable" in body["message"]
    await asyncio.sleep(2.5)  # the agent keeps trying; the proxy keeps refusing
    assert not proxy.tunnels.registry.links
    assert [link.connects for link in manager.links.values()] == [1]


async def test_a_killed_connection_gives_503_then_the_agent_reconnects(
    setup: Setup, client: aiohttp.ClientSession
) -> None:
    proxy = await setup.proxy("edge1")
    manager = await setup.agent(setup.world.agent)
    await until(tunnelled(proxy), what="the forward")
    await check_traffic(proxy, setup, client)
    proxy.tunnels.registry.links[SITE].conn.abort()
    await until(lambda: SITE not in proxy.tunnels.registry.links, what="the loss")
    status, _, body = await get(client, f"{proxy.url}/user/alice/", headers=setup.cookie())
    assert status == 503
    assert body["message"] == f"the site {SITE} is unreachable (no tunnel from its agent)"
    status, headers, page = await get(client, f"{proxy.url}/user/alice/lab",
                                      headers={**setup.cookie(), "Accept": "text/html"})
    assert status == 503 and "the site site1 is unreachable" in page
    await until(tunnelled(proxy), what="the reconnect")
    assert [link.connects for link in manager.links.values()] == [2]
    await check_traffic(proxy, setup, client)


async def test_a_server_that_ended_is_no_longer_forwarded(
    setup: Setup, client: aiohttp.ClientSession
) -> None:
    proxy = await setup.proxy("edge1")
    manager = await setup.agent(setup.world.agent)
    await until(tunnelled(proxy), what="the forward")
    manager.remove_server(KEY)
    await until(lambda: not tunnelled(proxy)(), what="the forward's removal")
    status, _, _ = await get(client, f"{proxy.url}/user/alice/", headers=setup.cookie())
    assert status == 503
    await manager.add_server(KEY, setup.upstream.url, {})
    assert tunnelled(proxy)()  # add_server waited for the proxy to accept it
    status, _, _ = await get(client, f"{proxy.url}/user/alice/", headers=setup.cookie())
    assert status == 200


async def test_an_agent_keeps_a_tunnel_to_every_proxy(
    setup: Setup, client: aiohttp.ClientSession
) -> None:
    first = await setup.proxy("edge1")
    manager = await setup.agent(setup.world.agent)
    second = await setup.proxy("edge2")  # announced after the agent started
    await until(lambda: tunnelled(first)() and tunnelled(second)(), what="both forwards")
    assert sorted(manager.links) == ["edge1", "edge2"]
    await check_traffic(first, setup, client)
    await check_traffic(second, setup, client)
    await first.stop()
    setup.proxies.remove(first)
    await check_traffic(second, setup, client)


async def test_over_a_real_nats_server(nats_url: str, tmp_path: Path,
                                       client: aiohttp.ClientSession) -> None:
    from fedhub.events.jetstream import JetStreamStore

    store = await JetStreamStore.connect(nats_url, name="tunnel-test")
    setup = await make_setup(store, tmp_path)
    try:
        proxy = await setup.proxy("edge-nats")
        await setup.agent(setup.world.agent)
        await until(tunnelled(proxy), what="the forward")
        await check_traffic(proxy, setup, client)
    finally:
        await teardown(setup)
        await store.close()


def test_traffic_through_the_tunnel_on_uvloop(tmp_path: Path) -> None:
    """The proxy runs on uvloop in production, whose transports differ from asyncio's (they
    start reading after ``connection_made`` and are not ``asyncio.Transport`` instances)."""

    async def scenario() -> None:
        setup = await make_setup(MemoryStore(), tmp_path)
        try:
            proxy = await setup.proxy("edge-uvloop")
            await setup.agent(setup.world.agent)
            await until(tunnelled(proxy), what="the forward")
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as client:
                await check_traffic(proxy, setup, client)
                for _ in range(20):  # keep-alive reuse of bridged channels
                    status, _, _ = await get(client, f"{proxy.url}/user/alice/x",
                                             headers=setup.cookie())
                    assert status == 200
        finally:
            await teardown(setup)

    uvloop.run(scenario())
