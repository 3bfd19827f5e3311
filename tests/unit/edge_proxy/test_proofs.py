"""Packed proofs put the very event back together, or are the event's bytes themselves."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhub.edge_proxy import proofs
from fedhub.edge_proxy.routes import Route
from fedhub.edge_proxy.state import make_route
from fedhub.events import raw
from fedhub.events.envelope import Envelope, new_event
from fedhub.events.errors import EventLogError
from fedhub.events.signing import KeyRing, SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import RouteAdded

COORD = frozenset({"coordinator"})
KEY = SigningKey.generate()
RING = KeyRing()
RING.add_signing_key(KEY, "coordinator", "hub")


def event(user: str = "alice", target: str = "http://10.0.0.5:8888", server: str = "",
          event_id: str | None = None, traceparent: str | None = None) -> Envelope:
    payload = RouteAdded(prefix=f"/user/{user}/{server}", target=target, user=user,
                         server=server, site="site1")
    return new_event(subjects.route(user, server), payload, actor="coordinator", signer=KEY,
                     event_id=event_id, traceparent=traceparent)


def packed(env: Envelope) -> tuple[bytes, bytes, Route]:
    data = env.encode()
    fields = raw.loads(data)
    assert fields is not None
    body = fields["data"]
    route = make_route(fields["subject"], 7, body["prefix"], body["target"], body["user"],
                       body["server"], body["site"])
    return data, proofs.pack(fields, route, data), route


# Event ids are UUIDs (uuid7, or uuid5 when derived); "" lets new_event make one. Any text
# there would let an id of hundreds of characters outweigh what packing saves.
@given(st.text(min_size=1), st.text(), st.one_of(st.just(""), st.uuids().map(str)),
       st.one_of(st.none(), st.text()))
def test_packed_proofs_give_back_the_fields_read_from_the_event(
    user: str, server: str, event_id: str, traceparent: str | None
) -> None:
    env = event(user, server=server, event_id=event_id or None, traceparent=traceparent)
    data, proof, route = packed(env)
    assert proof[:1] == b"\0" and len(proof) < len(data) / 2
    assert proofs.unpack(proof, route) == raw.loads(data)
    assert proofs.verify(proof, route, RING, COORD).kid == KEY.kid


def test_events_the_route_does_not_reproduce_keep_their_bytes() -> None:
    data, proof, _ = packed(event(target="http://10.0.0.5:8888/"))  # the route strips "/"
    assert proof == data
    env = event()
    _, _, route = packed(env)
    for odd in ("é" + env.signature, "\0" + env.signature):  # type: ignore[operator]
        fields = json.loads(env.encode())
        fields["signature"] = odd
        data = json.dumps(fields).encode()
        read = raw.loads(data)
        assert read is not None and proofs.pack(read, route, data) == data


def test_a_packed_proof_with_a_wrong_signature_does_not_verify() -> None:
    env = event()
    fields = json.loads(env.encode())
    fields["signature"] = KEY.sign(b"something else")
    data = json.dumps(fields).encode()
    read = raw.loads(data)
    _, _, route = packed(env)
    assert read is not None
    proof = proofs.pack(read, route, data)
    assert proof[:1] == b"\0"
    with pytest.raises(EventLogError):
        proofs.verify(proof, route, RING, COORD)


def test_a_packed_proof_of_another_route_does_not_verify() -> None:
    _, proof, _ = packed(event("alice"))
    _, _, bobs = packed(event("bob"))
    with pytest.raises(EventLogError):
        proofs.verify(proof, bobs, RING, COORD)


def test_unpack_refuses_event_bytes() -> None:
    data, _, route = packed(event())
    with pytest.raises(ValueError):
        proofs.unpack(data, route)


def test_a_proof_packed_from_an_event_of_another_shape_never_verifies() -> None:
    # pack trusts its caller (fold_route) to hand it signed RouteAdded events of this
    # version; the event it would put back together from anything else is not the one signed.
    env = event()
    _, _, route = packed(env)
    for name, value in (("version", RouteAdded.VERSION + 1), ("type", "RouteRemoved")):
        fields = json.loads(env.encode())
        fields[name] = value
        fields["signature"] = KEY.sign(raw.signing_bytes(fields))
        data = json.dumps(fields).encode()
        read = raw.loads(data)
        assert read is not None
        proof = proofs.pack(read, route, data)
        assert proof[:1] == b"\0"
        with pytest.raises(EventLogError):
            proofs.verify(proof, route, RING, COORD)
