"""The agent's command handling, monitoring and re-adoption against a MemoryStore."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable

import pytest

from fedhub.events.envelope import new_event
from fedhub.events.errors import StoreUnavailable
from fedhub.events.memory import MemoryStore
from fedhub.events.signing import KeyRing, SigningKey
from fedhub.events.store import Delivery, StoredEvent
from fedhub.schemas import subjects
from fedhub.schemas.events import (
    KeyPublished,
    KeyRevoked,
    ServerFailed,
    ServerStarted,
    ServerStopped,
    ServerSubmitted,
    SiteHeartbeat,
    StartServer,
)
from fedhub.site_agent import agent as agent_module
from fedhub.site_agent.agent import SiteAgent
from fedhub.site_agent.settings import SiteAgentSettings

from .conftest import (
    COORDINATOR,
    key_published,
    send,
    server_events,
    start_cmd,
    stop_cmd,
    wait_events,
    wait_for,
)
from .fakes import FakeBackend

MakeAgent = Callable[[FakeBackend], SiteAgent]


async def test_start_publishes_submitted_then_started(store: MemoryStore,
                                                      make_agent: MakeAgent) -> None:
    backend = FakeBackend()
    agent = make_agent(backend)
    await agent.start()
    await send(store, start_cmd())
    await wait_events(store, ["ServerSubmitted", "ServerStarted"])
    last = await store.last(subjects.site_server("hpc", "alice", ""))
    assert last is not None
    started = last.event.payload_as(ServerStarted)
    assert started.site == "hpc" and started.spawn_id == "s1" and started.progress == 80
    assert started.target.startswith("http://")
    assert last.event.actor == "site:hpc"
    ring = KeyRing()
    ring.add_signing_key(agent.key, "site-agent", "hpc")
    last.event.verify(ring, frozenset({"site-agent"}))


async def test_agent_announces_itself_but_never_enrolls_its_own_key(
        store: MemoryStore, make_agent: MakeAgent) -> None:
    agent = make_agent(FakeBackend())
    await agent.start()
    assert await store.last(subjects.key(agent.key.kid)) is None  # operators enroll sites
    site_event = await store.last(subjects.site_agent("hpc"))
    assert site_event is not None and site_event.event.type == "SiteAgentStarted"


async def test_failing_backend_publishes_readable_failure(store: MemoryStore,
                                                          make_agent: MakeAgent) -> None:
    agent = make_agent(FakeBackend(fail="the cluster is out of GPUs"))
    await agent.start()
    await send(store, start_cmd())
    await wait_events(store, ["ServerSubmitted", "ServerFailed"])
    last = await store.last(subjects.site_server("hpc", "alice", ""))
    assert last is not None
    failed = last.event.payload_as(ServerFailed)
    assert failed.reason == "the cluster is out of GPUs"
    assert failed.message == "Spawn failed: the cluster is out of GPUs"
    assert failed.progress == 100
    assert agent.servers == {}


async def test_redelivered_command_creates_no_duplicates(store: MemoryStore,
                                                         make_agent: MakeAgent) -> None:
    backend = FakeBackend()
    agent = make_agent(backend)
    env = await send(store, start_cmd())

    class Redelivery:
        seq, event = 1, env

        async def ack(self) -> None:
            pass

        async def nak(self, delay: float = 1.0) -> None:
            pass

    await agent.handle(Redelivery())
    await agent.handle(Redelivery())
    await wait_events(store, ["ServerSubmitted", "ServerStarted"])
    await agent.handle(Redelivery())  # after it completed
    await asyncio.sleep(0.05)
    assert await server_events(store) == ["ServerSubmitted", "ServerStarted"]
    assert len(backend.started) == 1


async def test_stop_while_starting_cancels_the_start(store: MemoryStore,
                                                     make_agent: MakeAgent) -> None:
    backend = FakeBackend(never_ready=True)
    agent = make_agent(backend)
    await agent.start()
    await send(store, start_cmd())
    await wait_events(store, ["ServerSubmitted"])
    await send(store, stop_cmd())
    await wait_events(store, ["ServerSubmitted", "ServerStopped"])
    assert all(state == "gone" for state in backend.jobs.values())
    assert agent.servers == {}


async def test_stop_of_running_server(store: MemoryStore, make_agent: MakeAgent) -> None:
    backend = FakeBackend()
    agent = make_agent(backend)
    await agent.start()
    await send(store, start_cmd())
    await wait_events(store, ["ServerSubmitted", "ServerStarted"])
    await send(store, stop_cmd())
    await wait_events(store, ["ServerSubmitted", "ServerStarted", "ServerStopped"])
    last = await store.last(subjects.site_server("hpc", "alice", ""))
    assert last is not None and last.event.payload_as(ServerStopped).reason == "user asked"
    assert len(backend.stopped) == 1


async def test_stop_of_unknown_server_still_ends_it(store: MemoryStore,
                                                    make_agent: MakeAgent) -> None:
    agent = make_agent(FakeBackend())
    await agent.start()
    await send(store, stop_cmd(user="bob"))
    await wait_events(store, ["ServerStopped"], user="bob")


async def test_malformed_and_unknown_commands_are_skipped(store: MemoryStore,
                                                          make_agent: MakeAgent) -> None:
    agent = make_agent(FakeBackend())
    await agent.start()
    await store.append_raw(subjects.command("hpc", "junk"), b"not json")
    bad = new_event(subjects.command("hpc", "start"), start_cmd(), actor="x", signer=None)
    await store.append(bad.model_copy(update={"data": {"user": "alice"}}))  # no spawn_id
    await send(store, SiteHeartbeat(site="hpc", agent_id="x", servers=0))
    await send(store, StartServer(user="alice", server="", spawn_id="s0", prefix="/evil/"))
    await send(store, start_cmd())
    await wait_events(store, ["ServerFailed", "ServerSubmitted", "ServerStarted"])
    failed = [item.event async for item in store.read(subjects.site_server("hpc", "alice", ""))][0]
    assert "prefix" in failed.payload_as(ServerFailed).reason
    assert all(not t.done() for t in agent._loops)


async def test_process_exit_ends_a_running_server(store: MemoryStore,
                                                  make_agent: MakeAgent) -> None:
    backend = FakeBackend()
    agent = make_agent(backend)
    await agent.start()
    await send(store, start_cmd())
    await wait_events(store, ["ServerSubmitted", "ServerStarted"])
    for job in backend.jobs:
        backend.jobs[job] = "gone"
    await wait_events(store, ["ServerSubmitted", "ServerStarted", "ServerStopped"])
    last = await store.last(subjects.site_server("hpc", "alice", ""))
    assert last is not None
    assert last.event.payload_as(ServerStopped).reason.startswith("server process exited")


async def test_unknown_status_never_ends_a_server(store: MemoryStore,
                                                  make_agent: MakeAgent) -> None:
    backend = FakeBackend(status_fails=True)
    agent = make_agent(backend)
    await agent.start()
    await send(store, start_cmd())
    await wait_events(store, ["ServerSubmitted", "ServerStarted"])
    calls = backend.status_calls
    await wait_for(lambda: backend.status_calls >= calls + 3)
    assert await server_events(store) == ["ServerSubmitted", "ServerStarted"]
    assert len(agent.servers) == 1


async def test_readoption_keeps_running_servers(settings: SiteAgentSettings,
                                                store: MemoryStore) -> None:
    backend = FakeBackend()
    first = SiteAgent(settings, store, backend)
    await first.start()
    await send(store, start_cmd())
    await send(store, start_cmd(user="bob"))
    await wait_events(store, ["ServerSubmitted", "ServerStarted"])
    await wait_events(store, ["ServerSubmitted", "ServerStarted"], user="bob")
    await first.close()
    # bob's server dies while no agent runs
    bob_job = next(job for job, spec in zip(backend.jobs, backend.started, strict=True)
                   if spec.user == "bob")
    backend.jobs[bob_job] = "gone"
    second = SiteAgent(settings, store, backend)
    try:
        await second.start()
        await wait_events(store, ["ServerSubmitted", "ServerStarted", "ServerStopped"],
                          user="bob")
        bob_end = await store.last(subjects.site_server("hpc", "bob", ""))
        assert bob_end is not None
        assert "while the site agent was down" in bob_end.event.payload_as(ServerStopped).reason
        assert list(second.servers) == ["alice._"]
        assert len(backend.started) == 2 and backend.stopped == []
        await asyncio.sleep(0.2)  # a few monitor rounds
        assert await server_events(store) == ["ServerSubmitted", "ServerStarted"]
    finally:
        await second.close()


async def test_readoption_resumes_a_half_started_server(settings: SiteAgentSettings,
                                                        store: MemoryStore) -> None:
    backend = FakeBackend()
    state = {"job": "77"}
    backend.jobs["77"] = "running"
    await store.append(new_event(subjects.site_server("hpc", "alice", ""), ServerSubmitted(
        user="alice", site="hpc", spawn_id="s1", job_id="77", state=state), actor="site:hpc",
        signer=None))
    agent = SiteAgent(settings, store, backend)
    try:
        await agent.start()
        await wait_events(store, ["ServerSubmitted", "ServerStarted"])
        assert backend.started == []
    finally:
        await agent.close()


async def test_shutdown_can_stop_servers(settings: SiteAgentSettings,
                                         store: MemoryStore) -> None:
    backend = FakeBackend()
    agent = SiteAgent(settings.model_copy(update={"stop_servers_on_exit": True}), store,
                      backend)
    await agent.start()
    await send(store, start_cmd())
    await wait_events(store, ["ServerSubmitted", "ServerStarted"])
    await agent.close()
    last = await store.last(subjects.site_server("hpc", "alice", ""))
    assert last is not None
    assert last.event.payload_as(ServerStopped).reason == "site agent shut down"
    assert backend.stopped


async def test_heartbeat_and_trusted_keys(settings: SiteAgentSettings, store: MemoryStore,
                                          make_agent: MakeAgent) -> None:
    agent = make_agent(FakeBackend())
    await agent.start()
    proxy = SigningKey.generate()
    impostor = SigningKey.generate()
    for signer, key in ((proxy, proxy), (impostor, SigningKey.generate())):
        await store.append(new_event(subjects.key(key.kid), KeyPublished(
            kid=key.kid, public_key=key.public_b64, role="edge-proxy", name="p"),
            actor="edge-proxy:p", signer=signer))
    path = settings.trusted_keys_path
    await wait_for(lambda: proxy.kid in json.loads(path.read_text()))
    assert len(json.loads(path.read_text())) == 1  # not signed by its own key: refused
    await wait_for(lambda: store._health)
    health = await store.latest_health(subjects.health("hpc"))
    beat = SiteHeartbeat.model_validate_json(next(iter(health.values()))[0])
    assert beat.agent_id == "test-agent" and beat.capacity == {"cpus": 4}


async def test_options_are_checked_against_what_the_site_offers(
        store: MemoryStore, make_agent: MakeAgent) -> None:
    from fedhub.schemas.resources import OptionKind, OptionSpec

    cores = OptionSpec(name="cores", kind=OptionKind.INTEGER, minimum=1, maximum=4, default=1)
    backend = FakeBackend(offered=(cores,))
    agent = make_agent(backend)
    await agent.start()
    announced = await store.last(subjects.site_agent("hpc"))
    assert announced is not None and announced.event.data["options"][0]["name"] == "cores"
    await send(store, start_cmd(options={"cores": "2; reboot"}))
    await wait_events(store, ["ServerFailed"])
    failed = await store.last(subjects.site_server("hpc", "alice", ""))
    assert failed is not None
    assert "cores: must be a whole number" in failed.event.payload_as(ServerFailed).reason
    assert backend.started == []


async def test_a_queued_job_tells_the_user_why_it_waits(store: MemoryStore,
                                                         make_agent: MakeAgent) -> None:
    agent = make_agent(FakeBackend(queued=("Priority", "Resources")))
    await agent.start()
    await send(store, start_cmd())
    await wait_events(store, ["ServerSubmitted", "ServerQueued", "ServerQueued",
                              "ServerStarted"])
    reports = [i.event.data["message"] async for i in
               store.read(subjects.site_server("hpc", "alice", ""))]
    assert reports[1:3] == ["queued (Priority)", "queued (Resources)"]


async def test_a_slow_command_for_one_server_does_not_hold_up_another(
        settings: SiteAgentSettings) -> None:
    gate = asyncio.Event()

    class SlowForAlice(MemoryStore):
        async def last(self, subject: str) -> StoredEvent | None:
            if subject == subjects.site_server("hpc", "alice", ""):
                await gate.wait()  # e.g. a slow round trip to the log
            return await super().last(subject)

    store = SlowForAlice()
    await store.append(key_published(COORDINATOR))
    agent = SiteAgent(settings, store, FakeBackend())
    await agent.start()
    try:
        await send(store, start_cmd(user="alice", spawn_id="s1"))
        await send(store, start_cmd(user="bob", spawn_id="s2"))
        await wait_events(store, ["ServerSubmitted", "ServerStarted"], user="bob")
        assert await server_events(store, "alice") == []
        gate.set()
        await wait_events(store, ["ServerSubmitted", "ServerStarted"], user="alice")
    finally:
        await agent.close()


async def test_a_failing_command_feed_does_not_abandon_commands_being_handled(
        settings: SiteAgentSettings) -> None:
    gate, cancelled = asyncio.Event(), []

    class FlakyFeed(MemoryStore):
        async def last(self, subject: str) -> StoredEvent | None:
            if subject == subjects.site_server("hpc", "alice", ""):
                try:
                    await gate.wait()
                except asyncio.CancelledError:
                    cancelled.append(subject)
                    raise
            return await super().last(subject)

        async def consume(self, subjects: str, *, durable: str
                          ) -> AsyncGenerator[Delivery, None]:
            async for delivery in super().consume(subjects, durable=durable):
                yield delivery
                raise TimeoutError("the feed hiccuped")  # e.g. a fetch timing out

    store = FlakyFeed()
    await store.append(key_published(COORDINATOR))
    agent = SiteAgent(settings, store, FakeBackend())
    await agent.start()
    try:
        await send(store, start_cmd(user="alice"))
        await asyncio.sleep(0.1)  # the feed failed while alice's start was in hand
        gate.set()
        await wait_events(store, ["ServerSubmitted", "ServerStarted"], user="alice")
        assert cancelled == []
    finally:
        await agent.close()


async def test_only_commands_a_coordinator_signed_are_obeyed(
        store: MemoryStore, make_agent: MakeAgent) -> None:
    backend = FakeBackend()
    agent = make_agent(backend)
    await agent.start()
    site_key, proxy_key = SigningKey.generate(), SigningKey.generate()
    await store.append(key_published(proxy_key, role="edge-proxy", name="p1"))
    for signer in (None, site_key, proxy_key):  # unsigned, an unknown key, the wrong role
        await store.append(new_event(subjects.command("hpc", "start"), start_cmd(),
                                     actor="coordinator", signer=signer))
    # A coordinator that starts after the agent read the keys is recognised at once.
    late = SigningKey.generate()
    await store.append(key_published(late, name="c2"))
    await store.append(new_event(subjects.command("hpc", "start"),
                                 start_cmd(user="bob", spawn_id="s9"), actor="coordinator",
                                 signer=late))
    await wait_events(store, ["ServerSubmitted", "ServerStarted"], user="bob")
    assert [spec.user for spec in backend.started] == ["bob"]
    assert await server_events(store) == []  # alice's forged starts did nothing


async def test_a_revoked_edge_proxy_key_leaves_the_trusted_keys_file(
        settings: SiteAgentSettings, store: MemoryStore, make_agent: MakeAgent) -> None:
    agent = make_agent(FakeBackend())
    await agent.start()
    proxy = SigningKey.generate()
    await store.append(key_published(proxy, role="edge-proxy", name="p1"))
    path = settings.trusted_keys_path
    await wait_for(lambda: proxy.kid in json.loads(path.read_text()))
    await store.append(new_event(subjects.key(proxy.kid), KeyRevoked(kid=proxy.kid),
                                 actor="coordinator", signer=COORDINATOR))
    await wait_for(lambda: proxy.kid not in json.loads(path.read_text()))
    # A restarted agent, reading the whole log, does not trust it again either.
    second = make_agent(FakeBackend())
    path.unlink()
    await second.start()
    assert json.loads(path.read_text()) == {}


async def test_a_command_that_meets_an_unavailable_log_comes_back_later(
        store: MemoryStore, make_agent: MakeAgent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_module, "RETRY_COMMAND_AFTER", 0.05)
    backend = FakeBackend()
    agent = make_agent(backend)
    await agent.start()
    real_last = store.last
    failures = 0

    async def flaky_last(subject: str) -> StoredEvent | None:
        nonlocal failures
        if subject.startswith("fedhub.site.") and failures < 2:  # the start's, the stop's
            failures += 1
            raise StoreUnavailable("no servers available")
        return await real_last(subject)

    monkeypatch.setattr(store, "last", flaky_last)
    await send(store, start_cmd())
    await wait_events(store, ["ServerSubmitted", "ServerStarted"])
    await send(store, stop_cmd(user="bob"))  # not running here: answered once the log is back
    await wait_events(store, ["ServerStopped"], user="bob")
    assert failures == 2 and [spec.user for spec in backend.started] == ["alice"]


async def reports(store: MemoryStore, user: str = "alice") -> list[tuple[str, str]]:
    """(event type, spawn id) of every report about the user's default server."""
    return [(item.event.type, item.event.data["spawn_id"]) async for item in
            store.read(subjects.site_server("hpc", user, ""))]


async def all_handled(store: MemoryStore, limit: float = 5.0) -> None:
    """Wait until the agent has acked every command sent so far (a start is acked once
    submitted; an ignored command at once)."""
    sent = {item.seq async for item in store.read(subjects.commands("hpc"))}
    durable = subjects.command_consumer("hpc")
    await wait_for(lambda: sent <= store.acked(durable), limit)


async def running(store: MemoryStore, make_agent: MakeAgent, spawn_id: str,
                  backend: FakeBackend | None = None) -> tuple[FakeBackend, SiteAgent]:
    """An agent whose site runs alice's default server, spawn ``spawn_id``."""
    backend = backend or FakeBackend()
    agent = make_agent(backend)
    await agent.start()
    await send(store, start_cmd(spawn_id=spawn_id))
    await wait_events(store, ["ServerSubmitted", "ServerStarted"])
    return backend, agent


async def ended(store: MemoryStore, make_agent: MakeAgent, spawn_id: str) -> FakeBackend:
    """An agent whose site ran alice's default server, spawn ``spawn_id``, and stopped it."""
    backend, _ = await running(store, make_agent, spawn_id)
    await send(store, stop_cmd(spawn_id=spawn_id))
    await wait_events(store, ["ServerSubmitted", "ServerStarted", "ServerStopped"])
    return backend


async def test_a_newer_spawn_replaces_one_the_hub_has_given_up_on(
        store: MemoryStore, make_agent: MakeAgent) -> None:
    # e.g. the site was out of touch so long that the hub marked s1 failed and the user
    # started again: s1 must not keep running, nor block s2
    backend, agent = await running(store, make_agent, "s1")
    await send(store, start_cmd(spawn_id="s2"))
    await wait_events(store, ["ServerSubmitted", "ServerStarted", "ServerStopped",
                              "ServerSubmitted", "ServerStarted"])
    # the user of s1 is told it stopped
    assert [spawn for _, spawn in await reports(store)] == ["s1", "s1", "s1", "s2", "s2"]
    assert len(backend.stopped) == 1 and [s.spawn_id for s in backend.started] == ["s1", "s2"]
    assert [rec.spec.spawn_id for rec in agent.servers.values()] == ["s2"]


async def test_a_late_command_for_an_older_spawn_leaves_the_newer_one_alone(
        store: MemoryStore, make_agent: MakeAgent) -> None:
    backend, _ = await running(store, make_agent, "s2")
    await send(store, start_cmd(spawn_id="s1"))  # redelivered after a restart, say
    await send(store, stop_cmd(spawn_id="s1"))
    await all_handled(store)
    assert await reports(store) == [("ServerSubmitted", "s2"), ("ServerStarted", "s2")]
    assert backend.stopped == [] and [s.spawn_id for s in backend.started] == ["s2"]


async def test_a_late_start_after_the_newer_spawn_ended_starts_nothing(
        store: MemoryStore, make_agent: MakeAgent) -> None:
    backend = await ended(store, make_agent, "s2")
    await send(store, start_cmd(spawn_id="s1"))
    await all_handled(store)
    assert [s.spawn_id for s in backend.started] == ["s2"]


async def test_a_stop_for_a_spawn_that_never_reached_the_site_is_answered(
        store: MemoryStore, make_agent: MakeAgent) -> None:
    # the hub waits for the stop of s2; the site only knows the ended s1
    await ended(store, make_agent, "s1")
    await send(store, stop_cmd(spawn_id="s2"))
    await wait_events(store, ["ServerSubmitted", "ServerStarted", "ServerStopped",
                              "ServerStopped"])
    assert (await reports(store))[-1] == ("ServerStopped", "s2")


async def test_a_late_stop_after_the_newer_spawn_ended_changes_nothing(
        store: MemoryStore, make_agent: MakeAgent) -> None:
    backend = await ended(store, make_agent, "s2")
    await send(store, stop_cmd(spawn_id="s1"))  # late: must not become the latest report,
    await send(store, start_cmd(spawn_id="s2"))  # or this redelivery would start s2 again
    await all_handled(store)
    assert [s.spawn_id for s in backend.started] == ["s2"]
    assert (await reports(store))[-1] == ("ServerStopped", "s2")


async def test_a_stop_that_comes_first_keeps_its_start_from_running(
        settings: SiteAgentSettings) -> None:
    # The hub can ask to stop a spawn right after placing it (its user was deleted): the
    # stop may be read before the start. Its first look at the log is slow here.
    class SlowFirstLook(MemoryStore):
        looks = 0

        async def last(self, subject: str) -> StoredEvent | None:
            if subject == subjects.site_server("hpc", "alice", ""):
                SlowFirstLook.looks += 1
                if SlowFirstLook.looks == 1:
                    await asyncio.sleep(0.2)
            return await super().last(subject)

    store = SlowFirstLook()
    await store.append(key_published(COORDINATOR))
    backend = FakeBackend()
    agent = SiteAgent(settings, store, backend)
    await agent.start()
    try:
        await send(store, stop_cmd(spawn_id="s1"))
        await send(store, start_cmd(spawn_id="s1"))
        await all_handled(store)
        await asyncio.sleep(0.3)  # the slow look is over: a start it let through is seen
        assert backend.started == [] and agent.servers == {}
        assert await reports(store) == [("ServerStopped", "s1")]
    finally:
        await agent.close()


async def test_a_backend_that_fails_to_stop_does_not_block_the_next_start(
        store: MemoryStore, make_agent: MakeAgent) -> None:
    class Crashy(FakeBackend):
        async def stop(self, state: dict[str, object]) -> None:  # type: ignore[override]
            raise RuntimeError("the scheduler's client crashed")

    await running(store, make_agent, "s1", Crashy())
    await send(store, stop_cmd(spawn_id="s1"))
    await wait_events(store, ["ServerSubmitted", "ServerStarted", "ServerFailed"])
    await send(store, start_cmd(spawn_id="s2"))
    await wait_events(store, ["ServerSubmitted", "ServerStarted", "ServerFailed",
                              "ServerSubmitted", "ServerStarted"])
