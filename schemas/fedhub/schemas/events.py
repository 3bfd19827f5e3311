"""Event and command payloads (the ``data`` of an envelope), one model per type.

Events are past tense, commands imperative. Payloads never carry secrets: no passwords,
tokens or private keys; keys appear only as public keys.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class ServerStatus(StrEnum):
    """Where a server is in its life; see DESIGN.md section 3."""

    REQUESTED = "requested"
    ACCEPTED = "accepted"
    SUBMITTED = "submitted"
    RUNNING = "running"
    READY = "ready"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def active(self) -> bool:
        """True while the server exists or is on its way (not stopped or failed)."""
        return self not in (ServerStatus.STOPPED, ServerStatus.FAILED)

    @property
    def pending(self) -> bool:
        """True while a spawn is under way (JupyterHub's ``pending == "spawn"``)."""
        return self in (ServerStatus.REQUESTED, ServerStatus.ACCEPTED, ServerStatus.SUBMITTED,
                        ServerStatus.RUNNING)


class Payload(BaseModel):
    """Base of every event payload; ``TYPE`` is the envelope's ``type``."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    TYPE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1


# -- users and logins ---------------------------------------------------------------------

class UserCreated(Payload):
    TYPE = "UserCreated"
    name: str
    admin: bool = False


class UserUpdated(Payload):
    TYPE = "UserUpdated"
    name: str
    admin: bool


class UserDeleted(Payload):
    TYPE = "UserDeleted"
    name: str


class UserLoggedIn(Payload):
    TYPE = "UserLoggedIn"
    name: str
    session_id: str
    method: str = "password"
    remote_addr: str | None = None


class UserLoginFailed(Payload):
    TYPE = "UserLoginFailed"
    name: str
    reason: str
    remote_addr: str | None = None


class UserLoggedOut(Payload):
    TYPE = "UserLoggedOut"
    name: str
    session_id: str


class TokenIssued(Payload):
    TYPE = "TokenIssued"
    user: str
    token_id: str
    note: str = ""
    expires_at: datetime | None = None


class TokenRevoked(Payload):
    TYPE = "TokenRevoked"
    user: str
    token_id: str


class KeyPublished(Payload):
    """A component's public Ed25519 key; ``role`` says what it may sign."""

    TYPE = "KeyPublished"
    kid: str
    public_key: str
    role: str  # "coordinator" | "edge-proxy" | "site-agent"
    name: str


class KeyRevoked(Payload):
    """A key that must no longer be trusted (a removed site, a retired component)."""

    TYPE = "KeyRevoked"
    kid: str
    reason: str = ""


# -- sites --------------------------------------------------------------------------------

class SiteRegistered(Payload):
    TYPE = "SiteRegistered"
    name: str
    backend: str
    description: str = ""
    weight: int = 1


class SiteUpdated(Payload):
    """Operator changes: weight 0 drains the site (no new servers)."""

    TYPE = "SiteUpdated"
    name: str
    weight: int
    description: str = ""


class SiteRemoved(Payload):
    TYPE = "SiteRemoved"
    name: str


class SiteUnreachable(Payload):
    """The site's agent stopped reporting in; its servers are shown as unreachable."""

    TYPE = "SiteUnreachable"
    site: str
    last_seen: datetime | None = None


class SiteReachable(Payload):
    """The site reports in again after being unreachable."""

    TYPE = "SiteReachable"
    site: str
    away_seconds: float = 0.0


class SiteEventRejected(Payload):
    """A coordinator refused an event a site wrote (bad signature, wrong site, stale)."""

    TYPE = "SiteEventRejected"
    site: str
    subject: str
    seq: int
    event_type: str
    reason: str


class EdgeProxyStarted(Payload):
    """An edge proxy's public URL and tunnel endpoint (agents dial out to it)."""

    TYPE = "EdgeProxyStarted"
    name: str
    kid: str
    tunnel_host: str = ""
    tunnel_port: int = 0


class SiteAgentStarted(Payload):
    TYPE = "SiteAgentStarted"
    site: str
    backend: str
    agent_id: str
    capacity: dict[str, Any] = Field(default_factory=dict)
    options: list[dict[str, Any]] = Field(default_factory=list)  # resources.OptionSpec JSON


class SiteHeartbeat(Payload):
    """Sent on the health stream, not the log: only the latest per site is kept."""

    TYPE = "SiteHeartbeat"
    site: str
    agent_id: str
    servers: int
    capacity: dict[str, Any] = Field(default_factory=dict)


# -- a server's life ----------------------------------------------------------------------

class ServerEvent(Payload):
    """Common fields of every server life-cycle event."""

    user: str
    server: str = ""
    progress: int = 0
    message: str = ""
    STATUS: ClassVar[ServerStatus]


class ServerRequested(ServerEvent):
    TYPE = "ServerRequested"
    STATUS = ServerStatus.REQUESTED
    site: str
    options: dict[str, Any] = Field(default_factory=dict)
    spawn_id: str


class ServerAccepted(ServerEvent):
    TYPE = "ServerAccepted"
    STATUS = ServerStatus.ACCEPTED
    site: str
    spawn_id: str
    reason: str = ""


class ServerSubmitted(ServerEvent):
    TYPE = "ServerSubmitted"
    STATUS = ServerStatus.SUBMITTED
    site: str
    spawn_id: str
    job_id: str
    state: dict[str, Any] = Field(default_factory=dict)


class ServerQueued(ServerEvent):
    """Still waiting at the site; ``message`` says why (e.g. "queued (Resources)")."""

    TYPE = "ServerQueued"
    STATUS = ServerStatus.SUBMITTED
    site: str
    spawn_id: str


class ServerStarted(ServerEvent):
    """The server answered its readiness check at ``target`` (upstream registered)."""

    TYPE = "ServerStarted"
    STATUS = ServerStatus.RUNNING
    site: str
    spawn_id: str
    target: str
    state: dict[str, Any] = Field(default_factory=dict)


class ServerReady(ServerEvent):
    TYPE = "ServerReady"
    STATUS = ServerStatus.READY
    site: str
    spawn_id: str
    url: str
    target: str = ""


class ServerStopRequested(ServerEvent):
    TYPE = "ServerStopRequested"
    STATUS = ServerStatus.STOPPING
    site: str
    spawn_id: str
    requested_by: str = ""


class ServerStopped(ServerEvent):
    TYPE = "ServerStopped"
    STATUS = ServerStatus.STOPPED
    site: str
    spawn_id: str
    reason: str = ""


class ServerFailed(ServerEvent):
    TYPE = "ServerFailed"
    STATUS = ServerStatus.FAILED
    site: str = ""
    spawn_id: str = ""
    reason: str


# -- routes -------------------------------------------------------------------------------

class RouteAdded(Payload):
    TYPE = "RouteAdded"
    prefix: str
    target: str
    user: str
    server: str = ""
    site: str = ""


class RouteRemoved(Payload):
    TYPE = "RouteRemoved"
    prefix: str
    user: str
    server: str = ""
    reason: str = ""


# -- commands (to one site's agent) -------------------------------------------------------

class StartServer(Payload):
    TYPE = "StartServer"
    user: str
    server: str = ""
    spawn_id: str
    prefix: str
    options: dict[str, Any] = Field(default_factory=dict)


class StopServer(Payload):
    TYPE = "StopServer"
    user: str
    server: str = ""
    spawn_id: str
    reason: str = ""


CATALOG: dict[str, type[Payload]] = {
    cls.TYPE: cls
    for cls in (
        UserCreated, UserUpdated, UserDeleted, UserLoggedIn, UserLoginFailed, UserLoggedOut,
        TokenIssued, TokenRevoked, KeyPublished, KeyRevoked, SiteRegistered, SiteUpdated,
        SiteRemoved, SiteUnreachable, SiteReachable, SiteEventRejected, EdgeProxyStarted,
        SiteAgentStarted,
        SiteHeartbeat, ServerRequested, ServerAccepted, ServerSubmitted, ServerQueued,
        ServerStarted,
        ServerReady, ServerStopRequested, ServerStopped, ServerFailed, RouteAdded,
        RouteRemoved, StartServer, StopServer,
    )
}
SERVER_EVENTS: dict[str, type[ServerEvent]] = {
    name: cls for name, cls in CATALOG.items() if issubclass(cls, ServerEvent)
}
