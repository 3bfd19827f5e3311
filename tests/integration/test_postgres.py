"""PostgreSQL as the coordinator's database (DESIGN.md section 6: beyond one machine,
several coordinators share one PostgreSQL): a real server, the same rows as SQLite, and
values SQLite would take but PostgreSQL refuses."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from fedhub.coordinator.db import Server, User, make_engine
from fedhub.coordinator.projection import ProjectionRunner, apply
from fedhub.events.jetstream import JetStreamStore
from fedhub.events.memory import MemoryStore
from fedhub.schemas import events as ev
from fedhub.schemas import subjects
from tests.support.hub import ADMIN_PASSWORD, Browser, Hub, start_hub
from tests.support.polling import until
from tests.support.projection import dump, envelope, life, stored
from tests.support.services import Postgres, free_port, fresh_database, postgres_server

pytestmark = pytest.mark.integration
PASSWORD = "correct-horse-9"


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with postgres_server() as server:
        yield server


@pytest.fixture
def pg_sessions(postgres: Postgres, request: pytest.FixtureRequest
                ) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(fresh_database(postgres.url, request.node.name[:60].lower()))
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


@asynccontextmanager
async def following(runner: ProjectionRunner) -> AsyncIterator[asyncio.Task[None]]:
    """The runner following its store in a task, for the ``async with`` block."""
    task = asyncio.create_task(runner.run())
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_replaying_into_postgresql_gives_the_rows_of_sqlite(
        pg_sessions: sessionmaker[Session]) -> None:
    long_text = "a site's own words, " * 300  # over every old column length
    events = [*life(), envelope(ev.ServerFailed(user="alice", server="gpu", site="hpc",
                                                spawn_id="sp-1", reason="x",
                                                message=long_text),
                                subjects.server("alice", "gpu"), 20)]
    sqlite = make_engine("sqlite://")
    try:
        for sessions in (pg_sessions, sessionmaker(sqlite)):
            with sessions.begin() as db:
                for item in stored(events):
                    apply(db, item)
        assert dump(pg_sessions) == dump(sessionmaker(sqlite))
        with pg_sessions() as db:
            row = db.get(Server, ("alice", "gpu"))
            assert row is not None and row.message == long_text
    finally:
        sqlite.dispose()


async def test_an_event_postgresql_refuses_is_skipped_and_the_rest_applied(
        pg_sessions: sessionmaker[Session]) -> None:
    store = MemoryStore()
    runner = ProjectionRunner(store, pg_sessions)
    async with following(runner):
        await store.append(envelope(ev.UserCreated(name="before"), subjects.user("before")))
        # A name longer than the column: SQLite would store it, PostgreSQL refuses it.
        await store.append(envelope(ev.UserCreated(name="x" * 100), subjects.user("long")))
        last = await store.append(envelope(ev.UserCreated(name="after"),
                                           subjects.user("after")))
        await runner.wait_for(last, timeout=10)
        assert runner.position() == last
    with pg_sessions() as db:
        assert {u.name for u in db.query(User)} == {"before", "after"}


async def test_the_projection_waits_out_a_database_restart(
        postgres: Postgres, pg_sessions: sessionmaker[Session],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="fedhub.coordinator.projection")
    store = MemoryStore()
    runner = ProjectionRunner(store, pg_sessions)

    def failed_tries() -> int:
        return runner.stall.tries if runner.stall else 0

    async with following(runner) as task:
        await runner.wait_for(await store.append(
            envelope(ev.UserCreated(name="first"), subjects.user("first"))), timeout=10)
        assert runner.stall is None
        postgres.stop()
        try:
            last = await store.append(envelope(ev.UserCreated(name="during"),
                                               subjects.user("during")))
            # until the batch has failed and been retried at least once (or given up)
            await until(lambda: failed_tries() >= 2 or task.done(), timeout=30,
                        what="the event to be tried while the database is down")
            assert not task.done(), "the projection gave up while the database was down"
            assert runner.applied < last
            assert runner.stall is not None and runner.stall.first == last
        finally:
            postgres.start()
        await runner.wait_for(last, timeout=30)
        assert runner.stall is None
    with pg_sessions() as db:
        assert {u.name for u in db.query(User)} == {"first", "during"}
    # one warning when it stalled and one when it recovered, not one per try
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert sum("cannot reach the database" in m for m in said) == 1, said
    assert sum("reached the database again" in m for m in said) == 1, said


# -- two real coordinators sharing one database ------------------------------------------

@pytest.fixture(scope="module")
def two_coordinators(postgres: Postgres, nats_url: str,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, str]]:
    """A whole hub whose coordinator uses PostgreSQL, and a second coordinator (own data
    directory and keys) on the same database and log; yields (hub, second's URL)."""
    db = fresh_database(postgres.url, "shared")
    hub = start_hub(tmp_path_factory.mktemp("hub"), nats_url,
                    coordinator_env={"FEDHUB_DATABASE_URL": db})
    second_port = free_port()
    second = hub.add("coordinator-2", "fedhub.coordinator", {
        "FEDHUB_PORT": str(second_port), "FEDHUB_DATABASE_URL": db,
        "FEDHUB_DATA_DIR": str(tmp_path_factory.mktemp("second")),
        "FEDHUB_PUBLIC_URL": f"http://127.0.0.1:{second_port}", "FEDHUB_NAME": "second"},
        f"http://127.0.0.1:{second_port}/hub/api/health")
    second.start()
    try:
        yield hub, f"http://127.0.0.1:{second_port}"
    finally:
        Browser.close_all()
        hub.stop()


class Direct:
    """Stands in for a hub whose ``url`` is one coordinator itself (no proxy)."""

    def __init__(self, url: str) -> None:
        self.url = url


def assert_no_errors_logged(hub: Hub) -> None:
    """Neither coordinator logged a traceback."""
    for name in ("coordinator", "coordinator-2"):
        text = Path(hub.components[name].log).read_text()
        assert "Traceback" not in text, f"{name} logged an error:\n{text[-3000:]}"


def test_a_hub_on_postgresql_spawns_and_a_second_coordinator_sees_it_all(
        two_coordinators: tuple[Hub, str]) -> None:
    hub, second = two_coordinators
    with hub.admin() as api:
        assert api.post("/users/pat", json={"password": PASSWORD}).status_code == 201
    # The password hash lives only in the database: the second coordinator knows it.
    pat_there = Browser(Direct(second), "pat", PASSWORD)  # type: ignore[arg-type]
    pat = Browser(hub, "pat", PASSWORD)
    r = pat.api("POST", "/users/pat/server", json={"site": "local"})
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + 60
    # Ready as the second coordinator sees it (its own projection of the same database).
    while not pat_there.api("GET", "/users/pat").json()["servers"].get("", {}).get("ready"):
        assert time.monotonic() < deadline, "the spawn never became ready"
        time.sleep(0.2)
    assert pat.client.get("/user/pat/api/status").status_code == 200
    assert pat_there.api("DELETE", "/users/pat/server").status_code in (202, 204)
    deadline = time.monotonic() + 30
    while pat.api("GET", "/users/pat").json()["servers"]:
        assert time.monotonic() < deadline, "the stop did not reach the first coordinator"
        time.sleep(0.2)


def test_users_created_through_both_coordinators_at_once_are_all_listed_by_both(
        two_coordinators: tuple[Hub, str]) -> None:
    hub, second = two_coordinators
    token = hub.admin_token
    urls = [hub.hub_url + "/hub/api", second + "/hub/api"]

    async def create_all() -> list[int]:
        async with httpx.AsyncClient(timeout=60,
                                     headers={"Authorization": f"token {token}"}) as c:
            got = await asyncio.gather(*(c.post(f"{urls[i % 2]}/users/burst{i}", json={})
                                         for i in range(60)))
            return [r.status_code for r in got]

    assert asyncio.run(create_all()) == [201] * 60
    listings = []
    for url in urls:
        with httpx.Client(base_url=url, timeout=60,
                          headers={"Authorization": f"token {token}"}) as api:
            names = {u["name"] for u in api.get("/users", params={"limit": 200}).json()}
            listings.append({n for n in names if n.startswith("burst")})
    assert listings[0] == listings[1] == {f"burst{i}" for i in range(60)}
    assert_no_errors_logged(hub)


def test_spawns_through_both_coordinators_at_once_are_each_recorded_once(
        two_coordinators: tuple[Hub, str]) -> None:
    # Both coordinators' reactors see every site report and every canonical event: each
    # spawn must still be recorded, readied and routed exactly once, and succeed.
    hub, second = two_coordinators
    urls = [hub.hub_url + "/hub/api", second + "/hub/api"]
    names = [f"twin{i}" for i in range(8)]

    async def spawn_all() -> list[int]:
        async with httpx.AsyncClient(timeout=120, headers={
                "Authorization": f"token {hub.admin_token}"}) as c:
            made = await asyncio.gather(*(c.post(f"{urls[i % 2]}/users/{n}", json={})
                                          for i, n in enumerate(names)))
            assert [r.status_code for r in made] == [201] * len(names)
            got = await asyncio.gather(*(
                c.post(f"{urls[i % 2]}/users/{n}/server", params={"wait": 90},
                       json={"site": "local"}) for i, n in enumerate(names)))
            return [r.status_code for r in got]

    async def recorded() -> Counter[tuple[str, str]]:
        store = await JetStreamStore.connect(hub.nats_url, create_streams=False)
        seen: Counter[tuple[str, str]] = Counter()
        async for item in store.read("fedhub.>"):
            env = item.event
            if env.data.get("user") in names and not subjects.is_site_fact(env.subject):
                seen[(env.data["user"], env.type)] += 1
        await store.close()
        return seen

    assert asyncio.run(spawn_all()) == [201] * len(names)
    seen = asyncio.run(recorded())
    for name in names:
        for kind in ("ServerRequested", "ServerAccepted", "ServerStarted", "ServerReady",
                     "RouteAdded"):
            assert seen[(name, kind)] == 1, (name, kind, seen)
    for url in urls:
        with httpx.Client(base_url=url, timeout=60,
                          headers={"Authorization": f"token {hub.admin_token}"}) as api:
            for name in names:
                assert api.get(f"/users/{name}").json()["servers"][""]["ready"], (url, name)
    with hub.admin() as api:
        for name in names:
            assert api.delete(f"/users/{name}/server").status_code in (202, 204)
    assert_no_errors_logged(hub)


def test_the_admin_password_is_that_of_the_first_start(
        two_coordinators: tuple[Hub, str]) -> None:
    _hub, second = two_coordinators
    # The second coordinator started with no admin password of its own: the admin's
    # credentials are the shared database's.
    Browser(Direct(second), "admin", ADMIN_PASSWORD)  # type: ignore[arg-type]
