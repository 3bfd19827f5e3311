"""The route table: URL prefix -> upstream target, with longest-prefix lookup.

Prefixes are kept percent-decoded (``/user/ünïcode/``), so a request matches whichever way
the browser chose to encode the name; requests are looked up by their decoded path.

A rebuild may add routes whose signature is not checked yet (``add_unchecked``, with the
proof, see ``proofs``). Every way out of the table (``match``, ``get``, ``routes``)
checks such a route first and drops it if the check fails, so an unchecked route is never
handed to a caller; ``check_some`` lets a background task work through the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from urllib.parse import unquote

from fedhub.edge_proxy.address import Address

# Checks an unchecked route against its proof; True if it may be served. Never raises.
Checker = Callable[["Route", bytes], bool]


@dataclass(frozen=True, slots=True)
class Route:
    """One route, as the coordinator announced it in a RouteAdded event.

    ``address`` is where the fast path connects for ``target``, worked out once when the
    route is built (``state.make_route``), not per request: None for a tunnel target
    (its bridge is looked up per request) and for targets only aiohttp forwards (https).
    """

    subject: str  # the log subject that announced it
    prefix: str  # decoded, starts and ends with "/"
    url_prefix: str  # as announced (percent-encoded): the server's base_url
    target: str  # http://host:port, without a trailing slash
    user: str
    server: str
    site: str
    seq: int  # stream sequence of the RouteAdded event
    address: Address | None


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

    def __init__(self, checker: Checker | None = None) -> None:
        self._routes: dict[str, Route] = {}
        self._by_subject: dict[str, str] = {}  # route subject -> prefix it added
        self._unchecked: dict[str, bytes] = {}  # route subject -> proof, until checked
        self.checker = checker
        # How many prefixes have each depth ("/" count): deeper path boundaries cannot match.
        self._depths: dict[int, int] = {}
        self._max_depth = 0

    def __len__(self) -> int:
        """How many routes the table holds, counting those not checked yet."""
        return len(self._routes)

    def announced(self, subject: str) -> bool:
        """True if the table holds a route (checked or not) announced on ``subject``."""
        return subject in self._by_subject

    @property
    def unchecked(self) -> int:
        """How many routes still wait for their signature check."""
        return len(self._unchecked)

    def routes(self) -> list[Route]:
        """Every route (each checked first), in no particular order."""
        while self.check_some(1024):
            pass
        return list(self._routes.values())

    def get(self, prefix: str) -> Route | None:
        """The route with exactly this (decoded or encoded) prefix, or None."""
        route = self._routes.get(normalize_prefix(prefix))
        if route is not None and self._unchecked and not self._passes(route):
            return None
        return route

    def add(self, route: Route) -> None:
        """Add or replace the route of ``route.subject`` (idempotent)."""
        self.remove(route.subject)
        displaced = self._routes.get(route.prefix)
        if displaced is not None:  # another subject claimed this prefix before: last wins
            self.remove(displaced.subject)
        self._insert(route)

    def add_unchecked(self, route: Route, proof: bytes) -> None:
        """Like ``add``, for a route whose signature is checked later (by the checker,
        given ``proof``). One that would replace or displace a route is checked now: a
        forged event must neither take a prefix nor end a genuine route, so dropping it
        later leaves the table as if it had never come."""
        if route.subject in self._by_subject or route.prefix in self._routes:
            if self.checker is not None and self.checker(route, proof):
                self.add(route)
            return
        self._insert(route)
        self._unchecked[route.subject] = proof

    def check_some(self, count: int) -> int:
        """Check up to ``count`` unchecked routes, dropping those that fail; return how
        many are left unchecked."""
        for subject in list(islice(self._unchecked, count)):
            prefix = self._by_subject.get(subject)
            if prefix is None:  # cannot happen (remove() forgets both); never loop on it
                del self._unchecked[subject]
            else:
                self._passes(self._routes[prefix])
        if not self._unchecked:
            self._unchecked = {}  # a dict never shrinks: let the big one go
        return len(self._unchecked)

    def _passes(self, route: Route) -> bool:
        """Check ``route`` if it is unchecked; False (and dropped) if it fails."""
        proof = self._unchecked.pop(route.subject, None)
        if proof is None:
            return True
        if self.checker is not None and self.checker(route, proof):
            return True
        self.remove(route.subject)
        return False

    def _insert(self, route: Route) -> None:
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
        self._unchecked.pop(subject, None)
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
        route = self._match(path)
        while route is not None and self._unchecked and not self._passes(route):
            route = self._match(path)  # that one was forged: as if it had never been added
        return route

    def _match(self, path: str) -> Route | None:
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
