"""Which headers cross the proxy, in each direction.

Hop-by-hop headers (RFC 9110 section 7.6.1, plus any named in ``Connection``) stop here.
Towards a user server the proxy also removes the client's identity material and any
client-supplied assertion, then adds its own assertion and the X-Forwarded-* headers.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from fedhub.edge_proxy.assertion import ASSERTION_HEADER
from fedhub.edge_proxy.auth import SESSION_COOKIE, without_session_cookie

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


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    value = headers.get("Connection")
    if not value:
        return frozenset()
    return frozenset(t.strip().lower() for t in value.split(","))


def upstream_headers(
    request: web.BaseRequest,
    *,
    assertion: str | None = None,
    strip_authorization: bool = False,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """Headers to send upstream for ``request``.

    Always drops hop-by-hop headers and a client-supplied assertion and keeps Host as the
    client sent it. With ``assertion`` (a user server) it also drops the fedhub session
    cookie, adds the assertion and, if ``strip_authorization``, drops Authorization.
    """
    src = request.headers
    skip = HOP_BY_HOP | _connection_tokens(src) if "Connection" in src else HOP_BY_HOP
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in src.items():
        lname = name.lower()
        if lname in skip or lname == _ASSERTION:
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
        out.add(name, value)
    remote = request.remote or ""
    forwarded_for = src.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{forwarded_for}, {remote}" if forwarded_for else remote
    if "X-Forwarded-Proto" not in src:
        out["X-Forwarded-Proto"] = request.scheme
    if "X-Forwarded-Host" not in src and request.host:
        out["X-Forwarded-Host"] = request.host
    if assertion is not None:
        out[ASSERTION_HEADER] = assertion
    return out


def downstream_headers(upstream: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """Headers of an upstream response to pass on to the client."""
    skip = HOP_BY_HOP | _connection_tokens(upstream) if "Connection" in upstream else HOP_BY_HOP
    return CIMultiDict((k, v) for k, v in upstream.items() if k.lower() not in skip)
