"""Each site's NATS credential can touch only that site's subjects, enforced by the NATS
server itself (issue 3). Site A tries to act as site B and to read what is not its own."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from pathlib import Path

import nats as nats_client
import pytest
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig

from fedhub.coordinator.app import open_hub
from fedhub.coordinator.natsauth import HUB_USER, AuthFile, inbox_prefix
from fedhub.coordinator.settings import CoordinatorSettings
from fedhub.coordinator.siteadmin import enroll_site
from fedhub.events.envelope import new_event
from fedhub.events.errors import ConsumerMismatch, StoreUnavailable
from fedhub.events.jetstream import JetStreamStore
from fedhub.events.signing import SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import ServerStarted, SiteHeartbeat, StartServer, StopServer
from tests.support.services import nats_server_with_auth

pytestmark = pytest.mark.integration
KEY = SigningKey.generate()


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    root = tmp_path_factory.mktemp("nats-auth")
    auth = AuthFile(root)
    hub_pw = auth.ensure_hub()
    a_user, a_pw = auth.add_site("site-a")
    b_user, b_pw = auth.add_site("site-b")
    with nats_server_with_auth(root, auth.conf_path) as (address, _pid):
        yield {"hub": f"nats://{HUB_USER}:{hub_pw}@{address}",
               "a": f"nats://{a_user}:{a_pw}@{address}",
               "b": f"nats://{b_user}:{b_pw}@{address}",
               "wrong": f"nats://{a_user}:not-the-password@{address}"}


@pytest.fixture
async def hub(nats: dict[str, str]) -> AsyncIterator[JetStreamStore]:
    store = await JetStreamStore.connect(nats["hub"])
    yield store
    await store.close()


@pytest.fixture
async def site_a(nats: dict[str, str], hub: JetStreamStore) -> AsyncIterator[JetStreamStore]:
    store = await JetStreamStore.connect(nats["a"], create_streams=False,
                                         inbox_prefix=inbox_prefix("site-a"))  # as an agent
    yield store
    await store.close()


def started(site: str, user: str = "alice") -> ServerStarted:
    return ServerStarted(user=user, site=site, spawn_id="s1", target="http://x:1")


async def test_a_site_may_do_its_own_work(hub: JetStreamStore, site_a: JetStreamStore) -> None:
    own = subjects.site_server("site-a", "alice", "")
    seq = await site_a.append(new_event(own, started("site-a"), actor="site:site-a", signer=KEY))
    last = await site_a.last(own)
    assert last is not None and last.seq == seq
    assert [i.seq for i in await site_a.latest_per_subject(subjects.site_facts("site-a"))] == [seq]
    assert [i.seq async for i in site_a.read(own)] == [seq]  # what re-adoption reads
    await site_a.put_health(subjects.health("site-a"),
                            SiteHeartbeat(site="site-a", agent_id="a", servers=0)
                            .model_dump_json().encode())
    cmd = await hub.append(new_event(subjects.command("site-a", "start"), StartServer(
        user="alice", spawn_id="s1", prefix="/user/alice/"), actor="coordinator", signer=KEY))
    async with aclosing(site_a.consume(subjects.commands("site-a"), durable="agent-site-a")) as it:
        async for delivery in it:
            assert delivery.seq == cmd
            await delivery.ack()
            break


async def refused(action: object) -> None:
    with pytest.raises((StoreUnavailable, ConsumerMismatch)):
        await asyncio.wait_for(action, 30)  # type: ignore[arg-type]


async def test_a_site_cannot_publish_as_another_site_or_as_the_hub(
        hub: JetStreamStore, site_a: JetStreamStore) -> None:
    for subject, payload in [
        (subjects.site_server("site-b", "alice", ""), started("site-b")),
        (subjects.server("alice", ""), started("site-a")),
        (subjects.route("alice", ""), started("site-a")),
        (subjects.site("site-a"), started("site-a")),  # its own registration is the hub's
        (subjects.key("x"), started("site-a")),
    ]:
        await refused(site_a.append(new_event(subject, payload, actor="site:site-a",
                                              signer=KEY)))
        assert await hub.last(subject) is None, f"{subject} was stored"
    await refused(site_a.put_health(subjects.health("site-b"), b"{}"))


async def test_a_site_cannot_read_another_sites_commands_or_the_whole_log(
        hub: JetStreamStore, site_a: JetStreamStore) -> None:
    await hub.append(new_event(subjects.command("site-b", "start"), StartServer(
        user="bob", spawn_id="s2", prefix="/user/bob/"), actor="coordinator", signer=KEY))

    async def first(it: object) -> None:
        async with aclosing(it) as items:  # type: ignore[type-var]
            async for _ in items:
                return

    await refused(first(site_a.consume(subjects.commands("site-b"), durable="agent-site-b")))
    await refused(first(site_a.consume(subjects.commands("site-b"), durable="agent-site-a")))
    await refused(first(site_a.read(subjects.commands("site-b"))))
    await refused(first(site_a.read("fedhub.>")))
    await refused(first(site_a.follow(subjects.site_facts("site-b"))))
    await refused(site_a.last(subjects.site_server("site-b", "bob", "")))


async def test_a_wrong_password_cannot_connect(nats: dict[str, str]) -> None:
    with pytest.raises(StoreUnavailable) as refused:
        await JetStreamStore.connect(nats["wrong"], create_streams=False, connect_timeout=5)
    # the operator learns why (as for a removed site's agent), and no password is shown
    said = str(refused.value)
    assert "refuses these credentials" in said and "revoked" in said, said
    assert "not-the-password" not in said and "site-a" not in said, said


async def ack_through(store: JetStreamStore, site: str, seq: int) -> list[int]:
    """Take and ack ``site``'s commands, as its agent does, up to command ``seq``; the
    sequences taken."""
    taken = []
    async with aclosing(store.consume(subjects.commands(site),
                                      durable=subjects.command_consumer(site))) as it:
        async for delivery in it:
            await delivery.ack()
            taken.append(delivery.seq)
            if delivery.seq >= seq:
                break
    return taken


async def test_a_site_cannot_repoint_another_sites_command_consumer(
        nats: dict[str, str], hub: JetStreamStore, site_a: JetStreamStore) -> None:
    # Site B's agent has its durable consumer (created as the agent creates it).
    site_b = await JetStreamStore.connect(nats["b"], create_streams=False,
                                          inbox_prefix=inbox_prefix("site-b"))
    try:
        cmd = await hub.append(new_event(subjects.command("site-b", "stop"), StopServer(
            user="bob", spawn_id="s2"), actor="coordinator", signer=KEY))
        assert (await ack_through(site_b, "site-b", cmd))[-1] == cmd  # (and earlier tests')
        # Site A may create consumers of any name on its own subjects: asking for B's
        # name would update B's consumer to read what A writes. The server refuses it.
        nc = await nats_client.connect(nats["a"], inbox_prefix=inbox_prefix("site-a"))
        try:
            js = nc.jetstream()
            for config in (
                ConsumerConfig(name="agent-site-b", durable_name="agent-site-b",
                               filter_subject=subjects.site_facts("site-a"),
                               ack_policy=AckPolicy.EXPLICIT),
                ConsumerConfig(durable_name="agent-site-b", ack_policy=AckPolicy.EXPLICIT),
            ):
                with pytest.raises((NatsTimeout, TimeoutError, NatsError)):
                    await js.add_consumer("FEDHUB", config, timeout=3)
        finally:
            await nc.close()
        # B's consumer still delivers B's commands, and only those.
        forged = new_event(subjects.command("site-b", "stop"), StopServer(
            user="alice", spawn_id="x"), actor="coordinator", signer=KEY)
        await site_a.append_raw(subjects.site_server("site-a", "x", ""), forged.encode())
        cmd = await hub.append(new_event(subjects.command("site-b", "stop"), StopServer(
            user="bob", spawn_id="s3"), actor="coordinator", signer=KEY))
        assert await ack_through(site_b, "site-b", cmd) == [cmd]
    finally:
        await site_b.close()


async def test_an_envelope_stored_under_another_subject_is_skipped(
        hub: JetStreamStore, site_a: JetStreamStore) -> None:
    # A site may write its own subjects, but not make what it writes pass for a command.
    own = subjects.site_server("site-a", "mallory", "")
    forged = new_event(subjects.command("site-b", "stop"), StopServer(
        user="alice", spawn_id="x"), actor="coordinator", signer=KEY)
    await site_a.append_raw(own, forged.encode())
    honest = await site_a.append(new_event(own, started("site-a", "mallory"),
                                           actor="site:site-a", signer=KEY))
    assert [i.seq async for i in site_a.read(own)] == [honest]  # as its agent re-reads it


async def test_a_consumer_squatting_a_new_sites_name_is_removed_when_the_site_is_added(
        nats: dict[str, str], hub: JetStreamStore, site_a: JetStreamStore) -> None:
    # Before site C exists, A may create a consumer under the name C's agent will use.
    squat = subjects.command_consumer("site-c")
    nc = await nats_client.connect(nats["a"], inbox_prefix=inbox_prefix("site-a"))
    try:
        await nc.jetstream().add_consumer("FEDHUB", ConsumerConfig(
            name=squat, durable_name=squat, filter_subject=subjects.site_facts("site-a"),
            ack_policy=AckPolicy.EXPLICIT), timeout=5)
    finally:
        await nc.close()
    with pytest.raises(ConsumerMismatch):  # C's agent could not take its commands
        async with aclosing(hub.consume(subjects.commands("site-c"), durable=squat)) as it:
            async for _ in it:
                break
    # Enrolling C (as ``fedhub site add`` does) removes it first.
    with tempfile.TemporaryDirectory() as data:
        coordinator = await open_hub(CoordinatorSettings(data_dir=Path(data)), hub)
        following = asyncio.create_task(coordinator.projection.run())
        try:
            await enroll_site(coordinator, "site-c", backend="local",
                              public_key=SigningKey.generate().public_b64, weight=1,
                              description="", actor="test")
        finally:
            following.cancel()
    cmd = await hub.append(new_event(subjects.command("site-c", "start"), StartServer(
        user="carol", spawn_id="s1", prefix="/user/carol/"), actor="coordinator", signer=KEY))
    assert await ack_through(hub, "site-c", cmd) == [cmd]
