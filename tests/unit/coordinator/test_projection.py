"""The SQL projection: a pure fold of the log, rebuilt identically by replay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fedhub.coordinator import projection
from fedhub.coordinator.db import (
    Position,
    Server,
    Site,
    Token,
    User,
    drop_projections,
    make_engine,
)
from fedhub.coordinator.projection import (
    COMMIT_EVERY,
    COMMIT_MAX,
    ProjectionRunner,
    apply,
    next_interval,
)
from fedhub.events.envelope import Envelope
from fedhub.events.errors import StoreUnavailable
from fedhub.events.memory import MemoryStore
from fedhub.events.store import StoredEvent
from fedhub.schemas import events as ev
from fedhub.schemas import subjects
from tests.support.projection import T0, as_utc, dump, envelope, life, stored


@pytest.fixture
def sessions() -> Iterator[sessionmaker[Session]]:
    engine = make_engine("sqlite://")
    yield sessionmaker(engine, expire_on_commit=False)
    engine.dispose()


def fold(sessions: sessionmaker[Session], items: list[StoredEvent]) -> None:
    with sessions.begin() as db:
        for item in items:
            apply(db, item)


def server(sessions: sessionmaker[Session], user: str, name: str) -> Server | None:
    with sessions() as db:
        return db.get(Server, (user, name))


def test_a_server_life_step_by_step(sessions: sessionmaker[Session]) -> None:
    items = stored(life())
    expected_status = {7: "requested", 8: "accepted", 9: "submitted", 10: "running",
                       11: "ready", 12: "stopping", 13: "stopped"}
    for item in items[:13]:
        fold(sessions, [item])
        row = server(sessions, "alice", "gpu")
        if item.seq < 7:
            assert row is None
            continue
        assert row is not None
        assert row.status == expected_status[item.seq]
        assert row.last_seq == item.seq
        assert row.site == "hpc" and row.spawn_id == "sp-1"
        if item.seq == 9:
            assert (row.progress, row.message) == (30, "queued")
        if item.seq in (10, 11, 12):
            assert row.target == "http://node1:9000"
        if item.seq == 11:
            assert as_utc(row.started) == T0 + timedelta(minutes=10)
    row = server(sessions, "alice", "gpu")
    assert row is not None
    assert row.target == "" and row.options == {"cores": 8}
    assert as_utc(row.updated) == T0 + timedelta(minutes=12)


def test_whole_life_rows(sessions: sessionmaker[Session]) -> None:
    fold(sessions, stored(life()))
    with sessions() as db:
        alice = db.get(User, "alice")
        assert alice is not None and alice.admin is True
        assert as_utc(alice.created) == T0 + timedelta(minutes=2)
        # Stopping the server counts as activity, after the login.
        assert as_utc(alice.last_activity) == T0 + timedelta(minutes=12)
        assert db.get(User, "bob") is None
        assert db.scalars(select(Server.user)).all() == ["alice"]
        tokens = {t.id: t for t in db.scalars(select(Token))}
        assert tokens["t1"].revoked is False and tokens["t1"].note == "ci"
        assert tokens["t2"].revoked is True  # revoked with its deleted user
        site = db.get(Site, "hpc")
        assert site is not None
        assert (site.backend, site.description, site.weight, site.agent_id) == (
            "slurm", "cluster", 2, "agent-7")


def test_restart_after_stop_clears_the_old_spawn(sessions: sessionmaker[Session]) -> None:
    events = life()[:13]
    events.append(envelope(ev.ServerRequested(user="alice", server="gpu", site="cloud",
                                              spawn_id="sp-9"),
                           subjects.server("alice", "gpu"), 20))
    fold(sessions, stored(events))
    row = server(sessions, "alice", "gpu")
    assert row is not None
    assert (row.status, row.site, row.spawn_id) == ("requested", "cloud", "sp-9")
    assert row.options == {} and row.target == "" and row.started is None


def test_failed_server_is_inactive_and_loses_its_target(sessions: sessionmaker[Session]) -> None:
    srv = subjects.server("alice", "")
    events = [
        envelope(ev.UserCreated(name="alice"), subjects.user("alice")),
        envelope(ev.ServerRequested(user="alice", site="hpc", spawn_id="a"), srv, 1),
        envelope(ev.ServerStarted(user="alice", site="hpc", spawn_id="a", target="http://n"),
                 srv, 2),
        envelope(ev.ServerFailed(user="alice", reason="node died"), srv, 3),
    ]
    fold(sessions, stored(events))
    row = server(sessions, "alice", "")
    assert row is not None
    assert (row.status, row.target, row.site, row.spawn_id) == ("failed", "", "hpc", "a")


def test_malformed_and_unknown_events_are_skipped(sessions: sessionmaker[Session]) -> None:
    good = envelope(ev.UserCreated(name="alice"), subjects.user("alice"))
    unknown = good.model_copy(update={"type": "UserTeleported", "data": {"name": "eve"}})
    invalid = good.model_copy(update={"data": {"admin": "perhaps"}})
    bad_server = envelope(ev.ServerReady(user="alice", site="s", spawn_id="x", url="/u"),
                          subjects.server("alice", "")).model_copy(update={"data": {"user": 1}})
    items = stored([unknown, invalid, bad_server, good])
    fold(sessions, items)  # must not raise
    assert dump(sessions)["users"] == [
        {"name": "alice", "admin": False, "created": T0,
         "last_activity": None}
    ]
    assert dump(sessions)["servers"] == []


def test_updates_for_missing_rows_are_ignored(sessions: sessionmaker[Session]) -> None:
    fold(sessions, stored([
        envelope(ev.UserUpdated(name="ghost", admin=True)),
        envelope(ev.UserDeleted(name="ghost")),
        envelope(ev.TokenRevoked(user="ghost", token_id="nope")),
        envelope(ev.SiteAgentStarted(site="nowhere", backend="x", agent_id="a")),
        envelope(ev.UserLoggedIn(name="ghost", session_id="s")),
    ]))
    assert all(rows == [] for rows in dump(sessions).values())


def test_replaying_into_a_fresh_database_gives_identical_rows(
    sessions: sessionmaker[Session],
) -> None:
    items = stored(life())
    fold(sessions, items)
    first = dump(sessions)

    other = make_engine("sqlite://")
    try:
        fresh: sessionmaker[Session] = sessionmaker(other)
        for item in items:  # one transaction per event instead of one batch
            fold(fresh, [item])
        assert dump(fresh) == first
    finally:
        other.dispose()

    # Drop the projection tables and replay into the same database.
    with sessions() as db:
        engine = db.get_bind()
    drop_projections(engine)  # type: ignore[arg-type]
    assert all(rows == [] for rows in dump(sessions).values())
    fold(sessions, items)
    assert dump(sessions) == first


def test_delete_and_recreate_in_one_batch(sessions: sessionmaker[Session]) -> None:
    fold(sessions, stored([
        envelope(ev.UserCreated(name="carol", admin=True), subjects.user("carol"), 0),
        envelope(ev.UserDeleted(name="carol"), subjects.user("carol"), 1),
        envelope(ev.UserCreated(name="carol"), subjects.user("carol"), 2),
    ]))
    with sessions() as db:
        carol = db.get(User, "carol")
        assert carol is not None and carol.admin is False
        assert as_utc(carol.created) == T0 + timedelta(minutes=2)


# -- the runner ---------------------------------------------------------------------------


class Counting:
    """Wraps ``apply`` to record which sequences the runner folds."""

    def __init__(self) -> None:
        self.seqs: list[int] = []

    def __call__(self, db: Session, item: StoredEvent,
                 servers: projection.ServerRows | None = None) -> None:
        self.seqs.append(item.seq)
        apply(db, item, servers)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_runner_follows_the_log_and_resumes_after_restart(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    counter = Counting()
    monkeypatch.setattr(projection, "apply", counter)
    store = MemoryStore()
    events = life()
    for e in events[:5]:
        await store.append(e)

    runner = ProjectionRunner(store, sessions)
    task = asyncio.create_task(runner.run())
    try:
        await runner.wait_for(5, timeout=5)
        seq = 0
        for e in events[5:11]:
            seq = await store.append(e)
        await runner.wait_for(seq, timeout=5)
        row = server(sessions, "alice", "gpu")
        assert row is not None and row.status == "ready"
        assert runner.position() == seq == 11
    finally:
        await stop(task)
    assert counter.seqs == list(range(1, 12))

    # Events written while the projection is down are picked up on restart, once.
    for e in events[11:]:
        seq = await store.append(e)
    counter.seqs.clear()
    restarted = ProjectionRunner(store, sessions)
    assert restarted.position() == 11
    task = asyncio.create_task(restarted.run())
    try:
        await restarted.wait_for(seq, timeout=5)
    finally:
        await stop(task)
    assert counter.seqs == list(range(12, seq + 1))
    with sessions() as db:
        assert db.get(Position, "sql") is not None
        assert db.get(User, "bob") is None
    row = server(sessions, "alice", "gpu")
    assert row is not None and row.status == "stopped"
    assert dump(sessions) == replayed(events)


def replayed(events: list[Envelope]) -> dict[str, list[dict[str, Any]]]:
    engine = make_engine("sqlite://")
    try:
        fresh: sessionmaker[Session] = sessionmaker(engine)
        fold(fresh, stored(events))
        return dump(fresh)
    finally:
        engine.dispose()


async def test_runner_skips_undecodable_messages(sessions: sessionmaker[Session]) -> None:
    store = MemoryStore()
    await store.append_raw(subjects.user("junk"), b"not an envelope")
    seq = await store.append(envelope(ev.UserCreated(name="alice"), subjects.user("alice")))
    runner = ProjectionRunner(store, sessions)
    task = asyncio.create_task(runner.run())
    try:
        await runner.wait_for(seq, timeout=5)
    finally:
        await stop(task)
    with sessions() as db:
        assert db.get(User, "alice") is not None


async def test_a_burst_applied_in_one_batch_gives_the_rows_of_one_by_one(
        sessions: sessionmaker[Session]) -> None:
    store = MemoryStore()
    events = life()
    for e in events[:9]:  # alice's server exists before the burst
        await store.append(e)
    runner = ProjectionRunner(store, sessions)
    task = asyncio.create_task(runner.run())
    try:
        await runner.wait_for(9, timeout=5)
        seq = 0
        for e in events[9:]:  # existing and new servers, all in one go
            seq = await store.append(e)
        await runner.wait_for(seq, timeout=5)
    finally:
        await stop(task)
    assert dump(sessions) == replayed(events)


def test_a_user_deleted_and_back_within_one_batch_gets_a_fresh_server_row(
        sessions: sessionmaker[Session]) -> None:
    srv = subjects.server("dora", "")
    common: dict[str, Any] = {"user": "dora", "site": "hpc"}
    events = [
        envelope(ev.UserCreated(name="dora"), subjects.user("dora"), 0),
        envelope(ev.ServerRequested(**common, spawn_id="a", options={"cores": 2}), srv, 1),
        envelope(ev.ServerStarted(**common, spawn_id="a", target="http://n:1"), srv, 2),
        envelope(ev.UserDeleted(name="dora"), subjects.user("dora"), 3),
        envelope(ev.UserCreated(name="dora"), subjects.user("dora"), 4),
        envelope(ev.ServerRequested(**common, spawn_id="b"), srv, 5),
    ]
    items = stored(events)
    runner = ProjectionRunner(MemoryStore(), sessions)
    runner._apply_batch(items[:2])  # dora's server exists before the batch
    runner._apply_batch(items[2:])  # deleted with her, then requested anew, in one go
    assert dump(sessions) == replayed(events)
    row = server(sessions, "dora", "")
    assert row is not None and (row.spawn_id, row.options, row.target) == ("b", {}, "")


async def test_watchers_see_their_subjects_events_once_the_tables_show_them(
        sessions: sessionmaker[Session]) -> None:
    store = MemoryStore()
    events = life()
    runner = ProjectionRunner(store, sessions)
    task = asyncio.create_task(runner.run())
    try:
        with runner.watch(subjects.server("alice", "gpu")) as seen:
            for e in events[:11]:
                await store.append(e)
            types: list[str] = []
            while len(types) < 5:
                item = await asyncio.wait_for(seen.get(), 5)
                types.append(item.event.type)
                row = server(sessions, "alice", "gpu")
                assert row is not None and row.last_seq >= item.seq  # already applied
        assert types == ["ServerRequested", "ServerAccepted", "ServerSubmitted",
                         "ServerStarted", "ServerReady"]
        assert seen.empty()  # nothing about other subjects
    finally:
        await stop(task)


def test_commits_space_out_only_while_batches_hold_several_events() -> None:
    interval = COMMIT_EVERY
    for _ in range(5):  # one event at a time, each waited for: never slowed down
        interval = next_interval(interval, 1)
        assert interval == COMMIT_EVERY
    burst = []
    for _ in range(5):  # a burst: several events in every batch
        interval = next_interval(interval, 7)
        burst.append(interval)
    assert burst == [2 * COMMIT_EVERY, 4 * COMMIT_EVERY, COMMIT_MAX, COMMIT_MAX, COMMIT_MAX]
    after = []
    for _ in range(4):  # single events again: back to COMMIT_EVERY within a few commits
        interval = next_interval(interval, 1)
        after.append(interval)
    assert after == [COMMIT_MAX / 2, COMMIT_MAX / 4, COMMIT_EVERY, COMMIT_EVERY]


async def test_a_runner_whose_log_cannot_be_followed_fails_instead_of_waiting(
        sessions: sessionmaker[Session]) -> None:
    class Unreachable(MemoryStore):
        async def follow(self, subjects: str = "fedhub.>", *, start: int = 1
                         ) -> AsyncGenerator[StoredEvent, None]:
            raise StoreUnavailable("cannot connect to NATS")
            yield  # an async generator, as every store's follow is

    runner = ProjectionRunner(Unreachable(), sessions)
    with pytest.raises(StoreUnavailable):  # the coordinator then runs it again
        await asyncio.wait_for(runner.run(), 5)
