"""``GET /hub/api/users``: JupyterHub's paginated list, each user with their servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from fedhub.coordinator import api, auth, health, projection, servers
from fedhub.coordinator.auth import issue_token
from fedhub.coordinator.context import Hub
from fedhub.coordinator.siteadmin import enroll_site
from fedhub.coordinator.users import create_user
from fedhub.events.errors import StoreUnavailable
from fedhub.events.memory import MemoryStore
from fedhub.events.signing import SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import SiteHeartbeat, UserCreated
from tests.support.polling import until
from tests.support.projection import envelope

from .conftest import MakeHub, admin_client

PAGINATION = {"Accept": "application/jupyterhub-pagination+json"}
NAMES = ["ann", "bob", "cat", "dan", "eve", "fay"]


def beat(hub: Hub, site: str, age: float) -> None:
    data = SiteHeartbeat(site=site, agent_id="a", servers=1).model_dump_json().encode()
    store = hub.store
    assert isinstance(store, MemoryStore)
    store._health[subjects.health(site)] = (data, datetime.now(UTC) - timedelta(seconds=age))


@pytest.fixture
async def hub(make_hub: MakeHub) -> Hub:
    made = await make_hub(site_offline_after=15, site_lost_after=600)
    for site in ("hpc", "cloud"):
        await enroll_site(made, site, backend="local", public_key=SigningKey.generate()
                          .public_b64, weight=1, description="", actor="test")
        beat(made, site, 1)
    await create_user(made, "root", admin=True, actor="test")
    for name in NAMES:
        await create_user(made, name, admin=False, actor="test")
    await servers.start(made, "ann", "", "hpc", {}, "test")
    await servers.start(made, "ann", "gpu", "cloud", {}, "test")
    await servers.start(made, "cat", "", "cloud", {}, "test")
    await servers.start(made, "eve", "big", "hpc", {}, "test")
    beat(made, "cloud", 60)  # cloud goes quiet: its servers show as unreachable
    await health.check(made)
    await made.projection.wait_for(await made.store.last_seq())
    return made


@pytest.fixture
async def client(hub: Hub) -> AsyncIterator[httpx.AsyncClient]:
    async with await admin_client(hub) as c:
        yield c


async def page(client: httpx.AsyncClient, offset: int, limit: int) -> dict[str, Any]:
    r = await client.get("/hub/api/users", params={"offset": offset, "limit": limit},
                         headers=PAGINATION)
    assert r.status_code == 200
    body: dict[str, Any] = r.json()
    return body


async def test_a_page_shows_each_user_as_their_own_endpoint_does(
        client: httpx.AsyncClient) -> None:
    got = (await page(client, 0, 50))["items"]
    assert [u["name"] for u in got] == sorted([*NAMES, "root"])
    for model in got:
        alone = (await client.get(f"/hub/api/users/{model['name']}")).json()
        assert model == alone
    by_name = {u["name"]: u for u in got}
    assert sorted(by_name["ann"]["servers"]) == ["", "gpu"]
    assert by_name["ann"]["servers"]["gpu"]["site_status"] == "unreachable"
    assert by_name["ann"]["servers"][""]["site_status"] == "reachable"
    assert by_name["cat"]["servers"][""]["site_status"] == "unreachable"
    assert by_name["bob"]["servers"] == {} and by_name["bob"]["server"] is None
    assert list(by_name["eve"]["servers"]) == ["big"]


async def test_pages_walk_the_users_in_name_order(client: httpx.AsyncClient) -> None:
    first = await page(client, 0, 3)
    assert [u["name"] for u in first["items"]] == ["ann", "bob", "cat"]
    nxt = first["_pagination"].pop("next")
    assert first["_pagination"] == {"offset": 0, "limit": 3, "total": 7}
    assert (nxt["offset"], nxt["limit"]) == (3, 3)
    # jupyterhub-idle-culler walks the pages by following next's url
    names, url = [], "/hub/api/users?limit=3"
    while url:
        body = (await client.get(url, headers=PAGINATION)).json()
        names += [u["name"] for u in body["items"]]
        url = (body["_pagination"]["next"] or {}).get("url")
    assert names == sorted([*NAMES, "root"])
    last = await page(client, 6, 3)
    assert [u["name"] for u in last["items"]] == ["root"]
    assert last["_pagination"]["next"] is None
    plain = await client.get("/hub/api/users", params={"offset": 1, "limit": 2})
    assert [u["name"] for u in plain.json()] == ["bob", "cat"]


async def test_a_plain_list_holds_up_to_200_users_as_jupyterhub_s_does(
        hub: Hub, client: httpx.AsyncClient) -> None:
    for n in range(60):
        await create_user(hub, f"user{n:02d}", admin=False, actor="test")
    await hub.projection.wait_for(await hub.store.last_seq())
    plain = await client.get("/hub/api/users")  # a client that does not ask for pages
    assert len(plain.json()) == 67
    paged = await client.get("/hub/api/users", headers=PAGINATION)
    assert len(paged.json()["items"]) == 50 and paged.json()["_pagination"]["total"] == 67


async def test_limits_are_cut_to_the_maximum_as_jupyterhub_does(
        client: httpx.AsyncClient) -> None:
    big = await page(client, 0, 500)
    assert big["_pagination"]["limit"] == 200 and len(big["items"]) == 7
    r = await client.get("/hub/api/users", params={"offset": -1}, headers=PAGINATION)
    assert r.status_code == 400 and "offset" in r.json()["message"]


async def test_a_page_costs_the_same_queries_at_any_size(
        hub: Hub, client: httpx.AsyncClient) -> None:
    statements: list[str] = []
    engine = hub.sessions.kw["bind"]
    event.listen(engine, "before_cursor_execute",
                 lambda *args: statements.append(args[2]))
    await page(client, 0, 2)
    small = len(statements)
    statements.clear()
    await page(client, 0, 7)
    assert len(statements) == small


async def test_a_bug_in_any_handler_is_a_500_that_says_what_failed_not_why(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:

    async def broken(*_args: object, **_kw: object) -> int:
        raise KeyError("SELECT secret FROM credentials")

    monkeypatch.setattr(hub.store, "last_seq", broken)  # stop reads it first
    monkeypatch.setattr(api.spawning, "spawn", broken)
    async with await admin_client(hub) as c:
        stop = await c.delete("/hub/api/users/ann/server")
        spawn = await c.post("/hub/api/users/ann/server", json={})
    assert stop.status_code == spawn.status_code == 500
    assert stop.json() == {"status": 500, "message": "DELETE /hub/api/users/ann/server "
                           "failed: internal error (KeyError); the hub's log has the details"}
    assert spawn.json()["message"].startswith("POST /hub/api/users/ann/server failed: "
                                              "internal error (KeyError)")
    assert "secret" not in stop.text + spawn.text  # the exception's text stays in the log


async def _log_down() -> int:  # what JetStreamStore.last_seq raises when NATS is gone
    raise StoreUnavailable("cannot read stream info: no servers available")


def _database_down(*_args: object, **_kw: object) -> None:
    raise OperationalError("SELECT users", {}, Exception(
        'connection to server at "db.internal" (10.0.0.5), port 5432 failed'))


@pytest.mark.parametrize(("broken", "method", "path", "message"), [
    ("log", "DELETE", "/hub/api/users/ann/server",
     "the event log is unavailable: cannot read stream info: no servers available"),
    # the driver's message names a host: it stays in the log
    ("database", "GET", "/hub/api/users", "the database is unavailable; try again shortly"),
])
async def test_an_unreachable_log_or_database_is_a_503_in_any_handler(
    hub: Hub, monkeypatch: pytest.MonkeyPatch, broken: str, method: str, path: str,
    message: str,
) -> None:
    if broken == "log":
        monkeypatch.setattr(hub.store, "last_seq", _log_down)
    else:
        monkeypatch.setattr(api.users, "list_users", _database_down)
    async with await admin_client(hub) as c:
        r = await c.request(method, path)
    assert r.status_code == 503
    assert r.json() == {"status": 503, "message": message}


async def test_a_revoked_token_or_one_of_a_deleted_user_is_refused(hub: Hub) -> None:
    bob_secret, bob_token = await issue_token(hub, "bob", "t", None, "test")
    dan_secret, _ = await issue_token(hub, "dan", "t", None, "test")
    async with await admin_client(hub) as root:
        for secret in (bob_secret, dan_secret):
            r = await root.get("/hub/api/user", headers={"Authorization": f"token {secret}"})
            assert r.status_code == 200
        r = await root.delete(f"/hub/api/users/bob/tokens/{bob_token.id}")
        assert r.status_code == 204
        assert (await root.delete("/hub/api/users/dan")).status_code == 204
        for secret in (bob_secret, dan_secret):
            r = await root.get("/hub/api/user", headers={"Authorization": f"token {secret}"})
            assert r.status_code == 401
            assert r.json()["message"] == "API token revoked or unknown"
        assert (await root.get("/hub/api/user")).json()["name"] == "root"  # others unaffected


async def test_authentication_with_the_database_down_is_a_503(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "rows", _database_down)
    async with await admin_client(hub) as c:
        r = await c.get("/hub/api/user")
    assert r.status_code == 503
    assert r.json() == {"status": 503, "message": "the database is unavailable; try again shortly"}


async def test_health_is_a_503_while_the_projection_cannot_reach_the_database(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await admin_client(hub) as c:
        assert (await c.get("/hub/api/health")).json()["status"] == "ok"
        monkeypatch.setattr(projection, "RETRY_FIRST", 0.01)
        monkeypatch.setattr(hub.projection, "_apply_batch", _database_down)
        seq = await hub.store.append(envelope(UserCreated(name="gus"), subjects.user("gus")))
        await until(lambda: hub.projection.stall is not None and hub.projection.stall.tries > 1,
                    what="the projection to retry")
        r = await c.get("/hub/api/health")
        assert r.status_code == 503
        body = r.json()
        assert body["status"] == "unavailable" and body["applied"] < seq
        assert body["message"].startswith(f"the database cannot be reached: events from {seq} "
                                          "have waited ")
        assert "db.internal" not in r.text  # the driver's message names a host: log only
        monkeypatch.undo()  # the database is back: the waiting event is applied, not lost
        await hub.projection.wait_for(seq)
        r = await c.get("/hub/api/health")
        assert r.status_code == 200 and r.json()["applied"] >= seq
        assert (await c.get("/hub/api/users/gus")).status_code == 200
