"""The coordinator's shared context: the log, its key, the database, settings."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from fedhub.coordinator.db import xsrf_secret
from fedhub.coordinator.errors import Conflict, Unavailable
from fedhub.coordinator.projection import ProjectionRunner
from fedhub.coordinator.settings import CoordinatorSettings
from fedhub.coordinator.throttle import LoginThrottle
from fedhub.events.envelope import Envelope, new_event
from fedhub.events.errors import ConcurrencyError, StoreUnavailable
from fedhub.events.signing import KeyRing, SigningKey
from fedhub.events.store import EventStore
from fedhub.schemas.events import Payload


@dataclass
class Hub:
    """Everything a request handler needs; one per coordinator process."""

    settings: CoordinatorSettings
    store: EventStore
    key: SigningKey
    sessions: sessionmaker[Session]
    projection: ProjectionRunner
    keyring: KeyRing
    # The heartbeat read in flight (sites.heartbeats): requests arriving meanwhile share it.
    heartbeat_read: asyncio.Future[dict[str, tuple[bytes, datetime]]] | None = field(
        default=None, init=False, repr=False)

    @property
    def engine(self) -> Engine:
        """The database the sessions are bound to (for ``db.rows``)."""
        engine = self.sessions.kw["bind"]
        assert isinstance(engine, Engine)
        return engine

    @functools.cached_property
    def login_throttle(self) -> LoginThrottle:
        """This coordinator's count of failed logins."""
        s = self.settings
        return LoginThrottle(s.login_failures_per_user, s.login_failures_per_address,
                             s.login_failure_window)

    @functools.cached_property
    def xsrf_secret(self) -> bytes:
        """The anti-forgery secret shared by every coordinator on this database."""
        return xsrf_secret(self.engine)

    @property
    def actor(self) -> str:
        return f"coordinator:{self.settings.name}"

    def event(self, subject: str, payload: Payload, *, actor: str | None = None,
              event_id: str | None = None) -> Envelope:
        """A signed envelope written by this coordinator on behalf of ``actor``."""
        return new_event(subject, payload, actor=actor or self.actor, signer=self.key,
                         event_id=event_id)

    async def emit(self, subject: str, payload: Payload, *, actor: str | None = None,
                   expected_seq: int | None = None, event_id: str | None = None,
                   wait: bool = False) -> int:
        """Append an event before acting on it; optionally wait until it is projected.

        Raises Conflict when the subject moved (another coordinator got there first) and
        Unavailable when the log cannot be reached.
        """
        env = self.event(subject, payload, actor=actor, event_id=event_id)
        try:
            seq = await self.store.append(env, expected_seq=expected_seq)
        except ConcurrencyError as exc:
            raise Conflict(f"{subject} changed concurrently; try again") from exc
        except StoreUnavailable as exc:
            raise Unavailable(f"the event log is unavailable: {exc}") from exc
        if wait:
            await self.projection.wait_for(seq)
        return seq
