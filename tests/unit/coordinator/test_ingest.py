"""What sites report becomes the record only when it is genuine (issue 3): signed by the
key enrolled for that site, about a spawn accepted there. Forgeries are refused and
reported in the log; stale reports are ignored quietly."""

from __future__ import annotations

import pytest

from fedhub.coordinator import servers
from fedhub.coordinator.context import Hub
from fedhub.coordinator.ingest import ingest
from fedhub.coordinator.siteadmin import enroll_site
from fedhub.coordinator.users import create_user
from fedhub.events.enroll import enroll
from fedhub.events.envelope import new_event
from fedhub.events.signing import SigningKey
from fedhub.schemas import events as ev
from fedhub.schemas import subjects

from .conftest import MakeHub

HPC, CLOUD, STRANGER = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()


@pytest.fixture
async def hub(make_hub: MakeHub) -> Hub:
    made = await make_hub()
    for name, key in (("hpc", HPC), ("cloud", CLOUD)):
        await enroll_site(made, name, backend="slurm", public_key=key.public_b64, weight=1,
                          description="", actor="test")
        beat = ev.SiteHeartbeat(site=name, agent_id=name, servers=0)
        await made.store.put_health(subjects.health(name), beat.model_dump_json().encode())
    async for item in made.store.read("fedhub.key.>"):
        enroll(made.keyring, item)
    await create_user(made, "alice", admin=False, actor="test")
    return made


async def spawn(hub: Hub, site: str = "hpc") -> str:
    await servers.start(hub, "alice", "", site, {}, "user:alice")
    last = await hub.store.last(subjects.server("alice", ""))
    assert last is not None
    return str(last.event.data["spawn_id"])


async def report(hub: Hub, payload: ev.Payload, *, key: SigningKey, site: str = "hpc") -> None:
    env = new_event(subjects.site_server(site, "alice", ""), payload, actor=f"site:{site}",
                    signer=key)
    seq = await hub.store.append(env)
    item = await hub.store.last(env.subject)
    assert item is not None and item.seq == seq
    await ingest(hub, item)


async def canonical(hub: Hub) -> list[str]:
    return [i.event.type async for i in hub.store.read(subjects.server("alice", ""))]


async def rejections(hub: Hub, site: str = "hpc") -> list[str]:
    return [i.event.data["reason"] async for i in hub.store.read(subjects.security(site))]


async def test_a_genuine_report_becomes_the_record(hub: Hub) -> None:
    spawn_id = await spawn(hub)
    await report(hub, ev.ServerSubmitted(user="alice", site="hpc", spawn_id=spawn_id,
                                         job_id="42"), key=HPC)
    await report(hub, ev.ServerQueued(user="alice", site="hpc", spawn_id=spawn_id,
                                      message="queued (Resources)"), key=HPC)
    await report(hub, ev.ServerStarted(user="alice", site="hpc", spawn_id=spawn_id,
                                       target="http://n1:9000"), key=HPC)
    assert (await canonical(hub))[-3:] == ["ServerSubmitted", "ServerQueued", "ServerStarted"]
    assert await rejections(hub) == []


async def test_another_sites_key_an_unknown_key_or_a_false_site_are_rejected(hub: Hub) -> None:
    spawn_id = await spawn(hub)
    forged = ev.ServerStarted(user="alice", site="hpc", spawn_id=spawn_id,
                              target="http://evil:1")
    await report(hub, forged, key=CLOUD)  # cloud's key, under hpc's subjects
    await report(hub, forged, key=STRANGER)  # nobody enrolled this key
    await report(hub, forged, key=CLOUD, site="cloud")  # cloud claims to be hpc
    assert "ServerStarted" not in await canonical(hub)
    reasons = await rejections(hub) + await rejections(hub, "cloud")
    assert len(reasons) == 3
    assert any("site 'cloud'" in r for r in reasons)
    assert any("unknown signing key" in r for r in reasons)
    assert any("claims site 'hpc'" in r for r in reasons)


async def test_a_report_about_a_spawn_placed_elsewhere_is_rejected(hub: Hub) -> None:
    spawn_id = await spawn(hub, site="cloud")
    await report(hub, ev.ServerStarted(user="alice", site="hpc", spawn_id=spawn_id,
                                       target="http://hpc:1"), key=HPC)
    assert "ServerStarted" not in await canonical(hub)
    assert any("runs at site 'cloud'" in r for r in await rejections(hub))


async def test_stale_and_repeated_reports_change_nothing(hub: Hub) -> None:
    spawn_id = await spawn(hub)
    started = ev.ServerStarted(user="alice", site="hpc", spawn_id=spawn_id, target="http://n:1")
    await report(hub, started, key=HPC)
    await report(hub, started, key=HPC)  # the agent re-sent it after a restart
    await report(hub, ev.ServerStopped(user="alice", site="hpc", spawn_id="an-old-spawn",
                                       reason="old"), key=HPC)
    assert (await canonical(hub)).count("ServerStarted") == 1
    assert "ServerStopped" not in await canonical(hub)
    assert await rejections(hub) == []


async def test_a_site_may_route_only_into_its_own_tunnel(hub: Hub) -> None:
    spawn_id = await spawn(hub)
    for target in ("tunnel://cloud/alice._", "tunnel://hpc/bob._", "file:///etc/passwd"):
        await report(hub, ev.ServerStarted(user="alice", site="hpc", spawn_id=spawn_id,
                                           target=target), key=HPC)
    assert "ServerStarted" not in await canonical(hub)
    assert len(await rejections(hub)) == 3
    await report(hub, ev.ServerStarted(user="alice", site="hpc", spawn_id=spawn_id,
                                       target="tunnel://hpc/alice._"), key=HPC)
    assert (await canonical(hub))[-1] == "ServerStarted"
