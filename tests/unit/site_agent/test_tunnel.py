"""The agent's side of tunnels without a network: backoff, targets, which proxies to trust."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedhub.events.envelope import new_event
from fedhub.events.memory import MemoryStore
from fedhub.events.signing import SigningKey
from fedhub.events.sshkeys import public_b64, ssh_private_key, ssh_public_key
from fedhub.events.store import StoredEvent
from fedhub.schemas import subjects
from fedhub.schemas.events import EdgeProxyStarted, KeyPublished, KeyRevoked
from fedhub.site_agent.keys import KeyBook
from fedhub.site_agent.tunnel import (
    LOCAL_TARGET,
    TunnelManager,
    local_destination,
    tunnel_target,
)
from fedhub.site_agent.tunnel_link import BACKOFF_MAX, Endpoint, ProxyLink, backoff_delay
from tests.support.polling import until


def test_backoff_doubles_from_one_second_to_thirty_with_jitter() -> None:
    rng = random.Random(7)
    bases = [1, 2, 4, 8, 16, 30, 30, 30]
    for attempt, base in enumerate(bases):
        delays = [backoff_delay(attempt, rng) for _ in range(200)]
        assert all(0.8 * base <= d <= 1.2 * base for d in delays), (attempt, base)
        assert max(delays) - min(delays) > 0.2 * base  # really jittered
    assert backoff_delay(10_000, rng) <= 1.2 * BACKOFF_MAX  # no overflow, still capped


def test_targets() -> None:
    assert tunnel_target("hpc@uni", "alice._") == "tunnel://hpc_40uni/alice._"
    assert local_destination("http://127.0.0.1:8888") == ("127.0.0.1", 8888)
    assert local_destination("http://node7") == ("node7", 80)
    for bad in ("https://x:1", "tunnel://a/b._", "127.0.0.1:8888"):
        with pytest.raises(ValueError):
            local_destination(bad)


def stored(seq: int, env: object) -> StoredEvent:
    return StoredEvent(seq, env)  # type: ignore[arg-type]


def key_event(key: SigningKey, role: str, name: str) -> object:
    payload = KeyPublished(kid=key.kid, public_key=key.public_b64, role=role, name=name)
    return new_event(subjects.key(key.kid), payload, actor=f"{role}:{name}", signer=key)


def started(key: SigningKey, name: str, port: int = 2222, signer: SigningKey | None = None,
            subject_name: str | None = None) -> object:
    payload = EdgeProxyStarted(name=name, kid=key.kid, tunnel_host="127.0.0.1",
                               tunnel_port=port)
    return new_event(subjects.proxy(subject_name or name), payload, actor=f"edge-proxy:{name}",
                     signer=signer or key)


@pytest.fixture
async def manager(tmp_path: Path) -> AsyncIterator[TunnelManager]:
    keys = KeyBook(tmp_path / "trusted-keys.json")
    m = TunnelManager("site1", SigningKey.generate(), MemoryStore(), keys)
    yield m
    await m.close()


async def test_links_follow_trusted_announcements_only(manager: TunnelManager) -> None:
    proxy, coordinator, stranger = (SigningKey.generate() for _ in range(3))
    manager.keys.apply(stored(1, key_event(coordinator, "coordinator", "hub")))
    manager.announced(stored(2, started(proxy, "edge1")))
    assert manager.links == {}  # the proxy's key is not known yet
    manager.keys.apply(stored(3, key_event(proxy, "edge-proxy", "edge1")))
    assert list(manager.links) == ["edge1"]
    link = manager.links["edge1"]
    assert (link.endpoint.port, link.endpoint.kid) == (2222, proxy.kid)
    assert public_b64(link.endpoint.host_key) == proxy.public_b64

    # a forged announcement (another key signs for edge1) changes nothing
    manager.keys.apply(stored(4, key_event(stranger, "edge-proxy", "evil")))
    manager.announced(stored(5, started(stranger, "edge1", port=9999)))
    assert manager.links["edge1"] is link
    manager.announced(stored(6, started(proxy, "edge1", port=9999, signer=stranger)))
    assert manager.links["edge1"] is link
    manager.announced(stored(7, started(proxy, "edge1", subject_name="other")))
    assert manager.links["edge1"] is link

    # a restart on another port moves the link
    manager.announced(stored(8, started(proxy, "edge1", port=3333)))
    assert manager.links["edge1"] is not link and manager.links["edge1"].endpoint.port == 3333

    # revoking the proxy's key ends its tunnel
    revoke = new_event(subjects.key(proxy.kid), KeyRevoked(kid=proxy.kid),
                       actor="coordinator", signer=coordinator)
    manager.keys.apply(stored(9, revoke))
    assert manager.links == {}


@pytest.fixture
def dialled(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The ports the tunnel manager's links dial, in order (links record, never connect)."""
    ports: list[int] = []

    class Recorded(ProxyLink):
        def start(self) -> None:
            ports.append(self.endpoint.port)

    monkeypatch.setattr("fedhub.site_agent.tunnel.ProxyLink", Recorded)
    return ports


@contextlib.asynccontextmanager
async def following(store: MemoryStore, tmp_path: Path) -> AsyncIterator[TunnelManager]:
    """A manager that read the keys in ``store`` and follows its announcements."""
    keys = KeyBook(tmp_path / "trusted-keys.json")
    await keys.read(store)
    manager = TunnelManager("site1", SigningKey.generate(), store, keys)
    running = asyncio.ensure_future(manager.run())
    try:
        yield manager
    finally:
        running.cancel()
        await manager.close()


async def test_a_restarted_agent_dials_only_the_latest_endpoint_of_each_proxy(
    tmp_path: Path, dialled: list[int]
) -> None:
    # A proxy restarted three times on new ports: the agent used to dial each old port in
    # turn while it read the log, logging a refused connection for every one.
    store, proxy = MemoryStore(), SigningKey.generate()
    await store.append(key_event(proxy, "edge-proxy", "edge1"))  # type: ignore[arg-type]
    for port in (1111, 2222, 3333):
        await store.append(started(proxy, "edge1", port=port))  # type: ignore[arg-type]
    async with following(store, tmp_path):
        await until(lambda: dialled, what="a link")
        await store.append(started(proxy, "edge1", port=4444))  # type: ignore[arg-type]
        await until(lambda: len(dialled) > 1, what="the link to the new endpoint")
        assert dialled == [3333, 4444]


async def test_links_open_after_the_history_even_if_its_last_announcement_is_bogus(
    tmp_path: Path, dialled: list[int]
) -> None:
    store, proxy = MemoryStore(), SigningKey.generate()
    await store.append(key_event(proxy, "edge-proxy", "edge1"))  # type: ignore[arg-type]
    await store.append(started(proxy, "edge1", port=3333))  # type: ignore[arg-type]
    # the newest: an announcement of edge1 on another proxy's subject, which is ignored
    await store.append(started(proxy, "edge1", port=9, subject_name="edge2"))  # type: ignore[arg-type]
    async with following(store, tmp_path):
        await until(lambda: dialled, what="a link")
        assert dialled == [3333]


async def test_a_proxy_without_tunnels_gets_no_link(manager: TunnelManager) -> None:
    proxy = SigningKey.generate()
    manager.keys.apply(stored(1, key_event(proxy, "edge-proxy", "edge1")))
    manager.announced(stored(2, started(proxy, "edge1", port=0)))
    assert manager.links == {}


async def test_servers_publish_tunnel_targets_and_keep_their_local_address(
    manager: TunnelManager,
) -> None:
    target, state = await manager.add_server("alice._", "http://127.0.0.1:8888", {"pid": 1})
    assert target == "tunnel://site1/alice._"
    assert state == {"pid": 1, LOCAL_TARGET: "http://127.0.0.1:8888"}
    assert manager.servers == {"alice._": ("127.0.0.1", 8888)}
    manager.remove_server("alice._")
    manager.remove_server("alice._")
    assert manager.servers == {}
    manager.adopt_server("bob._", target, state)  # after an agent restart
    assert manager.servers == {"bob._": ("127.0.0.1", 8888)}


async def test_closing_a_link_whose_connect_swallowed_the_cancellation_ends_it() -> None:
    # Python 3.11's asyncio.wait_for (inside asyncssh's connect) can turn a cancellation
    # that meets a failing connection attempt into that failure; the link retried forever
    # and the agent hung at shutdown.
    key = SigningKey.generate()
    endpoint = Endpoint("edge", key.kid, "127.0.0.1", 9, ssh_public_key(key.public_b64))
    link = ProxyLink("site1", ssh_private_key(key), endpoint, {})
    attempts = 0
    trying = asyncio.Event()

    async def refused_after_swallowing_a_cancel() -> None:
        nonlocal attempts
        attempts += 1
        trying.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            pass  # as wait_for does when the inner future finished meanwhile
        raise ConnectionRefusedError("connection refused")

    link._connect = refused_after_swallowing_a_cancel  # type: ignore[method-assign]
    link.start()
    await trying.wait()  # close while the first attempt is under way
    await asyncio.wait_for(link.close(), 5)
    assert attempts == 1
