"""Two coordinators on one log never both start the same server (issue 2)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedhub.coordinator import servers
from fedhub.coordinator.app import open_hub
from fedhub.coordinator.context import Hub
from fedhub.coordinator.errors import BadRequest
from fedhub.coordinator.settings import CoordinatorSettings
from fedhub.coordinator.siteadmin import enroll_site
from fedhub.coordinator.users import create_user
from fedhub.events.jetstream import JetStreamStore
from fedhub.events.signing import SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import SiteHeartbeat

pytestmark = pytest.mark.integration


async def coordinator(nats_url: str, root: Path, name: str) -> tuple[Hub, asyncio.Task[None]]:
    settings = CoordinatorSettings(nats_url=nats_url, data_dir=root / name, name=name)
    settings.data_dir.mkdir(parents=True)
    hub = await open_hub(settings, await JetStreamStore.connect(nats_url))
    return hub, asyncio.create_task(hub.projection.run())


@pytest.fixture
async def pair(nats_url: str, tmp_path: Path) -> AsyncIterator[tuple[Hub, Hub]]:
    one, t1 = await coordinator(nats_url, tmp_path, "one")
    two, t2 = await coordinator(nats_url, tmp_path, "two")
    yield one, two
    for task in (t1, t2):
        task.cancel()
    for hub in (one, two):
        await hub.store.close()  # type: ignore[attr-defined]


async def test_concurrent_starts_on_two_coordinators_start_one_server(
    pair: tuple[Hub, Hub],
) -> None:
    one, two = pair
    await enroll_site(one, "racesite", backend="local", public_key=SigningKey.generate().public_b64,
                      weight=1, description="", actor="test")
    beat = SiteHeartbeat(site="racesite", agent_id="a", servers=0)
    await one.store.put_health(subjects.health("racesite"), beat.model_dump_json().encode())
    await create_user(one, "racer", admin=False, actor="test")
    await two.projection.wait_for(await two.store.last_seq())
    for round_ in range(10):
        server = f"s{round_}"
        results = await asyncio.gather(
            servers.start(one, "racer", server, "racesite", {}, "user:racer"),
            servers.start(two, "racer", server, "racesite", {}, "user:racer"),
            return_exceptions=True,
        )
        wins = [r for r in results if isinstance(r, int)]
        losses = [r for r in results if isinstance(r, BadRequest)]
        assert len(wins) == 1 and len(losses) == 1, results
        assert "already" in losses[0].message
        history = [i.event.type async for i in one.store.read(subjects.server("racer", server))]
        assert history.count("ServerRequested") == 1, history
        commands = [i async for i in one.store.read(subjects.command("racesite", "start"))
                    if i.event.data["server"] == server]
        assert len(commands) == 1
