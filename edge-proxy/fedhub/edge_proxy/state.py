"""What the proxy knows, rebuilt from the log: keys, users, revocations and routes.

``apply(state, stored)`` is the fold. It is deterministic and does no I/O, but it updates
``state`` in place and returns it: copying a table of thousands of routes for every event
would make a rebuild quadratic. That is safe because the proxy is single-threaded asyncio
and ``apply`` never awaits, so a request handler never sees a half-applied event.
Events it cannot use (malformed, unknown, unsigned, signed by a key without the right
role) are logged and skipped; ``apply`` never raises on the log's content.

``apply`` is also the reference for the rebuild's fast path (``route_log``), which adds
routes whose signatures ``check_route`` checks later, before they are first served.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from yarl import URL

from fedhub.edge_proxy import proofs
from fedhub.edge_proxy.address import Address, tcp_address
from fedhub.edge_proxy.routes import Route, RouteTable, normalize_prefix
from fedhub.edge_proxy.tunnel_target import PREFIX as TUNNEL_PREFIX
from fedhub.edge_proxy.tunnel_target import parse_target
from fedhub.events.enroll import enroll
from fedhub.events.errors import EventLogError
from fedhub.events.signing import KeyRing
from fedhub.events.store import StoredEvent
from fedhub.schemas.events import (
    Payload,
    RouteAdded,
    RouteRemoved,
    SiteReachable,
    SiteUnreachable,
    TokenRevoked,
    UserCreated,
    UserDeleted,
    UserLoggedOut,
    UserUpdated,
)
from fedhub.schemas.subjects import is_site_fact

log = logging.getLogger(__name__)
COORDINATOR = frozenset({"coordinator"})
# Subject families the proxy folds; every other event in the log is ignored silently.
KEYS = "fedhub.key."
USERS = "fedhub.user."
LOGINS = "fedhub.login."
TOKENS = "fedhub.token."
ROUTES = "fedhub.route."
SITES = "fedhub.site."
_WATCHED = (KEYS, USERS, LOGINS, TOKENS, ROUTES, SITES)
# The usual target, http(s)://host[:port], accepted without parsing it; anything else
# (IPv6, user info, paths) goes through yarl. ASCII digits only: int() reads "٨٠" as 80,
# urlsplit refuses it as a port.
_PLAIN_TARGET = re.compile(r"https?://[A-Za-z0-9][A-Za-z0-9.-]*(:(\d{1,5}))?\Z", re.ASCII)


@dataclass(slots=True)
class User:
    """A user as far as the proxy cares: exists, is admin, since when."""

    name: str
    admin: bool
    created: datetime


@dataclass
class ProxyState:
    """Everything the proxy rebuilt from the log; ``seq`` is the last sequence applied."""

    keyring: KeyRing = field(default_factory=KeyRing)
    users: dict[str, User] = field(default_factory=dict)
    revoked_sessions: set[str] = field(default_factory=set)
    revoked_tokens: set[str] = field(default_factory=set)
    routes: RouteTable = field(default_factory=RouteTable)
    # Named servers ever routed per user: tells "/user/a/lab/" (a path) from a named server.
    servers: dict[str, set[str]] = field(default_factory=dict)
    # Sites in an open "unreachable" episode (coordinators record them from heartbeats).
    unreachable_sites: set[str] = field(default_factory=set)
    seq: int = 0

    def __post_init__(self) -> None:
        # Routes a rebuild adds unchecked are checked against our keyring when first used.
        self.routes.checker = partial(check_route, self)


def check_route(state: ProxyState, route: Route, proof: bytes) -> bool:
    """True if ``proof`` (of the RouteAdded behind ``route``: see ``proofs``) is signed by
    a trusted coordinator key; records the server name then. Logs and answers False
    otherwise; never raises."""
    try:
        proofs.verify(proof, route, state.keyring, COORDINATOR)
    except EventLogError as exc:
        log.warning("dropping route of event %d (%s): %s", route.seq, route.subject, exc)
        return False
    except Exception:  # a bug here must not take the proxy down; the route is not served
        log.exception("dropping route of event %d (%s)", route.seq, route.subject)
        return False
    record_server(state, route.user, route.server)
    return True


def record_server(state: ProxyState, user: str, server: str) -> None:
    """Remember that ``user`` has a server named ``server``. The default server ("") is
    never looked up, and a set per user for it alone cost ~250 bytes per route."""
    if server:
        state.servers.setdefault(user, set()).add(server)


def apply(state: ProxyState, stored: StoredEvent) -> ProxyState:
    """Fold one stored event into ``state`` (in place) and return it; never raises."""
    event = stored.event
    if stored.seq > state.seq:
        state.seq = stored.seq
    if not event.subject.startswith(_WATCHED) or is_site_fact(event.subject):
        return state  # raw site reports count only once a coordinator recorded them
    try:
        if event.subject.startswith(KEYS):
            enroll(state.keyring, stored)  # the one key-trust rule (logs what it refuses)
            return state
        payload = event.payload()
        event.verify(state.keyring, COORDINATOR)
        _apply_payload(state, stored, payload)
    except EventLogError as exc:
        log.warning("skipping event %d (%s on %s): %s", stored.seq, event.type, event.subject, exc)
    except ValueError as exc:  # e.g. a route target that is not a URL
        log.warning("skipping event %d (%s on %s): invalid: %s",
                    stored.seq, event.type, event.subject, exc)
    except Exception:  # a bug here must not stop the proxy from following the log
        log.exception("skipping event %d (%s on %s)", stored.seq, event.type, event.subject)
    return state


def _apply_payload(state: ProxyState, stored: StoredEvent, payload: Payload) -> None:
    event = stored.event
    if isinstance(payload, UserCreated | UserUpdated):
        old = state.users.get(payload.name)
        created = old.created if old is not None else event.time
        state.users[payload.name] = User(payload.name, payload.admin, created)
    elif isinstance(payload, UserDeleted):
        state.users.pop(payload.name, None)
        state.servers.pop(payload.name, None)
    elif isinstance(payload, UserLoggedOut):
        state.revoked_sessions.add(payload.session_id)
    elif isinstance(payload, TokenRevoked):
        state.revoked_tokens.add(payload.token_id)
    elif isinstance(payload, RouteAdded):
        if not event.subject.startswith(ROUTES):
            raise ValueError(f"RouteAdded outside {ROUTES}>")
        state.routes.add(route_of(event.subject, stored.seq, payload))
        record_server(state, payload.user, payload.server)
    elif isinstance(payload, RouteRemoved):
        state.routes.remove(event.subject)
    elif isinstance(payload, SiteUnreachable):
        state.unreachable_sites.add(payload.site)
    elif isinstance(payload, SiteReachable):
        state.unreachable_sites.discard(payload.site)


def route_of(subject: str, seq: int, payload: RouteAdded) -> Route:
    """The table entry for a RouteAdded; raises ValueError on an unusable target.

    Targets are ``http(s)://host:port`` or ``tunnel://<site>/<server-key>``.
    """
    return make_route(subject, seq, payload.prefix, payload.target, payload.user,
                      payload.server, payload.site)


def make_route(subject: str, seq: int, prefix: str, target: str, user: str, server: str,
               site: str) -> Route:
    """The table entry for these RouteAdded fields; raises ValueError on an unusable target.

    Strings many routes share (site, target, upstream host) are interned: one copy for all
    of them.
    """
    stripped = target.rstrip("/") if target.endswith("/") else target
    address: Address | None = None
    if stripped.startswith(TUNNEL_PREFIX):
        # Only a site's own tunnel may carry its servers: never route site A into site B.
        if parse_target(stripped).site != site:
            raise ValueError(f"route target {target!r} is not a tunnel of site {site!r}")
    elif (plain := _PLAIN_TARGET.match(stripped)) is None or int(plain[2] or 0) > 65535:
        url = URL(stripped)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"route target {target!r} is not an http(s) URL")
        address = tcp_address(stripped)
    elif stripped.startswith("http:"):  # the usual target: its address without parsing
        port = plain[2]
        host = stripped[7:plain.start(1)] if port is not None else stripped[7:]
        address = Address(sys.intern(host.lower()), int(port or 0) or 80)  # :0 as urlsplit
    return Route(
        subject=subject,
        # The usual prefix is one normalize_prefix returns unchanged: skip the call.
        prefix=prefix if (prefix.endswith("/") and prefix.startswith("/") and "%" not in prefix)
        else normalize_prefix(prefix),
        url_prefix=prefix,
        target=sys.intern(stripped),
        user=user,
        server=server,
        site=sys.intern(site),
        seq=seq,
        address=address,
    )
