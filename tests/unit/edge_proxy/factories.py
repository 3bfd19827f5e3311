"""Keys, events and tokens for edge proxy tests (shared by unit and integration tests)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fedhub.edge_proxy.state import ProxyState, apply
from fedhub.events.envelope import Envelope, new_event
from fedhub.events.signing import SigningKey
from fedhub.events.store import StoredEvent
from fedhub.schemas import subjects
from fedhub.schemas.events import (
    KeyPublished,
    Payload,
    RouteAdded,
    RouteRemoved,
    TokenRevoked,
    UserCreated,
    UserDeleted,
    UserLoggedOut,
    UserUpdated,
)
from fedhub.schemas.names import server_prefix


def key_event(key: SigningKey, role: str, name: str) -> Envelope:
    """A self-signed KeyPublished, as every component publishes on start."""
    payload = KeyPublished(kid=key.kid, public_key=key.public_b64, role=role, name=name)
    return new_event(subjects.key(key.kid), payload, actor=f"{role}:{name}", signer=key)


def enrolled_key_event(coordinator: SigningKey, agent: SigningKey, site: str) -> Envelope:
    """A site agent's KeyPublished as ``fedhub site add`` writes it: signed by a coordinator."""
    payload = KeyPublished(kid=agent.kid, public_key=agent.public_b64, role="site-agent",
                           name=site)
    return new_event(subjects.key(agent.kid), payload, actor="coordinator", signer=coordinator)


@dataclass
class World:
    """A coordinator key, a site agent key, and helpers making their events and tokens."""

    coordinator: SigningKey = field(default_factory=SigningKey.generate)
    agent: SigningKey = field(default_factory=SigningKey.generate)

    def keys(self) -> list[Envelope]:
        return [key_event(self.coordinator, "coordinator", "hub"),
                enrolled_key_event(self.coordinator, self.agent, "site1")]

    def signed(self, subject: str, payload: Payload, signer: SigningKey | None = None,
               *, unsigned: bool = False) -> Envelope:
        key = None if unsigned else (signer or self.coordinator)
        return new_event(subject, payload, actor="coordinator", signer=key)

    def user(self, name: str, admin: bool = False) -> Envelope:
        return self.signed(subjects.user(name), UserCreated(name=name, admin=admin))

    def user_updated(self, name: str, admin: bool) -> Envelope:
        return self.signed(subjects.user(name), UserUpdated(name=name, admin=admin))

    def user_deleted(self, name: str) -> Envelope:
        return self.signed(subjects.user(name), UserDeleted(name=name))

    def logout(self, name: str, sid: str) -> Envelope:
        return self.signed(subjects.login(name), UserLoggedOut(name=name, session_id=sid))

    def revoke(self, name: str, jti: str) -> Envelope:
        return self.signed(subjects.token(name), TokenRevoked(user=name, token_id=jti))

    def route(self, user: str, target: str, server: str = "", site: str = "site1",
              signer: SigningKey | None = None, unsigned: bool = False) -> Envelope:
        payload = RouteAdded(prefix=server_prefix(user, server), target=target, user=user,
                             server=server, site=site)
        return self.signed(subjects.route(user, server), payload, signer, unsigned=unsigned)

    def unroute(self, user: str, server: str = "") -> Envelope:
        payload = RouteRemoved(prefix=server_prefix(user, server), user=user, server=server)
        return self.signed(subjects.route(user, server), payload)

    def session(self, user: str, sid: str = "sid-1", ttl: float = 3600,
                signer: SigningKey | None = None, **extra: Any) -> str:
        claims = {"typ": "session", "sub": user, "adm": False, "sid": sid,
                  "exp": int(time.time() + ttl), **extra}
        return (signer or self.coordinator).token(claims)

    def api_token(self, user: str, jti: str = "tok-1", signer: SigningKey | None = None,
                  **extra: Any) -> str:
        return (signer or self.coordinator).token({"typ": "api", "sub": user, "jti": jti,
                                                   **extra})


def fold(events: list[Envelope], state: ProxyState | None = None) -> ProxyState:
    """Apply ``events`` in order, numbering them after ``state.seq``."""
    state = state or ProxyState()
    for env in events:
        apply(state, StoredEvent(state.seq + 1, env))
    return state
