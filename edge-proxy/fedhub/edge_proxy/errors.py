"""Errors of the edge proxy.

EdgeProxyError
└── UpstreamError            forwarding to a user server or the hub failed
    ├── UpstreamUnreachable  refused, unreachable or connect timeout (answered with 503)
    ├── UpstreamProtocolError the upstream broke HTTP or WebSocket (answered with 502)
    └── UpstreamTimeout      the upstream stopped answering (answered with 504)

aiohttp's client exceptions are translated into these at the boundary (``forward.py``).
"""

from __future__ import annotations


class EdgeProxyError(Exception):
    """Base of every error raised by fedhub.edge_proxy."""


class UpstreamError(EdgeProxyError):
    """Forwarding a request failed; ``status`` is what the client gets."""

    status = 502


class UpstreamUnreachable(UpstreamError):
    """The upstream refused the connection or could not be reached."""

    status = 503


class UpstreamProtocolError(UpstreamError):
    """The upstream closed the connection early or answered something that is not HTTP."""

    status = 502


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the configured timeout."""

    status = 504
