"""The plain-JSON envelope path agrees with the pydantic reference, or steps aside."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhub.events import raw
from fedhub.events.envelope import Envelope, decode, new_event
from fedhub.events.errors import EventLogError
from fedhub.events.signing import KeyRing, SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import RouteAdded

COORD = frozenset({"coordinator"})
KEY = SigningKey.generate()
AGENT = SigningKey.generate()
RING = KeyRing()
RING.add_signing_key(KEY, "coordinator", "hub")
RING.add_signing_key(AGENT, "site-agent", "site1")


def route(user: str = "alice", target: str = "http://10.0.0.5:8888",
          signer: SigningKey | None = KEY) -> Envelope:
    payload = RouteAdded(prefix=f"/user/{user}/", target=target, user=user, site="site1")
    return new_event(subjects.route(user, ""), payload, actor="coordinator", signer=signer)


def rewrite(env: Envelope, **changes: Any) -> bytes:
    fields = json.loads(env.encode())
    fields.update(changes)
    return json.dumps(fields).encode()


@given(st.text(), st.text())
def test_loads_and_signing_bytes_agree_with_the_reference(user: str, target: str) -> None:
    env = route(user, target)
    fields = raw.loads(env.encode())
    assert fields == env.model_dump(mode="json")
    assert raw.signing_bytes(fields) == env.signing_bytes()


@pytest.mark.parametrize("data", [
    b"{not json", b"\xff\xfe", b"[1, 2]", b"null",
    rewrite(route(), extra=1),
    rewrite(route(), version="1"),
    rewrite(route(), version=True),
    rewrite(route(), data=[1]),
    rewrite(route(), kid=5),
    rewrite(route(), time="yesterday"),
    rewrite(route(), time="2026-13-40T00:00:00Z"),
    rewrite(route(), subject=None),
    # JSON the stdlib reads but orjson refuses: left to the reference decoder.
    rewrite(route(), data={"x": float("nan")}),
    rewrite(route(), data={"s": "\ud800"}),
])
def test_loads_steps_aside_for_anything_unusual(data: bytes) -> None:
    assert raw.loads(data) is None


def test_loads_drops_nothing_it_accepts() -> None:
    fields = json.loads(route().encode())
    del fields["traceparent"]  # pydantic would fill in the default: not the plain shape
    assert raw.loads(json.dumps(fields).encode()) is None


def test_verify_accepts_a_coordinator_signature() -> None:
    assert raw.verify(route().encode(), RING, COORD).kid == KEY.kid


@pytest.mark.parametrize("data", [
    rewrite(route(), data={**route().data, "target": "http://evil:1"}),  # tampered field
    rewrite(route(), subject=subjects.route("mallory", "")),
    route(signer=AGENT).encode(),  # a key of the wrong role
    route(signer=SigningKey.generate()).encode(),  # a key nobody enrolled
    route(signer=None).encode(),  # unsigned
    rewrite(route(), signature="not base64 !"),
    b"{not json",
])
def test_verify_refuses_forgeries(data: bytes) -> None:
    with pytest.raises(EventLogError):
        raw.verify(data, RING, COORD)


def test_verify_falls_back_to_the_reference_form() -> None:
    # Signed over pydantic's "Z"; the wire says "+00:00": the plain form differs, the
    # reference form still matches, and both read the same fields.
    env = route()
    data = rewrite(env, time=env.model_dump(mode="json")["time"].replace("Z", "+00:00"))
    assert decode(data).signing_bytes() == env.signing_bytes()
    assert raw.verify(data, RING, COORD).kid == KEY.kid


def test_verify_never_reads_a_big_integer_differently() -> None:
    # orjson reads integers beyond 64 bits as floats: the plain canonical form no longer
    # matches, and the reference reads another number, so the event is refused rather
    # than misread (route events carry only strings; this is about soundness).
    env = new_event(subjects.user("n"), RouteAdded(prefix="/", target="http://h:1", user="n"),
                    actor="coordinator", signer=None)
    env = env.model_copy(update={"data": {**env.data, "n": 2**70 + 1}, "kid": KEY.kid})
    env = env.model_copy(update={"signature": KEY.sign(env.signing_bytes())})
    assert env.verify(RING, COORD).kid == KEY.kid
    with pytest.raises(EventLogError):
        raw.verify(env.encode(), RING, COORD)
