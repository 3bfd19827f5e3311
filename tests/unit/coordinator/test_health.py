"""Site health episodes: a silent site is unreachable, not stopped; it comes back, or,
after the grace period, its servers are marked lost with the reason."""

from __future__ import annotations

import asyncio
import gc
from datetime import UTC, datetime, timedelta

import pytest

from fedhub.coordinator import health, servers
from fedhub.coordinator.context import Hub
from fedhub.coordinator.siteadmin import enroll_site
from fedhub.coordinator.sites import list_sites
from fedhub.coordinator.users import create_user
from fedhub.events.errors import StoreUnavailable
from fedhub.events.memory import MemoryStore
from fedhub.events.signing import SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import SiteHeartbeat

from .conftest import MakeHub


@pytest.fixture
async def hub(make_hub: MakeHub) -> Hub:
    made = await make_hub(site_offline_after=15, site_lost_after=600)
    await enroll_site(made, "hpc", backend="slurm", public_key=SigningKey.generate().public_b64,
                      weight=1, description="", actor="test")
    await create_user(made, "alice", admin=False, actor="test")
    return made


def beat(hub: Hub, age: float) -> None:
    data = SiteHeartbeat(site="hpc", agent_id="a", servers=1).model_dump_json().encode()
    store = hub.store
    assert isinstance(store, MemoryStore)
    store._health[subjects.health("hpc")] = (data, datetime.now(UTC) - timedelta(seconds=age))


async def site_events(hub: Hub) -> list[str]:
    return [i.event.type async for i in hub.store.read(subjects.site("hpc"))]


async def test_silence_is_unreachable_then_back_without_losing_anything(hub: Hub) -> None:
    beat(hub, 1)
    await servers.start(hub, "alice", "", "hpc", {}, "user:alice")
    await health.check(hub)
    assert "SiteUnreachable" not in await site_events(hub)
    beat(hub, 60)  # the agent went quiet
    await health.check(hub)
    await health.check(hub)  # recorded once
    assert (await site_events(hub)).count("SiteUnreachable") == 1
    row = servers.get_server(hub, "alice", "")
    model = servers.server_model(hub, row)
    assert model["site_status"] == "unreachable" and not model["stopped"]
    assert "unreachable" in model["message"]
    beat(hub, 1)  # it reports again
    await health.check(hub)
    assert (await site_events(hub))[-1] == "SiteReachable"
    model = servers.server_model(hub, servers.get_server(hub, "alice", ""))
    assert model["site_status"] == "reachable" and model["status"] == "accepted"


async def test_past_the_grace_period_servers_are_marked_lost(hub: Hub) -> None:
    beat(hub, 1)
    await servers.start(hub, "alice", "", "hpc", {}, "user:alice")
    beat(hub, 60)
    await health.check(hub)
    await health.check(hub, now=datetime.now(UTC) + timedelta(seconds=700))
    last = await hub.store.last(subjects.server("alice", ""))
    assert last is not None and last.event.type == "ServerFailed"
    assert "unreachable for" in last.event.data["reason"]
    assert last.event.data["reason"].startswith("lost:")
    await health.check(hub, now=datetime.now(UTC) + timedelta(seconds=800))
    history = [i.event.type async for i in hub.store.read(subjects.server("alice", ""))]
    assert history.count("ServerFailed") == 1


async def test_concurrent_site_listings_share_one_heartbeat_read(
        hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    beat(hub, 1)
    store = hub.store
    assert isinstance(store, MemoryStore)
    reads = 0
    original = store.latest_health

    async def counted(subjects_: str) -> dict[str, tuple[bytes, datetime]]:
        nonlocal reads
        reads += 1
        await asyncio.sleep(0.05)  # a read over the network takes a while
        return await original(subjects_)

    monkeypatch.setattr(store, "latest_health", counted)
    listings = await asyncio.gather(*(list_sites(hub) for _ in range(20)))
    assert reads == 1
    assert all([s.status for s in views] == ["online"] for views in listings)
    await list_sites(hub)  # a later listing reads afresh: the site may have gone quiet
    assert reads == 2


async def test_a_heartbeat_read_its_callers_gave_up_on_fails_quietly(
        hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    # At shutdown the requests waiting for a shared read are cancelled, then the store
    # closes under the read: its failure must not be logged as an error nobody retrieved.
    closing = asyncio.Event()

    async def cut_off(subjects_: str) -> dict[str, tuple[bytes, datetime]]:
        await closing.wait()
        raise StoreUnavailable("reading heartbeats failed: nats: connection draining")

    monkeypatch.setattr(hub.store, "latest_health", cut_off)
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    try:
        waiting = asyncio.create_task(list_sites(hub))
        await asyncio.sleep(0)
        read = hub.heartbeat_read
        assert read is not None
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        closing.set()
        await asyncio.wait({read})  # its own done callback runs before this wait's
        assert hub.heartbeat_read is None
        del waiting, read
        gc.collect()
        assert unhandled == []
    finally:
        loop.set_exception_handler(None)
