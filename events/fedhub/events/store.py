"""The EventStore interface, shared by the JetStream store and the in-memory store.

Both implementations pass one contract suite (tests/unit/events/contract.py), so code
tested against the in-memory store behaves the same against NATS.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from fedhub.events.envelope import Envelope


class Delivery(Protocol):
    """One message handed to a durable consumer; ack it once handled."""

    seq: int
    event: Envelope

    async def ack(self) -> None:
        """Mark handled: the consumer will not see it again, even after a restart."""
        ...

    async def nak(self, delay: float = 1.0) -> None:
        """Hand it back for redelivery after ``delay`` seconds."""
        ...


@dataclass(frozen=True)
class StoredEvent:
    """An envelope with the stream sequence the store gave it."""

    seq: int
    event: Envelope


class EventStore(Protocol):
    """An append-only log of envelopes, ordered by a stream sequence starting at 1."""

    async def append(self, event: Envelope, *, expected_seq: int | None = None) -> int:
        """Append ``event`` on ``event.subject`` and return its stream sequence.

        ``expected_seq`` is the sequence of the last event on that subject the caller saw
        (0: the subject must be empty); a mismatch raises ConcurrencyError and stores
        nothing. Idempotent per ``event.id``: appending the same id again stores nothing
        and returns the first sequence. Raises StoreUnavailable when the store is down.
        """
        ...

    async def append_raw(self, subject: str, data: bytes) -> int:
        """Append arbitrary bytes (tests and foreign publishers); returns the sequence."""
        ...

    async def last(self, subject: str) -> StoredEvent | None:
        """The latest event on exactly ``subject``, or None if it has none.

        A malformed latest message raises MalformedEvent.
        """
        ...

    async def first(self, subjects: str = "fedhub.>", *, start: int = 1) -> StoredEvent | None:
        """The first event matching ``subjects`` with sequence >= ``start`` (None if there
        is none), fetched by sequence without a consumer. Malformed messages are skipped,
        as ``read`` skips them."""
        ...

    def read(
        self, subjects: str = "fedhub.>", *, start: int = 1
    ) -> AsyncGenerator[StoredEvent, None]:
        """Events matching the wildcard ``subjects`` with sequence >= ``start``, in order,
        up to the end of the log as it was when iteration began, then stop.

        Malformed messages are logged and skipped, never raised.
        """
        ...

    def follow(
        self, subjects: str = "fedhub.>", *, start: int = 1
    ) -> AsyncGenerator[StoredEvent, None]:
        """Like :meth:`read`, then keep yielding new events as they are appended (forever)."""
        ...

    async def latest_per_subject(self, subjects: str) -> list[StoredEvent]:
        """The latest event of every subject matching ``subjects``, in sequence order."""
        ...

    def consume(self, subjects: str, *, durable: str) -> AsyncGenerator[Delivery, None]:
        """Deliveries for a durable consumer named ``durable`` (created on first use).

        Every matching message is delivered until acked, across restarts of the consumer;
        malformed messages are logged, acked and skipped. Runs forever.
        """
        ...

    async def delete_consumer(self, durable: str) -> bool:
        """Remove the durable consumer ``durable`` and what it has not acked (its next
        ``consume`` starts afresh); False if there was none. Idempotent. Raises
        StoreUnavailable."""
        ...

    async def put_health(self, subject: str, data: bytes) -> None:
        """Record a heartbeat outside the log; only the latest per subject is kept. Raises
        StoreUnavailable."""
        ...

    async def latest_health(self, subjects: str) -> dict[str, tuple[bytes, datetime]]:
        """The latest heartbeat per subject matching ``subjects``, with the time stored.
        Raises StoreUnavailable."""
        ...

    async def last_seq(self) -> int:
        """The sequence of the newest message in the log (0 when empty)."""
        ...
