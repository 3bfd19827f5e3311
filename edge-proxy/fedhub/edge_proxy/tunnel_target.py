"""Route targets that point into a site's tunnel: ``tunnel://<site-token>/<server-key>``.

The site token is ``names.subject_token(site)``, the server key ``names.server_key(user,
server)`` (two subject tokens joined by ``.``): exactly the name the site's agent gives the
remote forward it requests on its SSH connection to this proxy.
"""

from __future__ import annotations

from typing import NamedTuple

from fedhub.schemas.names import InvalidName, from_subject_token, subject_token

SCHEME = "tunnel"
PREFIX = f"{SCHEME}://"


class TunnelTarget(NamedTuple):
    """Where a tunnelled route leads: the site (decoded name) and the forward's name."""

    site: str
    server_key: str


def is_tunnel(target: str) -> bool:
    """True for a ``tunnel://`` target (cheap: called per request)."""
    return target.startswith(PREFIX)


def format_target(site: str, server_key: str) -> str:
    """The canonical target of the forward ``server_key`` of ``site`` (``parse_target``
    reverses it): the target every route to that forward has."""
    return f"{PREFIX}{subject_token(site)}/{server_key}"


def parse_target(target: str) -> TunnelTarget:
    """Split a ``tunnel://<site-token>/<user-token>.<server-token>`` target.

    Raises ValueError when it is not one (wrong scheme, malformed tokens, extra parts).
    """
    if not is_tunnel(target):
        raise ValueError(f"{target!r} is not a {PREFIX} target")
    site_token, sep, key = target[len(PREFIX):].rstrip("/").partition("/")
    parts = key.split(".")
    if not sep or not site_token or len(parts) != 2 or not all(parts):
        raise ValueError(f"{target!r} is not {PREFIX}<site>/<user>.<server>")
    try:
        site = from_subject_token(site_token)
        canonical = all(subject_token(from_subject_token(t)) == t for t in (site_token, *parts))
    except InvalidName as exc:
        raise ValueError(f"{target!r}: {exc}") from exc
    if not canonical:  # the agent names its forwards canonically; anything else never matches
        raise ValueError(f"{target!r} is not canonically encoded")
    if not site:
        raise ValueError(f"{target!r} names no site")
    return TunnelTarget(site, key)
