"""Fixtures for the agent's unit tests: a MemoryStore, settings in a temp dir, a runner."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from fedhub.events.envelope import Envelope, new_event
from fedhub.events.memory import MemoryStore
from fedhub.events.signing import SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import KeyPublished, Payload, StartServer, StopServer
from fedhub.schemas.names import server_prefix
from fedhub.site_agent.agent import SiteAgent
from fedhub.site_agent.settings import SiteAgentSettings

from .fakes import FakeBackend


@pytest.fixture
def settings(tmp_path: Path) -> SiteAgentSettings:
    return SiteAgentSettings(site="hpc", data_dir=tmp_path, heartbeat_interval=0.05,
                             poll_interval=0.05, agent_id="test-agent")


# The coordinator whose signature every command needs; its key is in every test's log.
COORDINATOR = SigningKey.generate()


def key_published(key: SigningKey, role: str = "coordinator", name: str = "c1") -> Envelope:
    """The self-signed event with which a hub component publishes its key."""
    return new_event(subjects.key(key.kid), KeyPublished(
        kid=key.kid, public_key=key.public_b64, role=role, name=name),
        actor=f"{role}:{name}", signer=key)


@pytest.fixture
async def store() -> MemoryStore:
    made = MemoryStore()
    await made.append(key_published(COORDINATOR))
    return made


@pytest.fixture
async def make_agent(settings: SiteAgentSettings, store: MemoryStore
                     ) -> AsyncIterator[Callable[[FakeBackend], SiteAgent]]:
    agents: list[SiteAgent] = []

    def make(backend: FakeBackend) -> SiteAgent:
        agent = SiteAgent(settings, store, backend)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        await agent.close()


def start_cmd(user: str = "alice", server: str = "", spawn_id: str = "s1",
              options: dict[str, object] | None = None) -> StartServer:
    return StartServer(user=user, server=server, spawn_id=spawn_id,
                       prefix=server_prefix(user, server), options=options or {})


def stop_cmd(user: str = "alice", server: str = "", spawn_id: str = "s1") -> StopServer:
    return StopServer(user=user, server=server, spawn_id=spawn_id, reason="user asked")


async def send(store: MemoryStore, payload: Payload, site: str = "hpc") -> Envelope:
    env = new_event(subjects.command(site, payload.TYPE.lower()), payload,
                    actor="coordinator", signer=COORDINATOR)
    await store.append(env)
    return env


async def server_events(store: MemoryStore, user: str = "alice", server: str = "") -> list[str]:
    return [item.event.type async for item in store.read(subjects.site_server("hpc", user, server))]


async def wait_for(predicate: Callable[[], object], limit: float = 5.0) -> None:
    async def poll() -> None:
        while not predicate():  # noqa: ASYNC110 - polling state owned by other tasks
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), limit)


async def wait_events(store: MemoryStore, expected: list[str], user: str = "alice",
                      limit: float = 5.0) -> None:
    async def poll() -> None:
        while await server_events(store, user) != expected:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(poll(), limit)
    except TimeoutError:
        raise AssertionError(f"expected {expected}, got {await server_events(store, user)}"
                             ) from None
