"""Stopping what the hub no longer owns: spawns no site was told about, and the servers of
a deleted user, whatever the timing of the deletion against a spawn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from fedhub.coordinator import reactor, servers
from fedhub.coordinator.context import Hub
from fedhub.coordinator.errors import BadRequest
from fedhub.coordinator.siteadmin import enroll_site
from fedhub.coordinator.users import create_user, delete_user
from fedhub.events.envelope import uuid7
from fedhub.events.signing import SigningKey
from fedhub.schemas import events as ev
from fedhub.schemas import subjects

from .conftest import MakeHub, admin_client


@pytest.fixture
async def hub(make_hub: MakeHub) -> AsyncIterator[Hub]:
    made = await make_hub()
    await enroll_site(made, "hpc", backend="slurm", public_key=SigningKey.generate().public_b64,
                      weight=1, description="", actor="test")
    beat = ev.SiteHeartbeat(site="hpc", agent_id="hpc", servers=0)
    await made.store.put_health(subjects.health("hpc"), beat.model_dump_json().encode())
    await create_user(made, "root", admin=True, actor="test")
    await create_user(made, "alice", admin=False, actor="test")
    reacting = asyncio.create_task(reactor.run(made))
    yield made
    reacting.cancel()
    await asyncio.gather(reacting, return_exceptions=True)


async def history(hub: Hub, server: str = "") -> list[str]:
    return [i.event.type async for i in hub.store.read(subjects.server("alice", server))]


async def commands(hub: Hub) -> list[tuple[str, str]]:
    return [(i.event.type, i.event.data["server"])
            async for i in hub.store.read(subjects.commands("hpc"))]


async def requested_only(hub: Hub, site: str) -> None:
    """A spawn as left by a coordinator that died before placing it."""
    await hub.emit(subjects.server("alice", ""), ev.ServerRequested(
        user="alice", site=site, spawn_id=uuid7()), expected_seq=0)


async def test_a_spawn_never_placed_is_stopped_at_once_and_can_start_again(hub: Hub) -> None:
    await requested_only(hub, "auto")
    assert await servers.stop(hub, "alice", "", "user:alice") is True
    assert await history(hub) == ["ServerRequested", "ServerStopped"]
    assert await commands(hub) == []  # no site was told to start it, none is told to stop
    await servers.start(hub, "alice", "", "hpc", {}, "user:alice")
    assert (await history(hub))[-1] == "ServerAccepted"


async def test_a_stop_left_waiting_on_site_auto_is_ended(hub: Hub) -> None:
    # what an earlier version left: a stop request no site will ever answer
    await requested_only(hub, "auto")
    last = await hub.store.last(subjects.server("alice", ""))
    assert last is not None
    await hub.emit(last.event.subject, ev.ServerStopRequested(
        user="alice", site="auto", spawn_id=last.event.data["spawn_id"]),
        expected_seq=last.seq)
    assert await servers.stop(hub, "alice", "", "user:alice") is True
    assert (await history(hub))[-1] == "ServerStopped"


async def test_deleting_a_user_stops_every_server_of_theirs(hub: Hub) -> None:
    await servers.start(hub, "alice", "", "hpc", {}, "user:alice")
    await servers.start(hub, "alice", "gpu", "hpc", {}, "user:alice")
    async with await admin_client(hub) as root:  # right after the spawns, as a script would
        assert (await root.delete("/hub/api/users/alice")).status_code == 204
    for server in ("", "gpu"):
        assert (await history(hub, server))[-1] == "ServerStopRequested"
    assert sorted(await commands(hub)) == [("StartServer", ""), ("StartServer", "gpu"),
                                           ("StopServer", ""), ("StopServer", "gpu")]


async def test_a_spawn_placed_after_its_user_was_deleted_is_stopped(hub: Hub) -> None:
    # A start that found the user before the deletion and places the spawn after it.
    await delete_user(hub, "alice", actor="user:root")
    spawn_id = uuid7()
    seq = await hub.emit(subjects.server("alice", ""), ev.ServerRequested(
        user="alice", site="hpc", spawn_id=spawn_id), expected_seq=0)
    await hub.emit(subjects.server("alice", ""), ev.ServerAccepted(
        user="alice", site="hpc", spawn_id=spawn_id), expected_seq=seq)
    await stop_commanded(hub)
    assert (await history(hub))[-1] == "ServerStopRequested"


async def test_a_deletion_stops_servers_even_if_its_coordinator_died_before_it_could(
        hub: Hub) -> None:
    await servers.start(hub, "alice", "", "hpc", {}, "user:alice")
    await delete_user(hub, "alice", actor="user:root")  # and nothing more: the reactor does
    await stop_commanded(hub)
    stop = await hub.store.last(subjects.server("alice", ""))
    assert stop is not None and stop.event.data["requested_by"] == "user:root"


async def test_a_replayed_deletion_leaves_the_next_account_of_that_name_alone(
        hub: Hub, make_hub: MakeHub) -> None:
    await delete_user(hub, "alice", actor="user:root")
    await create_user(hub, "alice", admin=False, actor="user:root")
    await servers.start(hub, "alice", "", "hpc", {}, "user:alice")
    # a second coordinator with a fresh database reacts to the whole log again
    other = await make_hub(hub.store, data_dir=hub.settings.data_dir / "second", name="second")
    await asyncio.wait_for(replay_through(other, await hub.store.last_seq()), 10)
    assert (await history(hub))[-1] == "ServerAccepted"
    assert ("StopServer", "") not in await commands(hub)


async def replay_through(hub: Hub, seq: int) -> None:
    """Run ``hub``'s reactor from the start of the log until it has reacted to ``seq``."""
    for item in [i async for i in hub.store.read("fedhub.>") if i.seq <= seq]:
        if item.event.subject.startswith(("fedhub.server.", "fedhub.user.")):
            await reactor.react(hub, item)


async def stop_commanded(hub: Hub, limit: float = 5.0) -> None:
    """Wait until the site has been told to stop alice's default server."""
    async def poll() -> None:
        while ("StopServer", "") not in await commands(hub):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), limit)


async def test_starting_a_busy_server_says_what_to_do_instead(hub: Hub) -> None:
    await servers.start(hub, "alice", "gpu", "hpc", {}, "user:alice")
    with pytest.raises(BadRequest, match=r"alice's server 'gpu' is already starting "
                                         r"\(accepted\); follow its progress, or stop it"):
        await servers.start(hub, "alice", "gpu", "hpc", {}, "user:alice")
    last = await hub.store.last(subjects.server("alice", ""))
    await hub.emit(subjects.server("alice", ""), ev.ServerReady(
        user="alice", site="hpc", spawn_id=uuid7(), url="/user/alice/", target="http://x:1"),
        expected_seq=last.seq if last else 0)
    with pytest.raises(BadRequest, match="alice's server is already running at /user/alice/; "
                                         "stop it first to start it again"):
        await servers.start(hub, "alice", "", "hpc", {}, "user:alice")
