"""The EventStore contract: every store implementation must pass these."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import aclosing

import pytest

from fedhub.events.envelope import new_event
from fedhub.events.errors import ConcurrencyError, ConsumerMismatch, StoreUnavailable
from fedhub.events.raw import RawReader
from fedhub.events.signing import SigningKey
from fedhub.events.store import EventStore, StoredEvent
from fedhub.schemas import subjects
from fedhub.schemas.events import UserCreated, UserUpdated

KEY = SigningKey.generate()


def created(name: str, subject: str | None = None, event_id: str | None = None):  # type: ignore[no-untyped-def]
    return new_event(subject or subjects.user(name), UserCreated(name=name), actor="test",
                     signer=KEY, event_id=event_id)


async def first(it: object, n: int, timeout: float = 5.0) -> list[StoredEvent]:
    out: list[StoredEvent] = []

    async def take() -> None:
        async with aclosing(it) as items:  # type: ignore[type-var]
            async for item in items:
                out.append(item)
                if len(out) == n:
                    return

    await asyncio.wait_for(take(), timeout)
    return out


class EventStoreContract:
    """Subclass and provide a ``store`` fixture returning a fresh, empty store."""

    async def test_append_returns_increasing_sequences(self, store: EventStore) -> None:
        a = await store.append(created("a"))
        b = await store.append(created("b"))
        assert b > a >= 1
        assert await store.last_seq() == b

    async def test_same_id_is_stored_once(self, store: EventStore) -> None:
        ev = created("dup")
        s1 = await store.append(ev)
        s2 = await store.append(ev)
        assert s1 == s2
        assert [e.seq async for e in store.read(subjects.user("dup"))] == [s1]

    async def test_expected_zero_means_subject_is_empty(self, store: EventStore) -> None:
        await store.append(created("x"), expected_seq=0)
        with pytest.raises(ConcurrencyError):
            await store.append(created("x"), expected_seq=0)

    async def test_wrong_expected_sequence_is_refused_and_stores_nothing(
        self, store: EventStore
    ) -> None:
        s1 = await store.append(created("c"))
        bad = new_event(subjects.user("c"), UserUpdated(name="c", admin=True), actor="t",
                        signer=KEY)
        with pytest.raises(ConcurrencyError):
            await store.append(bad, expected_seq=s1 + 100)
        last = await store.last(subjects.user("c"))
        assert last is not None and last.seq == s1 and last.event.type == "UserCreated"
        s2 = await store.append(bad, expected_seq=s1)
        assert s2 > s1

    async def test_two_writers_with_the_same_expectation_one_wins(
        self, store: EventStore
    ) -> None:
        s1 = await store.append(created("race"))
        writes = [
            store.append(new_event(subjects.user("race"), UserUpdated(name="race", admin=i == 0),
                                   actor=f"w{i}", signer=KEY), expected_seq=s1)
            for i in range(2)
        ]
        results = await asyncio.gather(*writes, return_exceptions=True)
        assert sum(isinstance(r, int) for r in results) == 1
        assert sum(isinstance(r, ConcurrencyError) for r in results) == 1

    async def test_last_of_empty_subject_is_none(self, store: EventStore) -> None:
        assert await store.last(subjects.user("nobody")) is None

    async def test_read_filters_by_wildcard_and_start(self, store: EventStore) -> None:
        s1 = await store.append(created("u1"))
        await store.append(created("k1", subject=subjects.key("k1")))
        s3 = await store.append(created("u2"))
        users = [e.seq async for e in store.read("fedhub.user.>")]
        assert users == [s1, s3], users
        assert [e.seq async for e in store.read("fedhub.user.>", start=s1 + 1)] == [s3]
        assert [e async for e in store.read("fedhub.route.>")] == []

    async def test_first_fetches_the_next_match_from_a_sequence(self, store: EventStore
                                                                 ) -> None:
        s1 = await store.append(created("u1"))
        k = await store.append(created("k1", subject=subjects.key("k1")))
        await store.append_raw(subjects.user("bad"), b"{not json")
        s4 = await store.append(created("u2"))
        first = await store.first()
        assert first is not None and (first.seq, first.event.data["name"]) == (s1, "u1")
        later = await store.first("fedhub.user.>", start=s1 + 1)  # skips key and malformed
        assert later is not None and later.seq == s4
        key = await store.first("fedhub.key.>")
        assert key is not None and key.seq == k
        assert await store.first("fedhub.user.>", start=s4 + 1) is None
        assert await store.first("fedhub.route.>") is None

    async def test_malformed_messages_are_skipped(self, store: EventStore) -> None:
        await store.append_raw(subjects.user("bad"), b"{not json")
        good = await store.append(created("good"))
        assert [e.seq async for e in store.read("fedhub.user.>")] == [good]

    async def test_latest_per_subject(self, store: EventStore) -> None:
        await store.append(created("l1"))
        s2 = await store.append(new_event(subjects.user("l1"), UserUpdated(name="l1", admin=True),
                                          actor="t", signer=KEY))
        s3 = await store.append(created("l2"))
        latest = await store.latest_per_subject("fedhub.user.>")
        assert [(e.seq, e.event.type) for e in latest] == [(s2, "UserUpdated"), (s3, "UserCreated")]

    async def test_latest_raw_is_latest_per_subject_undecoded(self, store: EventStore) -> None:
        await store.append(created("r1"))
        await store.append(created("r2"))
        bad = await store.append_raw(subjects.user("r1"), b"{not json")
        await store.append(created("r3"))
        decoded = [(e.seq, e.event.encode()) for e in await store.latest_per_subject(
            "fedhub.user.>")]
        assert isinstance(store, RawReader)
        raw = [item async for item in store.latest_raw("fedhub.user.>")]
        assert [item[0] for item in raw] == sorted([bad, *(seq for seq, _ in decoded)])
        assert [item for item in raw if item[0] != bad] == decoded
        assert (bad, b"{not json") in raw
        assert [item async for item in store.latest_raw("fedhub.route.>")] == []

    async def test_follow_replays_then_goes_live(self, store: EventStore) -> None:
        s1 = await store.append(created("f1"))
        got: list[StoredEvent] = []

        async def consume() -> None:
            got.extend(await first(store.follow("fedhub.user.>"), 2))

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        s2 = await store.append(created("f2"))
        await asyncio.wait_for(task, 5)
        assert [e.seq for e in got] == [s1, s2]

    async def test_durable_consumer_redelivers_unacked_after_restart(
        self, store: EventStore
    ) -> None:
        s1 = await store.append(created("cmd1", subject="fedhub.cmd.site-a.start"))
        await store.append(created("other", subject="fedhub.cmd.site-b.start"))
        s3 = await store.append(created("cmd2", subject="fedhub.cmd.site-a.stop"))
        async def take_one_and_ack() -> int:
            async with aclosing(store.consume("fedhub.cmd.site-a.>", durable="agent-a")) as it:
                async for delivery in it:
                    await delivery.ack()
                    return delivery.seq
            raise AssertionError("consumer ended")

        first_seq = await asyncio.wait_for(take_one_and_ack(), 10)
        # a "restarted" consumer sees only what was not acked, at once
        second_seq = await asyncio.wait_for(take_one_and_ack(), 10)
        assert (first_seq, second_seq) == (s1, s3)

    async def test_a_durable_name_cannot_be_reused_for_other_subjects(
        self, store: EventStore
    ) -> None:
        await store.append(created("m", subject="fedhub.cmd.site-a.start"))
        async with aclosing(store.consume("fedhub.cmd.site-a.>", durable="agent-x")) as it:
            async for delivery in it:
                await delivery.ack()
                break
        with pytest.raises(ConsumerMismatch):
            async with aclosing(store.consume("fedhub.cmd.site-b.>", durable="agent-x")) as it:
                async for _ in it:
                    break

    async def test_a_deleted_consumer_starts_afresh_under_any_filter(
        self, store: EventStore
    ) -> None:
        s1 = await store.append(created("m", subject="fedhub.cmd.site-a.start"))
        s2 = await store.append(created("n", subject="fedhub.cmd.site-b.start"))
        async with aclosing(store.consume("fedhub.cmd.site-a.>", durable="agent-y")) as it:
            async for delivery in it:
                assert delivery.seq == s1  # left unacked
                break
        assert await store.delete_consumer("agent-y") is True
        assert await store.delete_consumer("agent-y") is False
        async with aclosing(store.consume("fedhub.cmd.site-b.>", durable="agent-y")) as it:
            async for delivery in it:
                assert delivery.seq == s2
                break

    async def test_health_keeps_latest_per_subject(self, store: EventStore) -> None:
        await store.put_health("fedhub-health.site.a", b"1")
        await store.put_health("fedhub-health.site.a", b"2")
        await store.put_health("fedhub-health.site.b", b"3")
        health = await store.latest_health("fedhub-health.>")
        assert {k: v[0] for k, v in health.items()} == {
            "fedhub-health.site.a": b"2", "fedhub-health.site.b": b"3"}

    async def test_a_closed_store_answers_store_unavailable(self, store: EventStore) -> None:
        # Components close their store at shutdown while requests and loops may still
        # be under way: each must meet the error it handles, not the client library's.
        await store.append(created("a"))
        await store.put_health("fedhub-health.site.a", b"1")
        async with aclosing(store.follow()) as following, \
                aclosing(store.consume("fedhub.user.>", durable="c1")) as consuming:
            await anext(following)
            await (await anext(consuming)).ack()
            waiting = [asyncio.ensure_future(anext(following)),
                       asyncio.ensure_future(anext(consuming))]
            await asyncio.sleep(0.2)  # both wait for the next event
            await store.close()
            for task in waiting:
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(task, 10)
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.append(created("b")),
            lambda: store.last(subjects.user("a")),
            lambda: store.first(),
            lambda: store.last_seq(),
            lambda: store.latest_per_subject("fedhub.>"),
            lambda: store.put_health("fedhub-health.site.a", b"2"),
            lambda: store.latest_health("fedhub-health.>"),
            lambda: first(store.read(), 1),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable):
                await call()


StoreFactory = Callable[[], Awaitable[EventStore]]
