"""Where an upstream listens: a TCP ``host:port`` or a UNIX socket (a tunnel bridge).

Its own module because routes carry their address (computed once, when the route is
built) and the fast path's pool keys connections by it; neither may import the other.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit


class Address(NamedTuple):
    """A TCP ``host:port``, or a UNIX socket ``path`` (a tunnel bridge) when set.

    A tuple: the pool hashes it twice per request, and a dataclass hashes in Python.
    """

    host: str = ""
    port: int = 0
    path: str = ""


def tcp_address(target: str) -> Address | None:
    """The address of an ``http://host[:port]`` target; None for anything the fast path
    cannot send to as it is (another scheme, user info, a path, query or fragment, a bad
    port). Not cached: call it once per route (``state.make_route``), not per request."""
    parts = urlsplit(target)
    if (parts.scheme != "http" or not parts.hostname or parts.username is not None
            or parts.path not in ("", "/") or parts.query or parts.fragment):
        return None
    try:
        port = parts.port or 80
    except ValueError:
        return None
    return Address(host=parts.hostname, port=port)
