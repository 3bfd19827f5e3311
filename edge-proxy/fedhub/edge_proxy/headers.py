"""Which headers cross the proxy, in each direction.

Hop-by-hop headers (RFC 9110 section 7.6.1, plus any named in ``Connection``) stop here.
Towards a user server the proxy also removes the client's identity material and any
client-supplied assertion, then adds its own assertion and the X-Forwarded-* headers.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from fedhub.edge_proxy.assertion import ASSERTION_HEADER
from fedhub.edge_proxy.auth import SESSION_COOKIE, without_session_cookie
from fedhub.edge_proxy.plan import without_query_param

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "expect",
})
# aiohttp's WebSocket client makes its own handshake headers; subprotocols pass separately.
WEBSOCKET_HANDSHAKE = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-websocket-accept",
})
_ASSERTION = ASSERTION_HEADER.lower()


# Named in ``Connection``, these still cross: they frame the message or say where it goes.
# Dropping Content-Length while forwarding the body it announced would make the body the
# next request on a pooled upstream connection, which another user's request then follows.
END_TO_END = frozenset({"content-length", "host"})


def connection_tokens(value: str | None) -> frozenset[str]:
    """The lowercase header names a ``Connection`` header value lists as hop-by-hop
    (``END_TO_END`` ones never are)."""
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(",")) - END_TO_END


def upstream_pairs(
    pairs: Iterable[tuple[str, str]],
    *,
    remote: str,
    scheme: str,
    host: str,
    assertion: str | None = None,
    strip_authorization: bool = False,
    websocket: bool = False,
    upgrade: str | None = None,
) -> list[tuple[str, str]]:
    """Headers to send upstream for a request with headers ``pairs`` (names as sent).

    Always drops hop-by-hop headers and a client-supplied assertion and keeps Host as the
    client sent it. With ``assertion`` (a user server) it also drops the fedhub session
    cookie and a ``token`` in the Referer, adds the assertion and, if
    ``strip_authorization``, drops Authorization.
    ``websocket`` drops the handshake headers (aiohttp's client makes its own); ``upgrade``
    instead keeps them and asks the upstream to switch to that protocol (raw piping).
    """
    pairs = list(pairs)
    skip = HOP_BY_HOP
    forwarded_for = forwarded_proto = forwarded_host = None
    for name, value in pairs:
        lname = name.lower()
        if lname == "connection":
            skip = skip | connection_tokens(value)
        elif lname == "x-forwarded-for" and forwarded_for is None:
            forwarded_for = value
        elif lname == "x-forwarded-proto":
            forwarded_proto = value
        elif lname == "x-forwarded-host":
            forwarded_host = value
    out: list[tuple[str, str]] = []
    for name, value in pairs:
        lname = name.lower()
        if lname in skip or lname == _ASSERTION or lname == "x-forwarded-for":
            continue
        if websocket and lname in WEBSOCKET_HANDSHAKE:
            continue
        if assertion is not None:
            if lname == "cookie" and SESSION_COOKIE in value:
                value = without_session_cookie(value)
                if not value:
                    continue
            elif lname == "authorization" and strip_authorization:
                continue
            elif lname == "referer" and "?" in value:  # a page opened with ?token=...
                value = without_query_param(value, "token")
        out.append((name, value))
    out.append(("X-Forwarded-For", f"{forwarded_for}, {remote}" if forwarded_for else remote))
    if forwarded_proto is None:
        out.append(("X-Forwarded-Proto", scheme))
    if forwarded_host is None and host:
        out.append(("X-Forwarded-Host", host))
    if assertion is not None:
        out.append((ASSERTION_HEADER, assertion))
    if upgrade is not None:
        out.append(("Connection", "Upgrade"))
        out.append(("Upgrade", upgrade))
    return out


def upstream_headers(
    request: web.BaseRequest,
    *,
    assertion: str | None = None,
    strip_authorization: bool = False,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """``upstream_pairs`` for an aiohttp request."""
    return CIMultiDict(upstream_pairs(
        request.headers.items(), remote=request.remote or "", scheme=request.scheme,
        host=request.host if "Host" in request.headers else "", assertion=assertion,
        strip_authorization=strip_authorization, websocket=websocket,
    ))


def downstream_pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Headers of an upstream response to pass on to the client (names as sent)."""
    pairs = list(pairs)
    skip = HOP_BY_HOP
    for name, value in pairs:
        if name.lower() == "connection":
            skip = skip | connection_tokens(value)
    return [(k, v) for k, v in pairs if k.lower() not in skip]


def downstream_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """``downstream_pairs`` for an aiohttp client response."""
    return CIMultiDict(downstream_pairs(upstream.items()))


_HOP_BY_HOP_BYTES = frozenset(name.encode() for name in HOP_BY_HOP)
_KNOWN_TOKENS = frozenset({"keep-alive", "close", "upgrade"}) | HOP_BY_HOP


def downstream_head(head: bytes) -> tuple[bytes, dict[bytes, bytes]] | None:
    """``downstream_pairs`` on a raw response head, for the fast path.

    Returns the head as an HTTP/1.1 status line and its headers without hop-by-hop ones,
    ending after the last header's CRLF (the caller adds its own framing headers and the
    empty line), and the values of the removed headers and Content-Length by lowercase
    name. Returns None for anything unusual (a header repeated among those, folded
    lines, other names listed in Connection): then use ``downstream_pairs``.
    """
    lines = head.split(b"\r\n")
    kept = [b"HTTP/1.1" + lines[0][8:]]
    found: dict[bytes, bytes] = {}
    for line in lines[1:-2]:
        name, _, value = line.partition(b":")
        lname = name.lower()
        if lname in _HOP_BY_HOP_BYTES or lname == b"content-length":
            if lname in found or line[:1] in (b" ", b"\t"):
                return None
            found[lname] = value.strip()
            if lname != b"content-length":
                continue
        elif line[:1] in (b" ", b"\t"):
            return None
        kept.append(line)
    connection = found.get(b"connection")
    if connection and connection.lower() not in (b"keep-alive", b"close") and (
            connection_tokens(connection.decode("latin-1")) - _KNOWN_TOKENS):
        return None
    kept.append(b"")
    return b"\r\n".join(kept), found
