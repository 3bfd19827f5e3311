"""The route table: URL prefix -> upstream target, with longest-prefix lookup.

Prefixes are kept percent-decoded (``/user/ünïcode/``), so a request matches whichever way
the browser chose to encode the name; requests are looked up by their decoded path.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from yarl import URL


@dataclass(frozen=True, slots=True)
class Route:
    """One route, as the coordinator announced it in a RouteAdded event."""

    subject: str  # the log subject that announced it
    prefix: str  # decoded, starts and ends with "/"
    url_prefix: str  # as announced (percent-encoded): the server's base_url
    target: str  # http://host:port, without a trailing slash
    user: str
    server: str
    site: str
    seq: int  # stream sequence of the RouteAdded event
    target_url: URL  # parsed once, reused for every request


def normalize_prefix(prefix: str) -> str:
    """The decoded form of a route prefix, with a trailing slash."""
    decoded = unquote(prefix)
    if not decoded.startswith("/"):
        decoded = "/" + decoded
    return decoded if decoded.endswith("/") else decoded + "/"


class RouteTable:
    """Routes by decoded prefix; ``match`` costs one dict lookup per path depth tried.

    Each route belongs to the log subject that announced it (``fedhub.route.<user>.<server>``):
    a later RouteAdded on that subject replaces it, a RouteRemoved on it removes it.
    """

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        self._by_subject: dict[str, str] = {}  # route subject -> prefix it added
        # How many prefixes have each depth ("/" count): deeper path boundaries cannot match.
        self._depths: dict[int, int] = {}
        self._max_depth = 0

    def __len__(self) -> int:
        return len(self._routes)

    def routes(self) -> list[Route]:
        """Every route, in no particular order."""
        return list(self._routes.values())

    def get(self, prefix: str) -> Route | None:
        """The route with exactly this (decoded or encoded) prefix, or None."""
        return self._routes.get(normalize_prefix(prefix))

    def add(self, route: Route) -> None:
        """Add or replace the route of ``route.subject`` (idempotent)."""
        self.remove(route.subject)
        displaced = self._routes.get(route.prefix)
        if displaced is not None:  # another subject claimed this prefix before: last wins
            self.remove(displaced.subject)
        self._routes[route.prefix] = route
        self._by_subject[route.subject] = route.prefix
        depth = route.prefix.count("/")
        self._depths[depth] = self._depths.get(depth, 0) + 1
        self._max_depth = max(self._max_depth, depth)

    def remove(self, subject: str) -> Route | None:
        """Remove the route announced on ``subject``; return it, or None if there was none."""
        prefix = self._by_subject.pop(subject, None)
        if prefix is None:
            return None
        route = self._routes.pop(prefix)
        depth = prefix.count("/")
        self._depths[depth] -= 1
        if not self._depths[depth]:
            del self._depths[depth]
            self._max_depth = max(self._depths, default=0)
        return route

    def match(self, path: str) -> Route | None:
        """The route whose prefix is the longest prefix of the decoded ``path``, or None.

        ``/user/alice`` (no trailing slash) matches the prefix ``/user/alice/``.
        """
        routes = self._routes
        if not routes:
            return None
        if not path.endswith("/"):
            route = routes.get(path + "/")
            if route is not None:
                return route
        # Candidate prefixes end at each "/" of the path, deepest first; never deeper
        # than the deepest prefix in the table.
        ends: list[int] = []
        pos = path.find("/")
        while pos != -1 and len(ends) < self._max_depth:
            ends.append(pos + 1)
            pos = path.find("/", pos + 1)
        for end in reversed(ends):
            route = routes.get(path[:end])
            if route is not None:
                return route
        return None
