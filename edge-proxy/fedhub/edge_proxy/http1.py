"""HTTP/1.1 message heads for the fast path: parsing (httptools), framing, building.

Only heads go through httptools, one complete head at a time: body framing is tracked
here (Content-Length counts, ``ChunkedScanner``), so the front end always knows the exact
byte where one message ends and the next begins, which it needs to hand a connection over
to aiohttp mid-stream or to pipe an upgraded one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus

import httptools

HEAD_END = b"\r\n\r\n"
MAX_HEAD = 32 * 1024  # larger heads are refused with 431


class MalformedMessage(Exception):
    """The bytes are not an HTTP/1.x head this proxy accepts."""


@dataclass(slots=True)
class Head:
    """One parsed request or response head; header names and values as sent (latin-1)."""

    headers: list[tuple[str, str]] = field(default_factory=list)
    target: str = ""  # request target (requests only)
    reason: str = ""  # reason phrase (responses only)
    upgrade: bool = False  # the parser saw an upgrade request (Connection: upgrade)

    def on_url(self, url: bytes) -> None:
        self.target += url.decode("latin-1")

    def on_status(self, reason: bytes) -> None:
        self.reason += reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))


@dataclass(slots=True)
class RequestHead(Head):
    method: str = ""
    version: str = ""
    keep_alive: bool = True


@dataclass(slots=True)
class ResponseHead(Head):
    status: int = 0
    keep_alive: bool = True


def _feed(parser: httptools.HttpRequestParser | httptools.HttpResponseParser,
          head: bytes) -> bool:
    """Run one complete head through ``parser``; True if it asks for an upgrade.
    Raises MalformedMessage for anything httptools rejects."""
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        return True
    except httptools.HttpParserError as exc:
        raise MalformedMessage(str(exc) or type(exc).__name__) from exc
    return False


def parse_request(head: bytes) -> RequestHead:
    """Parse one complete request head (ending in CRLF CRLF).

    Raises MalformedMessage for anything httptools rejects.
    """
    out = RequestHead()
    parser = httptools.HttpRequestParser(out)
    out.upgrade = _feed(parser, head)
    out.method = parser.get_method().decode("latin-1")
    out.version = parser.get_http_version()
    out.keep_alive = _keep_alive(out.version, out.headers)
    return out


def parse_response(head: bytes) -> ResponseHead:
    """Parse one complete response head. Raises MalformedMessage."""
    out = ResponseHead()
    parser = httptools.HttpResponseParser(out)
    out.upgrade = _feed(parser, head)
    out.status = parser.get_status_code()
    out.keep_alive = _keep_alive(parser.get_http_version(), out.headers)
    return out


class _NoCallbacks:
    __slots__ = ()


_NO_CALLBACKS = _NoCallbacks()


def parse_status(head: bytes) -> tuple[int, str]:
    """Status and HTTP version of one complete response head, validated by httptools
    without a Python call per header. Raises MalformedMessage."""
    parser = httptools.HttpResponseParser(_NO_CALLBACKS)
    _feed(parser, head)
    return parser.get_status_code(), parser.get_http_version()


def keep_alive(version: str, connection: str | None) -> bool:
    """Whether a connection stays open after a message of ``version`` with this
    ``Connection`` header value."""
    tokens = {t.strip().lower() for t in connection.split(",")} if connection else set()
    if version == "1.1":
        return "close" not in tokens
    return version == "1.0" and "keep-alive" in tokens


def _keep_alive(version: str, headers: list[tuple[str, str]]) -> bool:
    # httptools' should_keep_alive() is reset once a message is complete, as a bodiless
    # head is when it is fed alone: decide from the version and Connection instead.
    values = [value for name, value in headers if name.lower() == "connection"]
    return keep_alive(version, ",".join(values))


@dataclass(slots=True)
class Framing:
    """How a body is delimited: ``length`` bytes, chunked, until close, or none at all."""

    length: int = 0
    chunked: bool = False
    until_close: bool = False


def body_framing(headers: dict[str, str], *, request: bool) -> Framing | None:
    """The framing named by ``headers`` (lowercase names), or None if it is ambiguous.

    Ambiguous (both Content-Length and Transfer-Encoding, an unknown transfer coding,
    a malformed length) is what request smuggling is made of: the caller refuses it.
    A response without either is read until the upstream closes; a request has no body.
    """
    te = headers.get("transfer-encoding")
    cl = headers.get("content-length")
    if te is not None:
        if cl is not None or te.strip().lower() != "chunked":
            return None
        return Framing(chunked=True)
    if cl is not None:
        if not cl.isdigit() or len(cl) > 18:
            return None
        return Framing(length=int(cl))
    return Framing() if request else Framing(until_close=True)


HEX_DIGITS = b"0123456789abcdefABCDEF"


class ChunkedScanner:
    """Finds where a chunked body ends without decoding it (the bytes pass on as they are).

    ``feed`` returns how many bytes of ``data`` belong to the body: all of them until the
    last chunk and trailers are complete, then the offset just after them (``done``).

    Strict where servers differ (RFC 9112 section 7.1): sizes are hex digits only (no
    sign, ``0x`` or ``_``, which Python's ``int`` would take), every line ends with CRLF,
    and with ``trailers=False`` (requests) a trailer field is refused: forwarded as it is,
    it would carry headers past the ones the proxy strips and sets.
    """

    __slots__ = ("_line", "_remaining", "_state", "_trailers", "done")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self, *, trailers: bool = True) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._line = b""  # a size or trailer line split across feeds
        self._trailers = trailers
        self.done = False

    def feed(self, data: bytes) -> int:
        """Bytes of ``data`` that are body. Raises MalformedMessage for broken framing."""
        pos, end = 0, len(data)
        while pos < end and not self.done:
            state = self._state
            if state == self._DATA:
                take = min(self._remaining, end - pos)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = self._DATA_END
                    self._line = b""
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line += data[pos:]
                if len(self._line) > 4096:
                    raise MalformedMessage("chunk line too long")
                return end
            line = self._line + data[pos:nl]
            self._line = b""
            pos = nl + 1
            if not line.endswith(b"\r"):
                raise MalformedMessage("chunked body line not ended by CRLF")
            line = line[:-1]
            if state == self._SIZE:
                size = line.split(b";", 1)[0].rstrip(b" \t")
                if not 0 < len(size) <= 16 or size.strip(HEX_DIGITS):
                    raise MalformedMessage(f"bad chunk size {size[:20]!r}")
                self._remaining = int(size, 16)
                self._state = self._DATA if self._remaining else self._TRAILER
            elif state == self._DATA_END:
                if line:
                    raise MalformedMessage("chunk not followed by CRLF")
                self._state = self._SIZE
            elif not line:  # _TRAILER: an empty line ends the message
                self.done = True
            elif not self._trailers:
                raise MalformedMessage("trailer fields are not accepted in requests")
        return pos


# Standard reason phrases (a dict: status_line is on the response path, an enum call is not
# free). The proxy's own answers and upstream heads without a reason both use it.
_REASONS = {status.value: status.phrase for status in HTTPStatus}


def build_head(first_line: str, headers: list[tuple[str, str]]) -> bytes:
    """A head: ``first_line``, then each header, then the empty line (latin-1)."""
    parts = [first_line]
    parts.extend(f"{name}: {value}" for name, value in headers)
    parts.append("\r\n")
    return "\r\n".join(parts).encode("latin-1")


def status_line(status: int, reason: str) -> str:
    """``HTTP/1.1 <status> <reason>`` (a standard reason when none is given)."""
    return f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Unknown')}"
