"""Sessions and passwords at the coordinator: what a logout, a deleted account or a
password change leaves working (nothing it should not)."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from fedhub.coordinator.app import load_keys
from fedhub.coordinator.auth import COOKIE
from fedhub.coordinator.context import Hub
from fedhub.coordinator.users import create_user
from fedhub.events import signing
from fedhub.schemas import subjects
from fedhub.schemas.events import UserLoginFailed

from .conftest import MakeHub, admin_client, client_of

PASSWORD = "correct horse"


@pytest.fixture
async def hub(make_hub: MakeHub) -> Hub:
    made = await make_hub()
    await create_user(made, "root", admin=True, actor="test")
    await create_user(made, "bob", admin=False, actor="test", password=PASSWORD)
    return made


async def log_in(client: httpx.AsyncClient, name: str, password: str) -> str:
    """Log in through the form; the session cookie's value."""
    r = await client.post("/hub/login", data={"username": name, "password": password})
    assert r.status_code == 302, r.text
    return r.cookies[COOKIE]


async def test_a_session_cookie_stops_working_at_logout(hub: Hub) -> None:
    async with client_of(hub) as c:
        cookie = await log_in(c, "bob", PASSWORD)
        assert (await c.get("/hub/api/user")).json()["name"] == "bob"
        assert (await c.get("/hub/logout")).status_code == 302
    async with client_of(hub) as thief:  # a copy of the cookie, kept from before the logout
        thief.cookies.set(COOKIE, cookie)
        assert (await thief.get("/hub/api/user")).status_code == 401
        home = await thief.get("/hub/home")
        assert home.status_code == 302 and home.headers["location"].startswith("/hub/login")
    async with client_of(hub) as c:  # logging in again works, with a new session
        await log_in(c, "bob", PASSWORD)
        assert (await c.get("/hub/api/user")).json()["name"] == "bob"


async def test_a_new_account_of_a_deleted_name_inherits_neither_password_nor_sessions(
        hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    # No slack between the clocks of the cookie and the log (one machine here), so that
    # the account can come back at once.
    monkeypatch.setattr(signing, "CLOCK_SLACK", 0)
    async with client_of(hub) as old_bob:
        cookie = await log_in(old_bob, "bob", PASSWORD)
    async with await admin_client(hub) as root:
        assert (await root.delete("/hub/api/users/bob")).status_code == 204
        r = await root.post("/hub/api/users", json={"usernames": ["bob"]})
        assert r.status_code == 201, r.text
    async with client_of(hub) as c:
        r = await c.post("/hub/login", data={"username": "bob", "password": PASSWORD})
        assert r.status_code == 403
        c.cookies.set(COOKIE, cookie)
        assert (await c.get("/hub/api/user")).status_code == 401


async def test_patch_by_a_differently_cased_name_changes_that_users_password(hub: Hub) -> None:
    async with await admin_client(hub) as root:
        r = await root.patch("/hub/api/users/Bob", json={"password": "a new secret"})
        assert r.status_code == 200 and r.json()["name"] == "bob"
        r = await root.patch("/hub/api/users/BOB", json={"admin": True})
        assert r.status_code == 200 and r.json()["admin"] is True
    async with client_of(hub) as c:
        r = await c.post("/hub/login", data={"username": "bob", "password": PASSWORD})
        assert r.status_code == 403  # the old password no longer works
        await log_in(c, "bob", "a new secret")
        assert (await c.get("/hub/api/user")).json()["admin"] is True


@pytest.mark.parametrize(("method", "path", "body", "message"), [
    ("POST", "/hub/api/users/eve", {"admin": "false"}, "admin must be true or false"),
    ("POST", "/hub/api/users", {"usernames": ["eve"], "admin": 1},
     "admin must be true or false"),
    ("PATCH", "/hub/api/users/bob", {"admin": "yes"}, "admin must be true or false"),
    ("PATCH", "/hub/api/users/bob", {"password": 123456789}, "password must be a string"),
    ("POST", "/hub/api/users/bob/tokens", {"expires_in": 1e12}, "expires_in must be"),
    ("POST", "/hub/api/users/bob/tokens", {"expires_in": True}, "expires_in must be"),
    ("POST", "/hub/api/users/bob/tokens", {"expires_in": -5}, "expires_in must be"),
])
async def test_values_of_the_wrong_type_are_a_400_and_change_nothing(
        hub: Hub, method: str, path: str, body: dict[str, object], message: str) -> None:
    async with await admin_client(hub) as root:
        r = await root.request(method, path, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["message"].startswith(message)
        assert (await root.get("/hub/api/users/eve")).status_code == 404
        bob = (await root.get("/hub/api/users/bob")).json()
        assert bob["admin"] is False
        tokens = (await root.get("/hub/api/users/bob/tokens")).json()
        assert tokens["api_tokens"] == []


async def test_an_infinite_expiry_is_a_400(hub: Hub) -> None:
    # JSON allows NaN and Infinity as Python writes them
    async with await admin_client(hub) as root:
        for raw in (b'{"expires_in": NaN}', b'{"expires_in": Infinity}'):
            r = await root.post("/hub/api/users/bob/tokens", content=raw,
                                headers={"Content-Type": "application/json"})
            assert r.status_code == 400, r.text


async def test_every_coordinator_on_one_database_accepts_the_others_xsrf_value(
        hub: Hub, make_hub: MakeHub, tmp_path: Path) -> None:
    # A second coordinator: its own key and data directory, the same database and log.
    other = await make_hub(hub.store, data_dir=tmp_path / "second", name="second",
                           database_url=hub.settings.db_url)
    await load_keys(other)  # as its start does: the first coordinator's key, from the log
    assert other.key.kid != hub.key.kid
    async with client_of(hub) as first:
        cookie = await log_in(first, "bob", PASSWORD)
        home = await first.get("/hub/home")
        xsrf = re.search(r'name="xsrf" content="([^"]*)"', home.text)
        assert xsrf is not None
    async with client_of(other) as second:  # the next click lands on the other coordinator
        second.cookies.set(COOKIE, cookie)
        r = await second.post("/hub/api/users/bob/tokens", json={"note": "x"},
                              headers={"X-XSRFToken": xsrf.group(1)})
        assert r.status_code == 201, r.text
        r = await second.post("/hub/api/users/bob/tokens", json={"note": "x"},
                              headers={"X-XSRFToken": "0" * 32})
        assert r.status_code == 403


async def test_a_failed_login_records_no_unknown_name(hub: Hub) -> None:
    async with client_of(hub) as c:
        for name, password in (("correct horse", "bob"), ("bob", "wrong password")):
            r = await c.post("/hub/login", data={"username": name, "password": password})
            assert r.status_code == 403
    failed = [item.event.payload_as(UserLoginFailed)
              async for item in hub.store.read(f"{subjects.ROOT}.login.>")
              if item.event.type == UserLoginFailed.TYPE]
    assert [(f.name, f.reason) for f in failed] == [("", "unknown user"),
                                                    ("bob", "wrong password")]


async def test_password_guessing_is_paused_and_stays_out_of_the_log(make_hub: MakeHub,
                                                                    tmp_path: Path) -> None:
    hub = await make_hub(data_dir=tmp_path / "strict", login_failures_per_user=3)
    await create_user(hub, "bob", admin=False, actor="test", password=PASSWORD)

    async def failures() -> int:
        return len([i async for i in hub.store.read(f"{subjects.ROOT}.login.>")
                    if i.event.type == UserLoginFailed.TYPE])

    async with client_of(hub) as c:
        for guess in ("a", "b", "c"):
            r = await c.post("/hub/login", data={"username": "bob", "password": guess})
            assert r.status_code == 403
        r = await c.post("/hub/login", data={"username": "Bob", "password": PASSWORD})
        assert r.status_code == 429  # even the right password waits: nothing is checked
        assert 590 <= int(r.headers["Retry-After"]) <= 600
        assert "Too many failed logins; try again in" in r.text
        assert COOKIE not in r.cookies
        assert await failures() == 3  # refused attempts write nothing to the log
        await create_user(hub, "ann", admin=False, actor="test", password=PASSWORD)
        await log_in(c, "ann", PASSWORD)  # another account from the same address
