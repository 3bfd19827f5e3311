"""The SQL projection: a fold of the log into the coordinator's tables.

``apply`` is the fold; ``ProjectionRunner`` follows the log from the stored position and
applies events in batches, recording the position in the same transaction, so a restart
resumes where it stopped and a dropped database is rebuilt by replaying from 1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, tuple_, update
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from fedhub.coordinator.db import (
    UNREACHABLE,
    EndedSession,
    Position,
    Server,
    Site,
    Token,
    User,
    lock_position,
)
from fedhub.events.errors import EventLogError
from fedhub.events.store import EventStore, StoredEvent
from fedhub.schemas import events as ev
from fedhub.schemas import subjects

log = logging.getLogger(__name__)
COMMIT_EVERY = 0.01  # seconds between commits while events keep coming, doubling up to
COMMIT_MAX = 0.05  # this while every batch holds several events (see ``next_interval``)
RETRY_FIRST, RETRY_MAX = 0.2, 5.0  # seconds between tries while the database is unreachable
STALL_REPORT_EVERY = 60.0  # seconds between error reports while the projection stays stuck
SERVER_SUBJECTS = f"{subjects.ROOT}.server."


ServerRows = dict[tuple[str, str], Server]


@dataclass
class Stall:
    """The projection cannot apply events: since when and when last reported as an error
    (``time.monotonic``), which events wait, and how many tries have failed."""

    since: float
    first: int
    last: int
    reported: float
    tries: int = 0

    def seconds(self) -> float:
        """How long the projection has been stuck."""
        return time.monotonic() - self.since


def apply(db: Session, item: StoredEvent, servers: ServerRows | None = None) -> None:
    """Apply one event to the tables in ``db`` (no commit). Unknown or malformed events
    are logged and ignored; the fold never raises for bad data. ``servers``: the rows of
    every server the batch is about that exist (``_load_servers``), kept up to date here;
    without it each server event looks its row up."""
    if subjects.is_site_fact(item.event.subject):
        return  # raw site reports count only once a coordinator has checked and recorded them
    try:
        p = item.event.payload()
    except EventLogError as exc:
        log.warning("projection skips event %d (%s): %s", item.seq, item.event.type, exc)
        return
    when: datetime = item.event.time
    if isinstance(p, ev.UserCreated):
        db.merge(User(name=p.name, admin=p.admin, created=when))
    elif isinstance(p, ev.UserUpdated):
        if (u := db.get(User, p.name)) is not None:
            u.admin = p.admin
    elif isinstance(p, ev.UserDeleted):
        if (u := db.get(User, p.name)) is not None:
            db.delete(u)
        db.query(Server).filter(Server.user == p.name).delete()
        if servers is not None:
            for key in [k for k in servers if k[0] == p.name]:
                del servers[key]
        db.query(Token).filter(Token.user == p.name).update({"revoked": True})
    elif isinstance(p, ev.UserLoggedOut):
        db.merge(EndedSession(session_id=p.session_id, user=p.name))
    elif isinstance(p, ev.UserLoggedIn):
        if (u := db.get(User, p.name)) is not None:
            u.last_activity = when
    elif isinstance(p, ev.TokenIssued):
        db.merge(Token(id=p.token_id, user=p.user, note=p.note, created=when,
                       expires_at=p.expires_at, revoked=False))
    elif isinstance(p, ev.TokenRevoked):
        if (t := db.get(Token, p.token_id)) is not None:
            t.revoked = True
    elif isinstance(p, ev.SiteRegistered):
        db.merge(Site(name=p.name, backend=p.backend, description=p.description,
                      weight=p.weight))
    elif isinstance(p, ev.SiteUpdated):
        if (s := db.get(Site, p.name)) is not None:
            s.weight, s.description = p.weight, p.description or s.description
    elif isinstance(p, ev.SiteUnreachable):
        if (s := db.get(Site, p.site)) is not None and s.unreachable_since is None:
            s.unreachable_since = when
    elif isinstance(p, ev.SiteReachable):
        if (s := db.get(Site, p.site)) is not None:
            s.unreachable_since = None
    elif isinstance(p, ev.SiteRemoved):
        if (s := db.get(Site, p.name)) is not None:
            db.delete(s)
    elif isinstance(p, ev.SiteAgentStarted):
        if (s := db.get(Site, p.site)) is not None:
            s.agent_id, s.agent_started, s.options = p.agent_id, when, list(p.options)
    elif isinstance(p, ev.ServerEvent):
        _apply_server(db, item.seq, when, p, servers)


def _apply_server(db: Session, seq: int, when: datetime, p: ev.ServerEvent,
                  servers: ServerRows | None) -> None:
    key = (p.user, p.server)
    row = db.get(Server, key) if servers is None else servers.get(key)
    if row is None:
        row = Server(user=p.user, name=p.server, status=p.STATUS.value, updated=when)
        db.add(row)
        if servers is not None:
            servers[key] = row
    row.status, row.updated, row.last_seq = p.STATUS.value, when, seq
    row.progress, row.message = p.progress, p.message
    site = getattr(p, "site", "")
    if site:
        row.site = site
    if spawn_id := getattr(p, "spawn_id", ""):
        row.spawn_id = spawn_id
    if isinstance(p, ev.ServerRequested):
        row.options, row.target, row.started = dict(p.options), "", None
    elif isinstance(p, ev.ServerStarted):
        row.target = p.target
    elif isinstance(p, ev.ServerReady):
        row.started = when
    elif isinstance(p, ev.ServerStopped | ev.ServerFailed):
        row.target = ""
        if (u := db.get(User, p.user)) is not None:
            u.last_activity = when


def _load_servers(db: Session, batch: list[StoredEvent]) -> ServerRows:
    """The existing rows of the servers a batch is about, loaded with one query: each
    event then finds its row here instead of costing a flush and a SELECT of its own (a
    server missing here is new). The dict also keeps the rows alive while the batch is
    applied: the session holds them only weakly."""
    keys = {(str(item.event.data.get("user")), str(item.event.data.get("server")))
            for item in batch if item.event.subject.startswith(SERVER_SUBJECTS)}
    rows: ServerRows = {}
    ordered = list(keys)
    for chunk in range(0, len(ordered), 400):  # SQLite limits the parameters per query
        part = ordered[chunk:chunk + 400]
        for row in db.scalars(select(Server).where(tuple_(Server.user, Server.name).in_(part))):
            rows[(row.user, row.name)] = row
    return rows


def next_interval(interval: float, batched: int) -> float:
    """The least time between this commit and the next: doubled (up to ``COMMIT_MAX``)
    after a batch of several events, halved (down to ``COMMIT_EVERY``) after a lone one.
    A burst thus costs fewer transactions (one lone event in it hardly matters), while a
    client writing one event at a time and waiting for each (``emit(wait=True)``) soon
    waits no more than ``COMMIT_EVERY`` again."""
    return min(interval * 2, COMMIT_MAX) if batched > 1 else max(interval / 2, COMMIT_EVERY)


class ProjectionRunner:
    """Follows the log and keeps the SQL projection current."""

    def __init__(self, store: EventStore, sessions: sessionmaker[Session],
                 name: str = "sql") -> None:
        self._store = store
        self._sessions = sessions
        self._name = name
        self.applied = 0
        self.stall: Stall | None = None  # set while the database cannot be reached
        self._advanced = asyncio.Condition()
        self._watchers: dict[str, set[asyncio.Queue[StoredEvent]]] = {}

    def position(self) -> int:
        """The last sequence applied, as stored in the database."""
        with self._sessions() as db:
            pos = db.get(Position, self._name)
            return pos.seq if pos else 0

    async def run(self) -> None:
        """Apply events forever, batching whatever has arrived since the last commit.

        An idle projection applies an event at once; a busy one commits at most every
        ``COMMIT_EVERY`` seconds, and less often (up to ``COMMIT_MAX``) while it stays busy,
        so a burst costs a few transactions instead of one per event (most of a small
        transaction's cost is fixed, and a burst of spawns is CPU-bound)."""
        self.applied = self.position()
        queue: asyncio.Queue[StoredEvent | Exception] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for item in self._store.follow(start=self.applied + 1):
                    queue.put_nowait(item)
            except Exception as exc:  # e.g. the log unreachable at start: run() raises it
                queue.put_nowait(exc)

        def event(got: StoredEvent | Exception) -> StoredEvent:
            if isinstance(got, Exception):
                raise got
            return got

        pumping = asyncio.create_task(pump())
        committed, interval = 0.0, COMMIT_EVERY
        try:
            while True:
                batch = [event(await queue.get())]
                wait = committed + interval - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                while not queue.empty() and len(batch) < 1000:
                    batch.append(event(queue.get_nowait()))
                interval = next_interval(interval, len(batch))
                await self._apply_while_reachable(batch)
                committed = time.monotonic()
                async with self._advanced:
                    self.applied = batch[-1].seq
                    self._advanced.notify_all()
                if self._watchers:
                    for item in batch:
                        for watcher in self._watchers.get(item.event.subject, ()):
                            watcher.put_nowait(item)
        finally:
            pumping.cancel()

    async def _apply_while_reachable(self, batch: list[StoredEvent]) -> None:
        """Apply ``batch``, waiting out a database that cannot be reached (restarting, or
        a network failure): the batch is retried, never dropped. Meanwhile ``stall`` says
        so (the health check answers 503), and the log has one warning, then an error
        every ``STALL_REPORT_EVERY`` seconds: a database that never comes back (or one
        the driver refuses for good, such as a missing table) gets noticed, not buried
        in a warning per try."""
        pause = RETRY_FIRST
        while True:
            try:
                self._apply_batch(batch)
            except UNREACHABLE as exc:
                self._stalled(batch, str(exc.orig or exc), pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_MAX)
                continue
            if self.stall is not None:
                log.warning("projection reached the database again after %.1f s (%d failed "
                            "tries); applying from event %d", self.stall.seconds(),
                            self.stall.tries, batch[0].seq)
                self.stall = None
            return

    def _stalled(self, batch: list[StoredEvent], error: str, pause: float) -> None:
        stall = self.stall
        if stall is None:
            stall = self.stall = Stall(since=time.monotonic(), first=batch[0].seq,
                                       last=batch[-1].seq, reported=time.monotonic())
            log.warning("projection cannot reach the database (%s); retrying events %d-%d "
                        "until it answers", error, stall.first, stall.last)
        stall.tries += 1
        if time.monotonic() - stall.reported >= STALL_REPORT_EVERY:
            stall.reported = time.monotonic()
            log.error("projection stalled for %.0f s (%d tries) on events %d-%d: %s; the API "
                      "shows the tables as they were and spawns wait", stall.seconds(),
                      stall.tries, stall.first, stall.last, error)
        else:
            log.debug("projection retry %d in %.1f s: %s", stall.tries, pause, error)

    def _apply_batch(self, batch: list[StoredEvent]) -> None:
        """Apply ``batch`` in one transaction. If the database refuses it (a value it will
        not store, say), apply its events one by one and skip only the refused ones: one
        bad event never stops the projection. A database that cannot be reached raises."""
        try:
            self._commit(batch)
        except (DataError, IntegrityError) as exc:
            if len(batch) > 1:
                for item in batch:
                    self._apply_batch([item])
                return
            item = batch[0]
            log.error("projection skips event %d (%s on %s): the database refused it: %s",
                      item.seq, item.event.type, item.event.subject, exc.orig or exc)
            self._commit([], through=item.seq)

    def _commit(self, batch: list[StoredEvent], through: int = 0) -> None:
        """Apply the events of ``batch`` that the stored position has not passed, and move
        the position to the batch's end (or ``through``), in one transaction. Under the
        position's row lock, so coordinators sharing a database apply each event once."""
        end = max(through, batch[-1].seq if batch else 0)
        with self._sessions.begin() as db:
            done = lock_position(db, self._name)
            fresh = [item for item in batch if item.seq > done]
            servers = _load_servers(db, fresh)
            for item in fresh:
                apply(db, item, servers)
            if end > done:
                db.execute(update(Position).where(Position.name == self._name)
                           .values(seq=end))

    @contextmanager
    def watch(self, subject: str) -> Iterator[asyncio.Queue[StoredEvent]]:
        """A queue of the events on ``subject`` read from now on, each put there once it
        is applied (so the tables already show it). Events from before the call may still
        arrive while the projection catches up: compare sequences."""
        queue: asyncio.Queue[StoredEvent] = asyncio.Queue()
        watchers = self._watchers.setdefault(subject, set())
        watchers.add(queue)
        try:
            yield queue
        finally:
            watchers.discard(queue)
            if not watchers and self._watchers.get(subject) is watchers:
                del self._watchers[subject]

    async def wait_for(self, seq: int, timeout: float = 10.0) -> None:
        """Return once event ``seq`` is applied (read-your-writes for the API)."""
        async with self._advanced:
            await asyncio.wait_for(self._advanced.wait_for(lambda: self.applied >= seq), timeout)
