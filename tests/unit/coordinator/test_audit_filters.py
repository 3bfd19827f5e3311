"""``fedhub audit --user/--site``: reading only the subjects that can match changes no row.

The reference is the plain full scan: every event read, verified against the keys
published before it, then filtered.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any

import pytest

from fedhub.coordinator.audit import Filter, describe, rows, subject_filters
from fedhub.events.enroll import enroll
from fedhub.events.memory import MemoryStore
from fedhub.events.signing import KeyRing
from fedhub.events.store import EventStore, StoredEvent
from fedhub.schemas import subjects
from tests.support.auditlog import SITES, T0, USERS, varied_log


async def full_scan(store: EventStore, flt: Filter) -> list[dict[str, Any]]:
    keyring = KeyRing()
    out = []
    async for item in store.read(subjects.ALL):
        if item.event.subject.startswith("fedhub.key."):
            enroll(keyring, item)
        row = describe(item, keyring)
        if flt.keep(row, item.event.time):
            out.append(row)
    return out


def filters() -> list[Filter]:
    users = [None, *USERS, "ALICE", "nobody"]
    sites = [None, *SITES, "nowhere"]
    windows = [(None, None), (T0 + timedelta(minutes=20), T0 + timedelta(minutes=45))]
    return [Filter(user=u, site=s, commands=c, since=since, until=until)
            for u, s, c, (since, until)
            in itertools.product(users, sites, (False, True), windows)]


LOG = varied_log()  # signed once for every test


@pytest.fixture
async def store() -> MemoryStore:
    store = MemoryStore()
    for env in LOG:
        await store.append(env)
    return store


async def test_the_log_exercises_what_filters_get_wrong(store: MemoryStore) -> None:
    every = await full_scan(store, Filter(commands=True))
    signers = {r["signed_by"] for r in every}
    assert "UNVERIFIED" in signers and "coordinator:old-coordinator" in signers
    assert {r["kind"] for r in every} == {"event", "command", "report"}
    assert {r["user"] for r in every} >= set(USERS)


@pytest.mark.parametrize("flt", filters(), ids=repr)
async def test_filtered_rows_equal_the_full_scan(store: MemoryStore, flt: Filter) -> None:
    assert [row async for row in rows(store, flt)] == await full_scan(store, flt)


async def test_revoked_key_verifies_only_what_it_signed_before(store: MemoryStore) -> None:
    got = [r async for r in rows(store, Filter(user="alice"))]
    by_event = {r["event"]: r["signed_by"] for r in got}
    assert by_event["UserCreated"] == "coordinator:old-coordinator"
    assert by_event["UserUpdated"] == "UNVERIFIED"  # signed after its key was revoked
    assert by_event["TokenRevoked"] == "UNVERIFIED"  # a key never published


async def test_a_report_shows_the_user_and_site_it_claims(store: MemoryStore) -> None:
    got = [r async for r in rows(store, Filter(user="alice", site="hpc", commands=True))]
    forged = [r for r in got if r["event"] == "ServerStopped"]
    assert [(r["kind"], r["signed_by"]) for r in forged] == [("report", "site-agent:hpc2")]


class CountingStore:
    """Counts the events a store hands out, whatever the filter."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.handed: list[str] = []

    async def last_seq(self) -> int:
        return await self.inner.last_seq()

    async def first(self, subjects: str = "fedhub.>", *, start: int = 1) -> StoredEvent | None:
        item = await self.inner.first(subjects, start=start)
        if item is not None:
            self.handed.append(item.event.subject)
        return item

    async def read(self, subjects: str = "fedhub.>", *,
                   start: int = 1) -> AsyncGenerator[StoredEvent, None]:
        async for item in self.inner.read(subjects, start=start):
            self.handed.append(item.event.subject)
            yield item


async def test_user_filter_reads_only_that_users_subjects_and_the_keys(
        store: MemoryStore) -> None:
    counting = CountingStore(store)
    got = [r async for r in rows(counting, Filter(user="al"))]  # type: ignore[arg-type]
    assert got and {r["user"] for r in got} == {"al"}
    assert all(s.split(".")[1] == "key" or s.split(".")[2] == "al" for s in counting.handed)


async def test_reading_stops_soon_after_until(store: MemoryStore) -> None:
    counting = CountingStore(store)
    until = T0 + timedelta(minutes=3)
    got = [r async for r in rows(counting, Filter(until=until))]  # type: ignore[arg-type]
    assert got and all(r["time"] <= "2026-05-10T12:03:00Z" for r in got)
    assert len(counting.handed) < len(LOG) // 2


@pytest.mark.parametrize(("user", "other"), [("al", "alice"), ("alice", "alice2")])
def test_a_users_filters_miss_users_whose_names_extend_it(user: str, other: str) -> None:
    theirs = [subjects.user(other), subjects.login(other), subjects.token(other),
              subjects.server(other, ""), subjects.route(other, "gpu")]
    ours = [f for f in subject_filters(Filter(user=user)) if f != "fedhub.key.>"]
    assert not [s for s in theirs if any(subjects.matches(f, s) for f in ours)]


@pytest.mark.parametrize("flt", filters(), ids=repr)
def test_no_event_is_read_twice(flt: Filter) -> None:
    chosen = subject_filters(flt)
    assert all(sum(subjects.matches(f, e.subject) for f in chosen) <= 1 for e in LOG)


async def test_since_skips_the_events_before_it(store: MemoryStore) -> None:
    counting = CountingStore(store)
    flt = Filter(since=T0 + timedelta(minutes=50))
    got = [r async for r in rows(counting, flt)]  # type: ignore[arg-type]
    assert got == await full_scan(store, flt) and got
    assert len(counting.handed) < len(LOG) // 2


async def test_an_event_stamped_a_little_early_by_its_writer_is_still_found() -> None:
    # Writers' clocks disagree: minute 20 is appended before minutes 12-14.
    store = MemoryStore()
    for n, minute in enumerate([0, 10, 20, 12, 13, 14, 30]):
        env = LOG[0].model_copy(update={"id": f"e{n}", "time": T0 + timedelta(minutes=minute)})
        await store.append(env)
    flt = Filter(since=T0 + timedelta(minutes=16))
    got = [r async for r in rows(store, flt)]
    assert [r["time"] for r in got] == ["2026-05-10T12:20:00Z", "2026-05-10T12:30:00Z"]
