"""The envelope every event and command travels in, and its signature.

The envelope id is a UUIDv7 and doubles as the ``Nats-Msg-Id`` for de-duplication. The
signature covers the canonical JSON of every field but ``signature`` itself.
"""

from __future__ import annotations

import builtins
import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from fedhub.events.errors import InvalidSignature, MalformedEvent, UnknownEventType
from fedhub.events.signing import KeyRing, PublicKey, SigningKey
from fedhub.schemas.events import CATALOG, Payload

P = TypeVar("P", bound=Payload)
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
# (type, version) -> function lifting that version's data one version up.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7)."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def derived_id(parent: str, purpose: str) -> str:
    """A deterministic event id for a reaction to ``parent``.

    Two components reacting to the same event publish the same id, so JetStream keeps one.
    """
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fedhub:{parent}:{purpose}"))


_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def canonical(body: dict[str, Any]) -> bytes:
    """The signed form of an envelope's fields (without ``signature``): compact JSON
    with sorted keys. Every signer and verifier goes through here."""
    return _canonical(body).encode()


class Envelope(BaseModel):
    """One immutable event or command as stored in the log."""

    model_config = ConfigDict(frozen=True)

    id: str
    type: str
    version: int = 1
    time: datetime
    actor: str
    subject: str
    data: dict[str, Any]
    traceparent: str | None = None
    kid: str | None = None
    signature: str | None = None

    def signing_bytes(self) -> bytes:
        """Canonical bytes covered by the signature."""
        return canonical(self.model_dump(mode="json", exclude={"signature"}))

    def encode(self) -> bytes:
        """Wire form (JSON)."""
        return self.model_dump_json().encode()

    def payload(self) -> Payload:
        """The typed payload, upcast to the current version.

        Raises UnknownEventType for a type this version does not know and MalformedEvent
        when the data does not validate.
        """
        cls = CATALOG.get(self.type)
        if cls is None:
            raise UnknownEventType(f"unknown event type {self.type!r}")
        data, version = self.data, self.version
        while version < cls.VERSION:
            up = UPCASTERS.get((self.type, version))
            if up is None:
                raise MalformedEvent(f"no upcaster for {self.type} v{version}")
            data, version = up(data), version + 1
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise MalformedEvent(f"invalid {self.type} data: {exc.errors()[0]['msg']}") from exc

    def payload_as(self, cls: builtins.type[P]) -> P:
        """The payload, checked to be of type ``cls``."""
        value = self.payload()
        if not isinstance(value, cls):
            raise MalformedEvent(f"expected {cls.TYPE}, got {self.type}")
        return value

    def verify(self, keyring: KeyRing, roles: frozenset[str]) -> PublicKey:
        """Return the key that signed this event; raise InvalidSignature otherwise."""
        if self.kid is None or self.signature is None:
            raise InvalidSignature(f"event {self.id} is not signed")
        return keyring.verify(self.kid, self.signing_bytes(), self.signature, roles)


def new_event(
    subject: str,
    payload: Payload,
    *,
    actor: str,
    signer: SigningKey | None,
    event_id: str | None = None,
    traceparent: str | None = None,
) -> Envelope:
    """Build (and sign, when ``signer`` is given) an envelope around ``payload``."""
    env = Envelope(
        id=event_id or uuid7(),
        type=payload.TYPE,
        version=payload.VERSION,
        time=datetime.now(UTC),
        actor=actor,
        subject=subject,
        data=payload.model_dump(mode="json"),
        traceparent=traceparent,
        kid=signer.kid if signer else None,
    )
    if signer is None:
        return env
    return env.model_copy(update={"signature": signer.sign(env.signing_bytes())})


def decode(raw: bytes) -> Envelope:
    """Parse wire bytes; raise MalformedEvent if they are not an envelope."""
    try:
        return Envelope.model_validate_json(raw)
    except ValidationError as exc:
        raise MalformedEvent(f"not an envelope: {exc.errors()[0]['msg']}") from exc
