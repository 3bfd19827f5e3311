"""Stopping servers over the API waits on the projection, never on a consumer of the log
per request: a burst of stops must not run into NATS's consumer limits."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from fastapi import FastAPI

from fedhub.coordinator import api, servers, waiting
from fedhub.coordinator.app import install_error_handlers, open_hub
from fedhub.coordinator.auth import issue_token
from fedhub.coordinator.context import Hub
from fedhub.coordinator.errors import Conflict
from fedhub.coordinator.settings import CoordinatorSettings
from fedhub.coordinator.siteadmin import enroll_site
from fedhub.coordinator.users import create_user
from fedhub.events.jetstream import JetStreamStore
from fedhub.events.signing import SigningKey
from fedhub.events.store import StoredEvent
from fedhub.schemas import subjects
from fedhub.schemas.events import ServerStatus, ServerStopped, SiteHeartbeat
from tests.support.polling import until

pytestmark = pytest.mark.integration
SITE = "stopsite"
BURST = 50


@pytest.fixture
async def coordinator(nats_url: str, tmp_path: Path) -> AsyncIterator[Hub]:
    """A coordinator in this process (not conftest's running ``hub``), its projection
    running, with a site that looks alive and a user to stop servers of."""
    settings = CoordinatorSettings(nats_url=nats_url, data_dir=tmp_path, name="stopper")
    made = await open_hub(settings, await JetStreamStore.connect(nats_url))
    task = asyncio.create_task(made.projection.run())
    await enroll_site(made, SITE, backend="local", public_key=SigningKey.generate().public_b64,
                      weight=1, description="", actor="test")
    beat = SiteHeartbeat(site=SITE, agent_id="a", servers=0)
    await made.store.put_health(subjects.health(SITE), beat.model_dump_json().encode())
    with suppress(Conflict):  # one log for the module's tests
        await create_user(made, "root", admin=True, actor="test")
        await create_user(made, "stopper", admin=False, actor="test")
    yield made
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task
    await made.store.close()  # type: ignore[attr-defined]


@pytest.fixture
async def client(coordinator: Hub) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.include_router(api.router)
    install_error_handlers(app)
    app.state.hub = coordinator
    secret, _ = await issue_token(coordinator, "root", "test", None, "test")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers={"Authorization": f"token {secret}"},
                                 timeout=60) as c:
        yield c


async def consumers(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(subjects.STREAM)
        return int(info.state.consumer_count)
    finally:
        await nc.close()


async def all_stopping(hub: Hub, names: list[str]) -> None:
    for _ in range(200):
        lasts = [await hub.store.last(subjects.server("stopper", n)) for n in names]
        if all(servers.status_of(i) is ServerStatus.STOPPING for i in lasts):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the stops were not all requested")


async def test_a_burst_of_stops_opens_no_consumers_and_all_answer_204(
        coordinator: Hub, client: httpx.AsyncClient, nats_url: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    names = [f"s{i}" for i in range(BURST)]
    for name in names:
        await servers.start(coordinator, "stopper", name, SITE, {}, "test")
    await coordinator.projection.wait_for(await coordinator.store.last_seq())
    parked = 0  # handlers inside their wait for the server to stop
    real_settled = waiting.settled

    async def counted(*args: Any, **kwargs: Any) -> StoredEvent | None:
        nonlocal parked
        parked += 1
        return await real_settled(*args, **kwargs)

    monkeypatch.setattr(waiting, "settled", counted)
    before = await consumers(nats_url)
    stops = [asyncio.create_task(client.delete(f"/hub/api/users/stopper/servers/{n}"))
             for n in names]
    await all_stopping(coordinator, names)
    await until(lambda: parked == BURST, what=f"all {BURST} stops to reach their wait")
    assert await consumers(nats_url) == before
    for name in names:  # what the site's reports become once ingested
        last = await coordinator.store.last(subjects.server("stopper", name))
        assert last is not None
        await coordinator.emit(subjects.server("stopper", name), ServerStopped(
            user="stopper", server=name, site=SITE, spawn_id=last.event.data["spawn_id"],
            reason="stopped"), expected_seq=last.seq)
    answers = await asyncio.gather(*stops)
    assert [r.status_code for r in answers] == [204] * BURST, [r.text for r in answers]


async def test_a_stop_not_done_in_time_is_202_and_not_running_is_204(
        coordinator: Hub, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    await servers.start(coordinator, "stopper", "slow", SITE, {}, "test")
    monkeypatch.setattr(api, "STOP_PATIENCE", 0.3)
    r = await client.delete("/hub/api/users/stopper/servers/slow")
    assert r.status_code == 202
    r = await client.delete("/hub/api/users/stopper/servers/slow")  # still stopping
    assert r.status_code == 202
    r = await client.delete("/hub/api/users/stopper/servers/never")
    assert r.status_code == 204
    r = await client.delete("/hub/api/users/stopper/servers/bad%20name")
    assert r.status_code == 400
