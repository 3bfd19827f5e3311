"""The log on a 3-node NATS cluster (DESIGN.md section 6): kept on every server, it loses
nothing, and the hub goes on, when any one server goes, the stream's leader included."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import nats
import pytest

from fedhub.coordinator.app import open_hub
from fedhub.coordinator.context import Hub
from fedhub.coordinator.errors import Unavailable
from fedhub.coordinator.settings import CoordinatorSettings
from fedhub.coordinator.users import create_user
from fedhub.events.envelope import new_event
from fedhub.events.errors import StoreUnavailable
from fedhub.events.jetstream import JetStreamStore
from fedhub.events.signing import SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import UserCreated
from fedhub.schemas.subjects import STREAM
from tests.support.services import NatsCluster, nats_cluster, nats_server

pytestmark = pytest.mark.integration
T = TypeVar("T")
KEY = SigningKey.generate()


async def patiently(attempt: Callable[[], Awaitable[T]], limit: float = 30.0) -> T:
    """``attempt()`` again while the log is unavailable (a cluster electing a leader)."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return await attempt()
        except (StoreUnavailable, Unavailable):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


async def stream_on(cluster: NatsCluster, limit: float = 15.0) -> tuple[int, int]:
    """(servers keeping the log, index of its leader), as the cluster reports them once
    the log has a leader (a stream just scaled up elects one)."""
    nc = await nats.connect(cluster.url.split(","))
    deadline = time.monotonic() + limit
    try:
        while True:
            info = await nc.jetstream().stream_info(STREAM)
            assert info.cluster is not None
            if info.cluster.leader is not None:
                return info.config.num_replicas or 1, int(info.cluster.leader.removeprefix("n"))
            assert time.monotonic() < deadline, f"no leader for the log: {info.cluster}"
            await asyncio.sleep(0.1)
    finally:
        await nc.close()


async def names_in(store: JetStreamStore) -> list[str]:
    return [item.event.data["name"] async for item in store.read("fedhub.user.>")]


async def consumer_host(cluster: NatsCluster) -> int:
    """The server of the one consumer on the log (the projection's ordered consumer)."""
    nc = await nats.connect(cluster.url.split(","))
    try:
        found = await nc.jetstream().consumers_info(STREAM)
        assert len(found) == 1 and found[0].cluster is not None
        assert found[0].cluster.leader is not None
        return int(found[0].cluster.leader.removeprefix("n"))
    finally:
        await nc.close()


async def all_current(cluster: NatsCluster, limit: float = 30.0) -> None:
    """Wait until every server holds the whole log again (one was restarted)."""
    nc = await nats.connect(cluster.url.split(","))
    deadline = time.monotonic() + limit
    try:
        while True:
            info = await patiently(lambda: nc.jetstream().stream_info(STREAM))
            peers = info.cluster.replicas if info.cluster else None
            if peers and len(peers) == 2 and all(p.current and not p.offline for p in peers):
                return
            assert time.monotonic() < deadline, f"replicas not current: {info.cluster}"
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


async def test_the_hub_loses_nothing_when_a_nats_server_goes(tmp_path: Path) -> None:
    with nats_cluster(tmp_path / "nats") as cluster:
        settings = CoordinatorSettings(data_dir=tmp_path / "hub", nats_url=cluster.url,
                                       stream_replicas=3)
        hub: Hub = await patiently(lambda: open_hub(settings))
        following = asyncio.create_task(hub.projection.run())
        try:
            for i in range(10):
                await create_user(hub, f"u{i}", admin=False, actor="test")
            assert (await stream_on(cluster))[0] == 3
            # The server the projection's consumer lives on goes: the projection resumes
            # on another (the API waits for it: read-your-writes).
            host = await consumer_host(cluster)
            cluster.stop(host)
            await patiently(lambda: create_user(hub, "a1", admin=False, actor="test"))
            cluster.start(host)
            await all_current(cluster)
            # The log's leader goes: appends wait out the election; one retried after a
            # lost answer is stored once (its id).
            leader = (await stream_on(cluster))[1]
            cluster.stop(leader)
            late = new_event(subjects.user("late"), UserCreated(name="late"), actor="test",
                             signer=KEY)
            await patiently(lambda: hub.store.append(late))
            await patiently(lambda: hub.store.append(late))
            await create_user(hub, "a2", admin=False, actor="test")
            # (a read may wait out the cluster's own settling as well)
            assert await patiently(lambda: names_in(hub.store)) == [
                f"u{i}" for i in range(10)] + ["a1", "late", "a2"]
            last = await hub.store.last(subjects.user("u0"))
            assert last is not None and last.event.data["name"] == "u0"
            assert (await stream_on(cluster))[1] != leader
        finally:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
            await hub.store.close()


async def test_an_existing_log_is_scaled_up_and_never_down(tmp_path: Path) -> None:
    with nats_cluster(tmp_path / "nats") as cluster:
        async with contextlib.AsyncExitStack() as stores:
            first = await patiently(lambda: JetStreamStore.connect(cluster.url))
            stores.push_async_callback(first.close)
            for i in range(5):
                await first.append(new_event(subjects.user(f"u{i}"), UserCreated(name=f"u{i}"),
                                             actor="test", signer=KEY))
            assert (await stream_on(cluster))[0] == 1  # one server holds it: losing that loses it
            # (until every server has joined, the cluster has no three to place it on)
            hub = await patiently(lambda: JetStreamStore.connect(cluster.url, replicas=3))
            stores.push_async_callback(hub.close)
            assert (await stream_on(cluster))[0] == 3
            proxy = await JetStreamStore.connect(cluster.url)  # a component asking for fewer
            stores.push_async_callback(proxy.close)
            assert (await stream_on(cluster))[0] == 3
            assert await names_in(hub) == [f"u{i}" for i in range(5)]


async def test_more_replicas_than_servers_is_refused_saying_why(tmp_path: Path) -> None:
    with nats_server(tmp_path / "lone") as url:
        with pytest.raises(StoreUnavailable, match="cannot create stream FEDHUB on 3 servers: "
                                                   "replicas > 1 not supported"):
            await JetStreamStore.connect(url, replicas=3)
