"""The agent against a real nats-server and a real jupyter lab: start, then stop."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from fedhub.events.envelope import new_event
from fedhub.events.jetstream import JetStreamStore
from fedhub.events.signing import SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import KeyPublished, StartServer, StopServer
from fedhub.site_agent.agent import SiteAgent
from fedhub.site_agent.backends.local import LocalProcessBackend
from fedhub.site_agent.settings import SiteAgentSettings

pytestmark = pytest.mark.integration


async def _types(store: JetStreamStore) -> list[str]:
    return [i.event.type async for i in store.read(subjects.site_server("local", "alice", ""))]


async def _until(store: JetStreamStore, last: str) -> list[str]:
    async with asyncio.timeout(90):
        while not (types := await _types(store)) or types[-1] != last:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    return types


async def test_agent_starts_and_stops_a_real_server(nats_url: str, tmp_path: Path) -> None:
    settings = SiteAgentSettings(site="local", data_dir=tmp_path, nats_url=nats_url,
                                 poll_interval=0.5, heartbeat_interval=0.5)
    store = await JetStreamStore.connect(nats_url)
    backend = LocalProcessBackend(tmp_path, jupyter_command=[sys.executable, "-m", "jupyterlab"])
    agent = SiteAgent(settings, store, backend)
    coordinator = SigningKey.generate()  # commands count only with a coordinator's signature
    await store.append(new_event(subjects.key(coordinator.kid), KeyPublished(
        kid=coordinator.kid, public_key=coordinator.public_b64, role="coordinator",
        name="c"), actor="coordinator:c", signer=coordinator))
    try:
        await agent.start()
        start = StartServer(user="alice", spawn_id="s1", prefix="/user/alice/")
        await store.append(new_event(subjects.command("local", "start"), start,
                                     actor="coordinator", signer=coordinator))
        assert await _until(store, "ServerStarted") == ["ServerSubmitted", "ServerStarted"]
        stop = StopServer(user="alice", spawn_id="s1")
        await store.append(new_event(subjects.command("local", "stop"), stop,
                                     actor="coordinator", signer=coordinator))
        assert (await _until(store, "ServerStopped"))[-1] == "ServerStopped"
        assert agent.servers == {}
    finally:
        await agent.close()
        await store.close()
