"""Envelopes as plain JSON, for readers that fold many events and cannot afford pydantic.

The pydantic :class:`~fedhub.events.envelope.Envelope` stays the reference. This module
only takes the common shape, an envelope carrying exactly its fields with plain JSON types,
and answers ``None`` for anything else so the caller falls back to the reference path.

Signatures checked here are sound on their own: ``verify`` checks the signature over the
canonical JSON of the very dict the caller reads its fields from. When those bytes differ
from the pydantic canonical form (e.g. a time written with fewer fractional digits), it
falls back to the reference check and accepts only if the reference reads the same fields.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import orjson

from fedhub.events.envelope import Envelope, canonical, decode
from fedhub.events.errors import EventLogError, MalformedEvent
from fedhub.events.signing import KeyRing, PublicKey

FIELDS = frozenset(Envelope.model_fields)
# ISO 8601 as pydantic writes it; anything else goes to the reference decoder.
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)\Z")


@runtime_checkable
class RawReader(Protocol):
    """A store that can hand out the latest messages of many subjects undecoded."""

    def latest_raw(self, subjects: str) -> AsyncGenerator[tuple[int, bytes], None]:
        """``(sequence, wire bytes)`` of the latest message of every subject matching
        ``subjects``, in sequence order, as they arrive (nothing is collected first).

        Bytes are not checked: callers decode them (``loads``) and skip what they cannot
        use. Raises StoreUnavailable if the store cannot be read.
        """
        ...


def loads(raw: bytes) -> dict[str, Any] | None:
    """The envelope as a dict when it has exactly the envelope's fields, each of its plain
    JSON type (``data`` an object, ``version`` an integer); None otherwise, including for
    bytes that are not JSON at all. Never raises."""
    try:
        # orjson: 2.5x faster than json here. What it refuses (NaN, lone surrogates) goes
        # to the reference decoder; integers beyond 64 bits it reads as floats, which
        # verify() then refuses (the reference reads another number), never misreads.
        fields = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(fields) is not dict or fields.keys() != FIELDS:
        return None
    # One expression, not a loop over field names: this runs for every event of a rebuild.
    str_, none = str, None
    if not (type(fields["id"]) is str_ and type(fields["type"]) is str_
            and type(fields["time"]) is str_ and type(fields["actor"]) is str_
            and type(fields["subject"]) is str_ and type(fields["version"]) is int
            and type(fields["data"]) is dict
            and (fields["kid"] is none or type(fields["kid"]) is str_)
            and (fields["signature"] is none or type(fields["signature"]) is str_)
            and (fields["traceparent"] is none or type(fields["traceparent"]) is str_)
            and _TIME.match(fields["time"])):
        return None
    try:
        datetime.fromisoformat(fields["time"])
    except ValueError:
        return None
    return fields


def signing_bytes(fields: dict[str, Any]) -> bytes:
    """Canonical bytes covered by the signature of an envelope given as a dict."""
    return canonical({name: value for name, value in fields.items() if name != "signature"})


def verify(raw: bytes, keyring: KeyRing, roles: frozenset[str]) -> PublicKey:
    """The key that signed the envelope in ``raw``, read as :func:`loads` reads it.

    Raises InvalidSignature (or MalformedEvent) when it is not signed by a key of
    ``roles``, or when the reference decoder would read another type, version, subject
    or data than :func:`loads` does.
    """
    fields = loads(raw)
    if fields is None:
        return decode(raw).verify(keyring, roles)
    return verify_fields(fields, keyring, roles, raw)


def verify_fields(fields: dict[str, Any], keyring: KeyRing, roles: frozenset[str],
                  raw: bytes | None = None) -> PublicKey:
    """Like :func:`verify`, for an envelope already read by :func:`loads` (from ``raw``,
    if the caller still has it)."""
    if fields["kid"] is not None and fields["signature"] is not None:
        try:
            return keyring.verify(fields["kid"], signing_bytes(fields), fields["signature"],
                                  roles)
        except EventLogError:
            pass  # maybe signed over the pydantic form of a non-canonical field: check that
    env = decode(raw if raw is not None else canonical(fields))
    key = env.verify(keyring, roles)
    if (env.type, env.version, env.subject, env.data) != (
            fields["type"], fields["version"], fields["subject"], fields["data"]):
        raise MalformedEvent("the reference decoder reads this event differently")
    return key
