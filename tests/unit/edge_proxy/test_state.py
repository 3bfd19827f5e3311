"""The fold over the log: keys, users, revocations and routes."""

from __future__ import annotations

import logging

import pytest

from fedhub.edge_proxy.state import ProxyState, apply
from fedhub.events.envelope import Envelope, new_event
from fedhub.events.signing import SigningKey
from fedhub.events.store import StoredEvent
from fedhub.schemas import subjects
from fedhub.schemas.events import KeyPublished
from tests.unit.edge_proxy.factories import World, fold, key_event

TARGET = "http://10.0.0.5:8888"


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def state(world: World) -> ProxyState:
    return fold(world.keys())


def test_keys_are_enrolled_with_their_role(world: World, state: ProxyState) -> None:
    coordinator = state.keyring.get(world.coordinator.kid)
    agent = state.keyring.get(world.agent.kid)
    assert coordinator is not None and coordinator.role == "coordinator"
    assert agent is not None and agent.role == "site-agent"


def test_key_not_signed_by_itself_is_skipped(world: World) -> None:
    stranger = SigningKey.generate()
    payload = KeyPublished(kid=stranger.kid, public_key=stranger.public_b64,
                           role="coordinator", name="evil")
    forged = new_event(subjects.key(stranger.kid), payload, actor="x", signer=world.agent)
    state = fold([*world.keys(), forged])
    assert state.keyring.get(stranger.kid) is None


def test_key_cannot_change_its_role(world: World, state: ProxyState) -> None:
    fold([key_event(world.agent, "coordinator", "site1")], state)
    key = state.keyring.get(world.agent.kid)
    assert key is not None and key.role == "site-agent"


def test_route_added_replaced_removed(world: World, state: ProxyState) -> None:
    fold([world.route("alice", TARGET)], state)
    route = state.routes.match("/user/alice/lab")
    assert route is not None and route.target == TARGET and route.site == "site1"
    fold([world.route("alice", "http://10.0.0.6:9999/")], state)
    assert len(state.routes) == 1
    assert state.routes.match("/user/alice/").target == "http://10.0.0.6:9999"  # type: ignore[union-attr]
    fold([world.unroute("alice")], state)
    assert state.routes.match("/user/alice/") is None
    assert "alice" not in state.servers  # only named servers are remembered


def test_named_servers_are_remembered_after_their_route_ends(
    world: World, state: ProxyState
) -> None:
    fold([world.route("alice", TARGET), world.route("alice", "http://gpu:1", server="gpu"),
          world.unroute("alice", "gpu")], state)
    assert state.servers == {"alice": {"gpu"}}


def test_named_server_is_the_longer_prefix(world: World, state: ProxyState) -> None:
    fold([world.route("alice", TARGET), world.route("alice", "http://gpu:1", server="gpu")],
         state)
    assert state.routes.match("/user/alice/gpu/api").target == "http://gpu:1"  # type: ignore[union-attr]
    assert state.routes.match("/user/alice/api").target == TARGET  # type: ignore[union-attr]


@pytest.mark.parametrize("how", ["unsigned", "site-agent", "unknown-key"])
def test_route_not_signed_by_a_coordinator_is_ignored(
    world: World, state: ProxyState, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    signer = {"unsigned": None, "site-agent": world.agent,
              "unknown-key": SigningKey.generate()}[how]
    event = world.route("alice", TARGET, signer=signer, unsigned=signer is None)
    with caplog.at_level(logging.WARNING):
        fold([event], state)
    assert len(state.routes) == 0
    assert "skipping event" in caplog.text


def test_tampered_route_is_ignored(world: World, state: ProxyState) -> None:
    good = world.route("alice", TARGET)
    tampered = good.model_copy(update={"data": {**good.data, "target": "http://evil:1"}})
    fold([tampered], state)
    assert len(state.routes) == 0


def _raw(world: World, subject: str, type_: str, data: dict[str, object]) -> Envelope:
    env = world.route("alice", TARGET)
    env = env.model_copy(update={"subject": subject, "type": type_, "data": data,
                                 "signature": None})
    return env.model_copy(update={"signature": world.coordinator.sign(env.signing_bytes())})


@pytest.mark.parametrize("type_, data", [
    ("RouteAdded", {"prefix": "/user/alice/"}),  # no target
    ("RouteAdded", {"prefix": "/user/alice/", "user": "alice", "target": "not a url"}),
    ("RouteSwizzled", {"prefix": "/user/alice/"}),  # unknown type
])
def test_malformed_event_is_skipped(
    world: World, state: ProxyState, type_: str, data: dict[str, object]
) -> None:
    fold([_raw(world, subjects.route("alice", ""), type_, data),
          world.route("bob", TARGET)], state)
    assert [r.user for r in state.routes.routes()] == ["bob"]


def test_users_and_revocations(world: World, state: ProxyState) -> None:
    fold([world.user("alice"), world.user("bob", admin=True), world.user_updated("alice", True),
          world.user_deleted("bob"), world.logout("alice", "s1"), world.revoke("alice", "t1")],
         state)
    assert state.users["alice"].admin is True
    assert "bob" not in state.users
    assert state.revoked_sessions == {"s1"}
    assert state.revoked_tokens == {"t1"}


def test_unsigned_user_event_is_ignored(world: World, state: ProxyState) -> None:
    forged = world.signed(subjects.user("mallory"), world.user("mallory").payload(),
                          unsigned=True)
    fold([forged], state)
    assert "mallory" not in state.users


def test_irrelevant_events_only_move_the_sequence(world: World, state: ProxyState) -> None:
    before = state.seq
    env = world.route("alice", TARGET).model_copy(update={"subject": "fedhub.site.x"})
    apply(state, StoredEvent(before + 5, env))
    assert state.seq == before + 5 and len(state.routes) == 0
