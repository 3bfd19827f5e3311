"""Rebuilding from the log and following it, including through store failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from fedhub.edge_proxy.state import ProxyState
from fedhub.edge_proxy.sync import follow, publish_key, rebuild
from fedhub.events.errors import StoreUnavailable
from fedhub.events.memory import MemoryStore
from fedhub.events.signing import SigningKey
from fedhub.events.store import StoredEvent
from fedhub.schemas import subjects
from tests.unit.edge_proxy.factories import World


class FlakyStore(MemoryStore):
    """Its first follow fails after one event, as a lost NATS connection would."""

    def __init__(self) -> None:
        super().__init__()
        self.follows: list[int] = []

    async def follow(
        self, subjects: str = "fedhub.>", *, start: int = 1
    ) -> AsyncGenerator[StoredEvent, None]:
        self.follows.append(start)
        count = 0
        async for item in super().follow(subjects, start=start):
            yield item
            count += 1
            if len(self.follows) == 1 and count == 1:
                raise StoreUnavailable("connection lost")


async def test_rebuild_reads_keys_first_and_returns_next_sequence() -> None:
    world = World()
    store = MemoryStore()
    # The user event comes before the key that signed it (e.g. a key republished later).
    keys = world.keys()
    await store.append(world.user("alice"))
    await store.append(world.route("alice", "http://h:1"))
    for env in keys:
        await store.append(env)
    state = ProxyState()
    assert await rebuild(store, state) == 5
    assert "alice" in state.users and len(state.routes) == 1 and state.seq == 4


async def test_publish_key_is_idempotent() -> None:
    store = MemoryStore()
    key = SigningKey.generate()
    await publish_key(store, key, "e1")
    await publish_key(store, key, "e1")
    assert await store.last_seq() == 1
    stored = await store.last(subjects.key(key.kid))
    assert stored is not None and stored.event.kid == key.kid


async def test_follow_resumes_after_a_store_failure() -> None:
    world = World()
    store = FlakyStore()
    for env in world.keys():
        await store.append(env)
    state = ProxyState()
    start = await rebuild(store, state)
    task = asyncio.create_task(follow(store, state, start, retry=0.01))
    try:
        await store.append(world.route("alice", "http://h:1"))
        await store.append(world.route("bob", "http://h:2"))
        for _ in range(100):
            if len(state.routes) == 2:
                break
            await asyncio.sleep(0.01)
        assert {r.user for r in state.routes.routes()} == {"alice", "bob"}
        assert store.follows[:2] == [3, 4]  # resumed after the last applied event
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_follow_checks_the_rebuilt_routes_in_the_background() -> None:
    world = World()
    store = MemoryStore()
    for env in world.keys():
        await store.append(env)
    await store.append(world.route("alice", "http://h:1", server="lab"))
    await store.append(world.route("mallory", "http://evil:1", server="x", signer=world.agent))
    state = ProxyState()
    start = await rebuild(store, state)
    assert state.routes.unchecked == 2
    task = asyncio.create_task(follow(store, state, start, retry=0.01))
    try:
        for _ in range(100):
            if not state.routes.unchecked:
                break
            await asyncio.sleep(0.01)
        # Nobody asked for a route: the follower checked them, and dropped the forgery.
        assert state.routes.unchecked == 0 and len(state.routes) == 1
        assert state.servers == {"alice": {"lab"}}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
