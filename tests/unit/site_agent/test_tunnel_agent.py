"""The agent's hooks into its tunnels: targets, forwards per server life cycle, re-adoption."""

from __future__ import annotations

from pathlib import Path

from fedhub.events.memory import MemoryStore
from fedhub.schemas import subjects
from fedhub.schemas.events import ServerStarted
from fedhub.site_agent.agent import SiteAgent
from fedhub.site_agent.settings import SiteAgentSettings
from fedhub.site_agent.tunnel import LOCAL_TARGET

from .conftest import send, start_cmd, stop_cmd, wait_events
from .fakes import FakeBackend


def tunnelled(tmp_path: Path) -> SiteAgentSettings:
    return SiteAgentSettings(site="hpc", data_dir=tmp_path, heartbeat_interval=0.05,
                             poll_interval=0.05, agent_id="test-agent", tunnel=True)


async def test_a_tunnelled_server_is_published_with_a_tunnel_target(
    store: MemoryStore, tmp_path: Path
) -> None:
    backend = FakeBackend()
    agent = SiteAgent(tunnelled(tmp_path), store, backend)
    try:
        await agent.start()
        assert agent.tunnels is not None
        await send(store, start_cmd())
        await wait_events(store, ["ServerSubmitted", "ServerStarted"])
        last = await store.last(subjects.site_server("hpc", "alice", ""))
        assert last is not None
        started = last.event.payload_as(ServerStarted)
        assert started.target == "tunnel://hpc/alice._"
        local = started.state[LOCAL_TARGET]
        assert local.startswith("http://") and agent.servers["alice._"].target == local
        assert "alice._" in agent.tunnels.servers  # forwarded to every proxy
        await send(store, stop_cmd())
        await wait_events(store, ["ServerSubmitted", "ServerStarted", "ServerStopped"])
        assert agent.tunnels.servers == {}
    finally:
        await agent.close()


async def test_a_restarted_agent_forwards_its_readopted_servers_again(
    store: MemoryStore, tmp_path: Path
) -> None:
    backend = FakeBackend()
    agent = SiteAgent(tunnelled(tmp_path), store, backend)
    await agent.start()
    await send(store, start_cmd())
    await wait_events(store, ["ServerSubmitted", "ServerStarted"])
    assert agent.tunnels is not None
    forwarded = dict(agent.tunnels.servers)
    await agent.close()  # the server keeps running
    again = SiteAgent(tunnelled(tmp_path), store, backend)
    try:
        await again.start()
        assert again.tunnels is not None and "alice._" in again.servers
        assert again.tunnels.servers == forwarded
    finally:
        await again.close()


async def test_without_tunnel_targets_stay_direct(store: MemoryStore, tmp_path: Path) -> None:
    settings = tunnelled(tmp_path).model_copy(update={"tunnel": False})
    agent = SiteAgent(settings, store, FakeBackend())
    try:
        await agent.start()
        assert agent.tunnels is None
        await send(store, start_cmd())
        await wait_events(store, ["ServerSubmitted", "ServerStarted"])
        last = await store.last(subjects.site_server("hpc", "alice", ""))
        assert last is not None
        assert last.event.payload_as(ServerStarted).target.startswith("http://")
    finally:
        await agent.close()
