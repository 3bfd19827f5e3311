"""Heads, framing and header rules of the fast path, without sockets."""

from __future__ import annotations

from http import HTTPStatus

import pytest

from fedhub.edge_proxy.address import tcp_address
from fedhub.edge_proxy.headers import downstream_head, downstream_pairs, upstream_pairs
from fedhub.edge_proxy.http1 import (
    ChunkedScanner,
    Framing,
    MalformedMessage,
    body_framing,
    build_head,
    parse_request,
    parse_status,
    status_line,
)
from fedhub.edge_proxy.pages import render_error
from fedhub.edge_proxy.plan import without_query_param

BODY = b"5\r\nhello\r\n10;ext=1\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n"


@pytest.mark.parametrize("cut", range(1, len(BODY)))
def test_chunked_scanner_finds_the_end_wherever_the_bytes_split(cut: int) -> None:
    scanner = ChunkedScanner()
    data = BODY + b"GET /next"
    first = scanner.feed(data[:cut])
    assert first == min(cut, len(BODY)) and scanner.done == (cut >= len(BODY))
    if not scanner.done:
        assert scanner.feed(data[cut:]) == len(BODY) - cut
    assert scanner.done


@pytest.mark.parametrize("bad", [
    b"zz\r\n", b"5\r\nhelloXX\r\n", b"-1\r\n",
    # sizes Python's int() reads but servers refuse: each a smuggling risk
    b"0x5\r\n", b"+5\r\n", b"0_5\r\n", b" 5\r\n", b"\r\n",
    # lines not ended by CRLF
    b"5\nhello\r\n", b"5\r\nhello\n", b"0\r\n\n",
])
def test_chunked_scanner_refuses_broken_framing(bad: bytes) -> None:
    with pytest.raises(MalformedMessage):
        ChunkedScanner().feed(bad)


def test_chunk_extensions_pass_and_request_trailers_do_not() -> None:
    assert ChunkedScanner().feed(b"5 ;a=1\r\nhello\r\n0\r\n\r\n") == 20
    assert ChunkedScanner(trailers=False).feed(b"0\r\n\r\n") == 5
    with pytest.raises(MalformedMessage, match="trailer"):
        ChunkedScanner(trailers=False).feed(b"0\r\nX-Fedhub-Assertion: forged\r\n\r\n")


def test_request_heads_and_keep_alive() -> None:
    head = parse_request(b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert (head.method, head.target, head.version) == ("GET", "/a?b=1", "1.1")
    assert head.headers == [("Host", "h"), ("Connection", "close")] and not head.keep_alive
    assert parse_request(b"GET / HTTP/1.1\r\n\r\n").keep_alive
    upgrade = parse_request(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert upgrade.upgrade
    for bad in (b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"):
        with pytest.raises(MalformedMessage):
            parse_request(bad)
    assert parse_status(b"HTTP/1.0 404 Nope\r\n\r\n") == (404, "1.0")


def test_body_framing_refuses_what_could_smuggle() -> None:
    assert body_framing({}, request=True) == Framing()
    assert body_framing({}, request=False) == Framing(until_close=True)
    assert body_framing({"content-length": "12"}, request=True) == Framing(length=12)
    assert body_framing({"transfer-encoding": "Chunked"}, request=True) == Framing(chunked=True)
    for headers in ({"transfer-encoding": "gzip"}, {"content-length": "1e3"},
                    {"content-length": "1", "transfer-encoding": "chunked"}):
        assert body_framing(headers, request=True) is None


def test_upstream_pairs_apply_the_proxy_rules() -> None:
    pairs = [("Host", "h"), ("Connection", "keep-alive, X-Private"), ("X-Private", "1"),
             ("Cookie", "a=1; fedhub-session=s; b=2"), ("Authorization", "token t"),
             ("X-Fedhub-Assertion", "forged"), ("X-Forwarded-For", "10.0.0.1"),
             ("Sec-WebSocket-Key", "k"), ("Upgrade", "websocket")]
    out = upstream_pairs(pairs, remote="127.0.0.1", scheme="http", host="h", assertion="A",
                         strip_authorization=True, upgrade="websocket")
    assert out == [("Host", "h"), ("Cookie", "a=1; b=2"), ("Sec-WebSocket-Key", "k"),
                   ("X-Forwarded-For", "10.0.0.1, 127.0.0.1"), ("X-Forwarded-Proto", "http"),
                   ("X-Forwarded-Host", "h"), ("X-Fedhub-Assertion", "A"),
                   ("Connection", "Upgrade"), ("Upgrade", "websocket")]
    hub = upstream_pairs(pairs[:5], remote="::1", scheme="http", host="")
    assert ("Cookie", "a=1; fedhub-session=s; b=2") in hub and ("Authorization", "token t") in hub


def test_downstream_head_matches_downstream_pairs() -> None:
    pairs = [("Server", "x"), ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5"),
             ("Content-Length", "3"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    raw = build_head("HTTP/1.0 200 OK", pairs)
    fast = downstream_head(raw)
    assert fast is not None
    out, found = fast
    assert out == build_head("HTTP/1.1 200 OK", downstream_pairs(pairs))[:-2]
    assert found == {b"connection": b"keep-alive", b"keep-alive": b"timeout=5",
                     b"content-length": b"3"}


@pytest.mark.parametrize("pairs", [
    [("Connection", "X-Secret"), ("X-Secret", "1")],  # other names listed in Connection
    [("Content-Length", "3"), ("Content-Length", "3")],
    [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
])
def test_downstream_head_leaves_the_unusual_to_the_general_path(
    pairs: list[tuple[str, str]]
) -> None:
    assert downstream_head(build_head("HTTP/1.1 200 OK", pairs)) is None


def test_query_token_removal_and_targets() -> None:
    assert without_query_param("/a?token=x&b=1&%74oken=y&tokens=2", "token") == "/a?b=1&tokens=2"
    assert without_query_param("/a?token=x", "token") == "/a"
    assert without_query_param("/a", "token") == "/a"
    address = tcp_address("http://127.0.0.1:8888")
    assert address is not None and (address.host, address.port) == ("127.0.0.1", 8888)
    assert tcp_address("https://hub.example.org") is None
    assert tcp_address("http://hub.example.org/") == ("hub.example.org", 80, "")
    # What the fast path would not send as aiohttp does: it sends the request's own target.
    for odd in ("http://h:1/prefix", "http://u:p@h:1", "http://h:1?q", "http://h:99999"):
        assert tcp_address(odd) is None, odd


def test_status_lines_take_the_standard_reason_when_none_is_given() -> None:
    assert status_line(200, "Fine") == "HTTP/1.1 200 Fine"
    assert status_line(502, "") == "HTTP/1.1 502 Bad Gateway"
    assert status_line(599, "") == "HTTP/1.1 599 Unknown"
    for status in (401, 403, 404, 431, 503, 504):  # the proxy's own answers too
        head = render_error(status, "x", "").encode(close=False).split(b"\r\n", 1)[0]
        assert head == f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()
