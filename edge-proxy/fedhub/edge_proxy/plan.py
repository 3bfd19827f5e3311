"""What the proxy decided for one request.

Shared by the decisions (proxy.py) and the fast path (front.py, upstream.py), which must
not import each other's modules in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote_plus

from fedhub.edge_proxy.address import Address
from fedhub.edge_proxy.routes import Route


@dataclass(slots=True)
class Plan:
    """Forward to ``target`` with these credentials' rules.

    ``address`` is None when it must be looked up asynchronously (a tunnel target).
    ``source`` is where the caller's credential came from ("header", "query", "cookie"),
    None for the hub (nothing is stripped or asserted then). ``route`` is the user
    server's route (None: the hub). Not frozen: a frozen dataclass costs a microsecond
    more to build, on every request.
    """

    target: str
    address: Address | None
    assertion: str | None
    source: str | None
    route: Route | None = None

    @property
    def label(self) -> str:
        """What the target is called in error pages and logs."""
        route = self.route
        if route is None:
            return "the hub"
        where = f" at site {route.site}" if route.site else ""
        return f"{who(route.user, route.server)}{where}"

    @property
    def site(self) -> str:
        """The site of the user's server ("" for the hub)."""
        return self.route.site if self.route is not None else ""


def who(user: str, server: str) -> str:
    """How error pages name a user's server."""
    return f"the server {server!r} of {user}" if server else f"the server of {user}"


def upstream_target(target: str, plan: Plan) -> str:
    """The path and query to send upstream: a user's server never gets a ``token``
    parameter, whichever credential the request authenticated with (fedhub tokens stay
    out of user code); the hub gets the target as sent."""
    if plan.source is None or "?" not in target:
        return target
    return without_query_param(target, "token")


def without_query_param(target: str, name: str) -> str:
    """``target`` (path and query, as sent) without any ``name=...`` query parameter."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    # Names are compared decoded, as the server will read them (%74oken is token too).
    kept = [p for p in query.split("&") if unquote_plus(p.partition("=")[0]) != name]
    return f"{path}?{'&'.join(kept)}" if kept else path
