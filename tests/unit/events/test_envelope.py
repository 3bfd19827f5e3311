"""Envelopes: signing, wire form, typed payloads, ids and upcasting of old versions."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from fedhub.events import envelope as envelope_mod
from fedhub.events.envelope import Envelope, decode, derived_id, new_event, uuid7
from fedhub.events.errors import InvalidSignature, MalformedEvent, UnknownEventType
from fedhub.events.signing import KeyRing, SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import ServerRequested, UserCreated

COORD = frozenset({"coordinator"})


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def ring(key: SigningKey) -> KeyRing:
    ring = KeyRing()
    ring.add_signing_key(key, "coordinator", "coord-1")
    return ring


def make(key: SigningKey | None, name: str = "alice") -> Envelope:
    return new_event(subjects.user(name), UserCreated(name=name, admin=True),
                     actor="coordinator", signer=key)


def test_signed_event_verifies_and_names_its_signer(key: SigningKey, ring: KeyRing) -> None:
    env = make(key)
    signer = env.verify(ring, COORD)
    assert (signer.kid, signer.role, signer.name) == (key.kid, "coordinator", "coord-1")
    assert env.kid == key.kid


@pytest.mark.parametrize(
    "update",
    [
        {"data": {"name": "alice", "admin": False}},
        {"data": {"name": "mallory", "admin": True}},
        {"subject": subjects.user("mallory")},
        {"actor": "site-agent"},
        {"type": "UserUpdated"},
    ],
)
def test_tampered_event_is_rejected(
    key: SigningKey, ring: KeyRing, update: dict[str, Any]
) -> None:
    tampered = make(key).model_copy(update=update)
    with pytest.raises(InvalidSignature, match="bad signature"):
        tampered.verify(ring, COORD)


def test_signature_of_another_event_does_not_transfer(key: SigningKey, ring: KeyRing) -> None:
    a, b = make(key, "alice"), make(key, "bob")
    forged = b.model_copy(update={"signature": a.signature})
    with pytest.raises(InvalidSignature):
        forged.verify(ring, COORD)


def test_key_with_the_wrong_role_is_rejected(key: SigningKey, ring: KeyRing) -> None:
    with pytest.raises(InvalidSignature, match="may not sign"):
        make(key).verify(ring, frozenset({"site-agent", "edge-proxy"}))


def test_unknown_key_is_rejected(ring: KeyRing) -> None:
    stranger = SigningKey.generate()
    with pytest.raises(InvalidSignature, match="unknown signing key"):
        make(stranger).verify(ring, COORD)


def test_unsigned_event_is_rejected(ring: KeyRing) -> None:
    env = make(None)
    assert env.signature is None
    with pytest.raises(InvalidSignature, match="not signed"):
        env.verify(ring, COORD)


def test_stripping_the_signature_is_rejected(key: SigningKey, ring: KeyRing) -> None:
    with pytest.raises(InvalidSignature):
        make(key).model_copy(update={"signature": None}).verify(ring, COORD)


def test_encode_decode_round_trip_keeps_signature_valid(key: SigningKey, ring: KeyRing) -> None:
    env = new_event(
        subjects.server("josé", "gpu"),
        ServerRequested(user="josé", server="gpu", site="hpc", spawn_id="s1",
                        options={"cores": 4, "nested": {"a": [1, 2]}}),
        actor="coordinator", signer=key,
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    back = decode(env.encode())
    assert back == env
    back.verify(ring, COORD)
    assert back.payload() == env.payload()


@pytest.mark.parametrize(
    "raw",
    [b"", b"garbage", b"\xff\xfe\x00", b"[]", b"{}", b'{"id": "x", "type": "UserCreated"}',
     b"null"],
)
def test_decode_garbage_raises_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedEvent, match="not an envelope"):
        decode(raw)


def test_payload_of_unknown_type(key: SigningKey) -> None:
    env = make(key).model_copy(update={"type": "UserTeleported"})
    with pytest.raises(UnknownEventType, match="UserTeleported"):
        env.payload()


@pytest.mark.parametrize("data", [{}, {"name": 5}, {"name": "a", "admin": "maybe"}])
def test_payload_of_invalid_data(key: SigningKey, data: dict[str, Any]) -> None:
    env = make(key).model_copy(update={"data": data})
    with pytest.raises(MalformedEvent, match="invalid UserCreated data"):
        env.payload()


def test_payload_as_checks_the_type(key: SigningKey) -> None:
    env = make(key)
    assert env.payload_as(UserCreated).name == "alice"
    with pytest.raises(MalformedEvent, match="expected ServerRequested"):
        env.payload_as(ServerRequested)


# -- ids ----------------------------------------------------------------------------------


def test_uuid7_ids_follow_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter(range(1_700_000_000_000, 1_700_000_000_050))
    monkeypatch.setattr(envelope_mod.time, "time_ns", lambda: next(clock) * 1_000_000)
    ids = [uuid7() for _ in range(50)]
    assert ids == sorted(ids)
    for n, text in enumerate(ids):
        u = uuid.UUID(text)
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
        assert u.int >> 80 == 1_700_000_000_000 + n


def test_uuid7_ids_are_unique() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert len(set(ids)) == len(ids)


def test_new_events_get_fresh_ids_unless_given(key: SigningKey) -> None:
    assert make(key).id != make(key).id
    fixed = new_event(subjects.user("a"), UserCreated(name="a"), actor="t", signer=key,
                      event_id="fixed-id")
    assert fixed.id == "fixed-id"


def test_derived_id_is_deterministic_and_depends_on_parent_and_purpose() -> None:
    parent = uuid7()
    assert derived_id(parent, "start") == derived_id(parent, "start")
    assert derived_id(parent, "start") != derived_id(parent, "stop")
    assert derived_id(parent, "start") != derived_id(uuid7(), "start")
    uuid.UUID(derived_id(parent, "start"))  # usable as Nats-Msg-Id / envelope id


# -- upcasting ----------------------------------------------------------------------------


def old_user_created(**data: Any) -> Envelope:
    """A version-1 UserCreated as an older coordinator wrote it."""
    return new_event(subjects.user("alice"), UserCreated(name="alice"), actor="old",
                     signer=None).model_copy(update={"version": 1, "data": data})


def test_old_event_version_is_upcast_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {"name": data["username"], "admin": data.get("role") == "admin"}

    monkeypatch.setattr(UserCreated, "VERSION", 2)
    monkeypatch.setitem(envelope_mod.UPCASTERS, ("UserCreated", 1), v1_to_v2)

    old = old_user_created(username="alice", role="admin")
    assert old.payload() == UserCreated(name="alice", admin=True)
    # Round-tripping through the wire does not lose the ability to upcast.
    assert decode(old.encode()).payload() == UserCreated(name="alice", admin=True)
    # New events are written at the new version and read unchanged.
    new = new_event(subjects.user("bob"), UserCreated(name="bob"), actor="c", signer=None)
    assert new.version == 2
    assert new.payload() == UserCreated(name="bob")


def test_upcasters_chain_across_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(UserCreated, "VERSION", 3)
    monkeypatch.setitem(envelope_mod.UPCASTERS, ("UserCreated", 1),
                        lambda d: {"login": d["username"]})
    monkeypatch.setitem(envelope_mod.UPCASTERS, ("UserCreated", 2),
                        lambda d: {"name": d["login"], "admin": False})
    assert old_user_created(username="alice").payload() == UserCreated(name="alice")


def test_missing_upcaster_is_a_malformed_event(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(UserCreated, "VERSION", 2)
    with pytest.raises(MalformedEvent, match="no upcaster for UserCreated v1"):
        old_user_created(username="alice").payload()
