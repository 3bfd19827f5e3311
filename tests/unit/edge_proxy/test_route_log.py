"""The rebuild's fast path: routes come in unchecked and are never served unless genuine."""

from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from yarl import URL

from fedhub.edge_proxy.address import tcp_address
from fedhub.edge_proxy.route_log import check_routes
from fedhub.edge_proxy.routes import normalize_prefix
from fedhub.edge_proxy.state import _PLAIN_TARGET, ProxyState, apply, make_route
from fedhub.edge_proxy.sync import rebuild
from fedhub.events.envelope import Envelope
from fedhub.events.memory import MemoryStore
from fedhub.events.raw import RawReader
from fedhub.events.signing import SigningKey
from fedhub.events.store import StoredEvent
from fedhub.schemas import subjects
from tests.unit.edge_proxy.factories import World

TARGET = "http://10.0.0.5:8888"


class ReferenceStore(MemoryStore):
    """A store without the raw read: rebuild takes the pydantic path, checking at once."""

    latest_raw = None  # type: ignore[assignment]


def forgeries(world: World) -> list[tuple[str, Envelope | bytes]]:
    """Route events for users f1..f5 that must never be served, and why."""
    good = world.route("f1", TARGET)
    tampered = json.loads(good.encode())
    tampered["data"]["target"] = "http://evil:1"
    return [
        ("tampered field", json.dumps(tampered).encode()),
        ("wrong key role", world.route("f2", TARGET, signer=world.agent)),
        ("unknown kid", world.route("f3", TARGET, signer=SigningKey.generate())),
        ("unsigned", world.route("f4", TARGET, unsigned=True)),
        ("bad signature", world.route("f5", TARGET).model_copy(
            update={"signature": world.coordinator.sign(b"something else")})),
    ]


async def logged(store: MemoryStore, world: World, extra: list[Envelope | bytes]) -> None:
    for env in world.keys():
        await store.append(env)
    for item in extra:
        if isinstance(item, bytes):
            await store.append_raw(subjects.route(json.loads(item)["data"]["user"], ""), item)
        else:
            await store.append(item)


async def test_forged_routes_are_never_served_during_or_after_the_lazy_phase() -> None:
    world, store, state = World(), MemoryStore(), ProxyState()
    forged = forgeries(world)
    await logged(store, world, [world.route("alice", TARGET), *(f for _, f in forged),
                                world.route("f1", TARGET, server="gpu")])
    await rebuild(store, state)
    assert isinstance(store, RawReader) and state.routes.unchecked > 0  # lazy phase
    for i, (why, _) in enumerate(forged, start=1):
        assert state.routes.match(f"/user/f{i}/lab") is None, why
    # A forged deeper prefix falls back to the genuine shallower one, as if never added.
    assert state.routes.match("/user/f1/gpu/x").server == "gpu"  # type: ignore[union-attr]
    assert state.routes.match("/user/alice/lab").target == TARGET  # type: ignore[union-attr]
    await check_routes(state)
    assert state.routes.unchecked == 0
    assert sorted(r.user + "/" + r.server for r in state.routes.routes()) == ["alice/", "f1/gpu"]
    assert state.servers == {"f1": {"gpu"}}  # named servers of checked routes only


async def test_background_check_drops_forgeries_before_anyone_asks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world, store, state = World(), MemoryStore(), ProxyState()
    forged = forgeries(world)
    await logged(store, world, [f for _, f in forged])
    with caplog.at_level(logging.WARNING):
        await rebuild(store, state)
        # The unsigned one went the reference way, refused at once.
        assert len(state.routes) == state.routes.unchecked == 4
        assert caplog.text.count("is not signed") == 1
        await check_routes(state)
    assert len(state.routes) == 0 and caplog.text.count("dropping route") == 4


async def test_later_events_on_an_unchecked_subject_behave_as_before() -> None:
    world, store, state = World(), MemoryStore(), ProxyState()
    _, tampered = forgeries(world)[0]
    await logged(store, world, [tampered, world.route("bob", TARGET)])
    await rebuild(store, state)
    assert state.routes.unchecked == 2
    # A valid RouteAdded replaces the forged one; a valid RouteRemoved ends bob's route.
    apply(state, StoredEvent(100, world.route("f1", "http://10.0.0.9:1")))
    apply(state, StoredEvent(101, world.unroute("bob")))
    assert state.routes.match("/user/f1/").target == "http://10.0.0.9:1"  # type: ignore[union-attr]
    assert state.routes.match("/user/bob/") is None
    # A forged event cannot end or replace a route that is still unchecked.
    await store.append(world.route("carol", TARGET))
    state = ProxyState()
    await rebuild(store, state)
    forged_removal = world.unroute("carol").model_copy(
        update={"signature": world.coordinator.sign(b"x")})
    apply(state, StoredEvent(102, forged_removal))
    apply(state, StoredEvent(103, world.route("carol", "http://evil:1", signer=world.agent)))
    assert state.routes.match("/user/carol/").target == TARGET  # type: ignore[union-attr]


def odd_route(world: World, user: str, data: dict[str, object], **envelope: object) -> Envelope:
    """A coordinator-signed RouteAdded for ``user`` with arbitrary data (and envelope)."""
    env = world.route(user, TARGET).model_copy(update={"data": data, "signature": None,
                                                      **envelope})
    return env.model_copy(update={"signature": world.coordinator.sign(env.signing_bytes())})


def odd_routes(world: World) -> list[Envelope]:
    """Signed route events of shapes the fast path leaves to the reference (or rejects)."""
    plain = {"prefix": "/user/{}/", "target": TARGET, "user": "{}", "site": "site1"}

    def data(user: str, **changes: object) -> dict[str, object]:
        return {**{k: v.format(user) for k, v in plain.items()}, **changes}

    return [
        odd_route(world, "o1", data("o1", prefix=5)),  # not a string
        odd_route(world, "o2", data("o2", colour="red")),  # extra field: pydantic ignores it
        odd_route(world, "o3", {"prefix": "/user/o3/", "target": TARGET}),  # no user
        odd_route(world, "o4", data("o4"), version=2),  # another version: the reference decides
        odd_route(world, "o5", data("o5"), traceparent="00-abc-def-01"),
        odd_route(world, "o6", data("o6", server=None)),
        odd_route(world, "o7", data("o7", target="http://user@host:1/")),  # yarl decides
    ]


@pytest.mark.parametrize("odd", [
    b"{not json",
    b'{"type": "RouteAdded"}',
    b"[]",
])
async def test_fast_and_reference_rebuilds_agree(
    odd: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    world = World()
    tunnel = "tunnel://site1/dana._"
    events: list[Envelope | bytes] = [
        world.route("alice", TARGET), world.route("alice", TARGET + "/", server="x"),
        world.route("bob", "http://[::1]:9/"), world.route("dana", tunnel),
        world.route("erin", "tunnel://site2/erin._"),  # another site's tunnel
        world.route("gus", "ftp://files:21"), world.route("hal", "http://h:99999"),
        world.route("ivy", TARGET), world.unroute("ivy"),
        *(f for _, f in forgeries(world)),
        *odd_routes(world),
    ]
    results = []
    for store in (MemoryStore(), ReferenceStore()):
        await logged(store, world, events)
        await store.append_raw(subjects.route("zed", ""), odd)
        state = ProxyState()
        with caplog.at_level(logging.WARNING):
            await rebuild(store, state)
        results.append((sorted((r.subject, r.prefix, r.target, r.site, r.seq)
                               for r in state.routes.routes()), state.servers, state.seq))
    assert results[0] == results[1]
    routed = {r[0].split(".")[2] for r in results[0][0]}
    assert routed == {"alice", "bob", "dana", "o2", "o4", "o5", "o7"}
    assert "malformed" in caplog.text  # the odd message is logged and skipped


@given(st.from_regex(_PLAIN_TARGET, fullmatch=True))
def test_targets_taken_without_parsing_are_ones_yarl_accepts(target: str) -> None:
    port = _PLAIN_TARGET.match(target)[2]  # type: ignore[index]
    if port is None or int(port) <= 65535:
        url = URL(target)
        assert url.scheme in ("http", "https") and url.host
        # ... and whose address, worked out without parsing, is the parsed one
        route = make_route("fedhub.route.a._", 1, "/user/a/", target, "a", "", "site1")
        assert route.address == tcp_address(target)


@given(st.text())
def test_route_prefixes_are_normalized_however_they_are_built(prefix: str) -> None:
    route = make_route("fedhub.route.a._", 1, prefix, TARGET, "a", "", "site1")
    assert route.prefix == normalize_prefix(prefix) and route.url_prefix == prefix
