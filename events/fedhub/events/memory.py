"""An in-memory EventStore with the JetStream store's semantics, for unit tests.

It de-duplicates by event id, checks the expected last sequence per subject, hands out
sequence numbers from 1, and fails exactly where the JetStream store fails (the contract
suite in tests/unit/events runs against both).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial

from fedhub.events.envelope import Envelope, decode
from fedhub.events.errors import (
    ConcurrencyError,
    ConsumerMismatch,
    MalformedEvent,
    StoreUnavailable,
)
from fedhub.events.store import StoredEvent
from fedhub.schemas.subjects import matches

log = logging.getLogger(__name__)


@dataclass
class _Message:
    seq: int
    subject: str
    data: bytes


@dataclass
class _MemoryDelivery:
    seq: int
    event: Envelope
    _consumer: _Consumer = field(repr=False)

    async def ack(self) -> None:
        self._consumer.acked.add(self.seq)

    async def nak(self, delay: float = 1.0) -> None:
        await asyncio.sleep(delay)
        self._consumer.in_flight.discard(self.seq)
        async with self._consumer.changed:
            self._consumer.changed.notify_all()


@dataclass
class _Consumer:
    subjects: str
    changed: asyncio.Condition
    acked: set[int] = field(default_factory=set)
    in_flight: set[int] = field(default_factory=set)


class MemoryStore:
    """EventStore kept in a list; see fedhub.events.store.EventStore for the contract."""

    def __init__(self) -> None:
        self._messages: list[_Message] = []
        self._last_by_subject: dict[str, int] = {}
        self._ids: dict[str, int] = {}
        self._changed = asyncio.Condition()
        self._consumers: dict[str, _Consumer] = {}
        self._health: dict[str, tuple[bytes, datetime]] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:  # as the JetStream store's closed connection answers
            raise StoreUnavailable("the event store is closed")

    async def append(self, event: Envelope, *, expected_seq: int | None = None) -> int:
        self._check_open()
        if event.id in self._ids:
            return self._ids[event.id]
        actual = self._last_by_subject.get(event.subject, 0)
        if expected_seq is not None and expected_seq != actual:
            raise ConcurrencyError(event.subject, expected_seq, actual)
        seq = await self._store(event.subject, event.encode())
        self._ids[event.id] = seq
        return seq

    async def append_raw(self, subject: str, data: bytes) -> int:
        self._check_open()
        return await self._store(subject, data)

    async def _store(self, subject: str, data: bytes) -> int:
        seq = len(self._messages) + 1
        self._messages.append(_Message(seq, subject, data))
        self._last_by_subject[subject] = seq
        async with self._changed:
            self._changed.notify_all()
        return seq

    async def last(self, subject: str) -> StoredEvent | None:
        self._check_open()
        seq = self._last_by_subject.get(subject)
        if seq is None:
            return None
        return StoredEvent(seq, decode(self._messages[seq - 1].data))

    def _decoded(self, msg: _Message) -> StoredEvent | None:
        try:
            return StoredEvent(msg.seq, decode(msg.data))
        except MalformedEvent as exc:
            log.warning("skipping malformed message %d on %s: %s", msg.seq, msg.subject, exc)
            return None

    async def first(self, subjects: str = "fedhub.>", *, start: int = 1) -> StoredEvent | None:
        async with aclosing(self.read(subjects, start=start)) as items:
            return await anext(items, None)

    async def read(
        self, subjects: str = "fedhub.>", *, start: int = 1
    ) -> AsyncGenerator[StoredEvent, None]:
        self._check_open()
        end = len(self._messages)
        for msg in self._messages[max(start, 1) - 1 : end]:
            if matches(subjects, msg.subject) and (item := self._decoded(msg)) is not None:
                yield item

    async def follow(
        self, subjects: str = "fedhub.>", *, start: int = 1
    ) -> AsyncGenerator[StoredEvent, None]:
        position = max(start, 1)
        while True:
            self._check_open()
            while position <= len(self._messages):
                msg = self._messages[position - 1]
                position += 1
                if matches(subjects, msg.subject) and (item := self._decoded(msg)) is not None:
                    yield item
            async with self._changed:
                await self._changed.wait_for(partial(self._beyond, position))

    async def latest_per_subject(self, subjects: str) -> list[StoredEvent]:
        self._check_open()
        seqs = sorted(s for subj, s in self._last_by_subject.items() if matches(subjects, subj))
        out = []
        for seq in seqs:
            if (item := self._decoded(self._messages[seq - 1])) is not None:
                out.append(item)
        return out

    async def latest_raw(self, subjects: str) -> AsyncGenerator[tuple[int, bytes], None]:
        """See fedhub.events.raw.RawReader: latest message per subject, undecoded."""
        self._check_open()
        seqs = sorted(s for subj, s in self._last_by_subject.items() if matches(subjects, subj))
        for seq in seqs:
            yield seq, self._messages[seq - 1].data

    def acked(self, durable: str) -> frozenset[int]:
        """The sequences consumer ``durable`` has acked (for tests: what it is done with)."""
        consumer = self._consumers.get(durable)
        return frozenset(consumer.acked) if consumer is not None else frozenset()

    async def delete_consumer(self, durable: str) -> bool:
        self._check_open()
        return self._consumers.pop(durable, None) is not None

    async def consume(
        self, subjects: str, *, durable: str
    ) -> AsyncGenerator[_MemoryDelivery, None]:
        self._check_open()
        consumer = self._consumers.setdefault(durable, _Consumer(subjects, self._changed))
        if consumer.subjects != subjects:
            raise ConsumerMismatch(
                f"durable {durable} consumes {consumer.subjects}, not {subjects}")
        consumer.in_flight.clear()  # a restarted consumer gets its unacked messages again
        while True:
            for msg in list(self._messages):
                if msg.seq in consumer.acked or msg.seq in consumer.in_flight:
                    continue
                if not matches(consumer.subjects, msg.subject):
                    continue
                item = self._decoded(msg)
                if item is None:
                    consumer.acked.add(msg.seq)
                    continue
                consumer.in_flight.add(msg.seq)
                yield _MemoryDelivery(msg.seq, item.event, consumer)
            count = len(self._messages)
            async with self._changed:
                await self._changed.wait_for(partial(self._has_work, consumer, count))
            self._check_open()

    def _beyond(self, position: int) -> bool:
        return self._closed or position <= len(self._messages)

    def _has_work(self, consumer: _Consumer, seen: int) -> bool:
        if self._closed or len(self._messages) > seen:
            return True
        return any(
            m.seq not in consumer.acked
            and m.seq not in consumer.in_flight
            and matches(consumer.subjects, m.subject)
            for m in self._messages
        )

    async def put_health(self, subject: str, data: bytes) -> None:
        self._check_open()
        self._health[subject] = (data, datetime.now(UTC))

    async def latest_health(self, subjects: str) -> dict[str, tuple[bytes, datetime]]:
        self._check_open()
        return {s: v for s, v in self._health.items() if matches(subjects, s)}

    async def last_seq(self) -> int:
        self._check_open()
        return len(self._messages)

    async def close(self) -> None:
        """Refuse every later call, and end followers and consumers, with StoreUnavailable."""
        self._closed = True
        async with self._changed:
            self._changed.notify_all()
