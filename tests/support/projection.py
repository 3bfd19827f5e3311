"""The projection's test material: a whole life in events, and the rows as plain values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from fedhub.coordinator.db import Projected
from fedhub.events.envelope import Envelope, new_event
from fedhub.events.store import StoredEvent
from fedhub.schemas import events as ev
from fedhub.schemas import subjects
from fedhub.schemas.events import Payload

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def envelope(payload: Payload, subject: str = "", minute: int = 0) -> Envelope:
    env = new_event(subject or subjects.user("x"), payload, actor="test", signer=None)
    return env.model_copy(update={"time": T0 + timedelta(minutes=minute)})


def life() -> list[Envelope]:
    """A user's and a server's whole life, in log order."""
    srv = subjects.server("alice", "gpu")
    common: dict[str, Any] = {"user": "alice", "server": "gpu", "site": "hpc",
                              "spawn_id": "sp-1"}
    return [
        envelope(ev.SiteRegistered(name="hpc", backend="slurm", description="cluster",
                                   weight=2), subjects.site("hpc"), 0),
        envelope(ev.SiteAgentStarted(site="hpc", backend="slurm", agent_id="agent-7"),
                 subjects.site("hpc"), 1),
        envelope(ev.UserCreated(name="alice"), subjects.user("alice"), 2),
        envelope(ev.UserUpdated(name="alice", admin=True), subjects.user("alice"), 3),
        envelope(ev.UserLoggedIn(name="alice", session_id="s"), subjects.login("alice"), 4),
        envelope(ev.TokenIssued(user="alice", token_id="t1", note="ci"),
                 subjects.token("alice"), 5),
        envelope(ev.ServerRequested(**common, options={"cores": 8}), srv, 6),
        envelope(ev.ServerAccepted(**common), srv, 7),
        envelope(ev.ServerSubmitted(**common, job_id="123", progress=30,
                                    message="queued"), srv, 8),
        envelope(ev.ServerStarted(**common, target="http://node1:9000", progress=90), srv, 9),
        envelope(ev.ServerReady(**common, url="/user/alice/gpu/", progress=100), srv, 10),
        envelope(ev.ServerStopRequested(**common, requested_by="alice"), srv, 11),
        envelope(ev.ServerStopped(**common, reason="user asked"), srv, 12),
        envelope(ev.UserCreated(name="bob"), subjects.user("bob"), 13),
        envelope(ev.ServerRequested(user="bob", site="hpc", spawn_id="sp-2"),
                 subjects.server("bob", ""), 14),
        envelope(ev.TokenIssued(user="bob", token_id="t2"), subjects.token("bob"), 15),
        envelope(ev.UserDeleted(name="bob"), subjects.user("bob"), 16),
    ]


def stored(events: list[Envelope]) -> list[StoredEvent]:
    return [StoredEvent(seq, e) for seq, e in enumerate(events, start=1)]


def dump(sessions: sessionmaker[Session]) -> dict[str, list[dict[str, Any]]]:
    """Every projection row, as plain values, in primary-key order (times in UTC)."""
    out: dict[str, list[dict[str, Any]]] = {}
    with sessions() as db:
        for table in Projected.metadata.sorted_tables:
            if table.name == "positions":
                continue
            rows = db.execute(select(table).order_by(*table.primary_key.columns)).mappings()
            out[table.name] = [{k: as_utc(v) if isinstance(v, datetime) else v
                                for k, v in r.items()} for r in rows]
    return out


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (PostgreSQL aware ones); both are UTC."""
    return value.replace(tzinfo=UTC) if value and value.tzinfo is None else value
