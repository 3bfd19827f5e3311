"""One fast-path exchange: a request sent upstream, its response relayed to the client.

Bodies are forwarded as they arrive, framing and all (a chunked body stays chunked), with
flow control both ways: a full client write buffer pauses reading the upstream, a full
upstream write buffer pauses reading the client. After a ``101 Switching Protocols`` both
connections are piped byte for byte (WebSocket frames cross the proxy untouched).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedhub.edge_proxy import pages
from fedhub.edge_proxy.address import Address
from fedhub.edge_proxy.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout
from fedhub.edge_proxy.headers import downstream_head, downstream_pairs, upstream_pairs
from fedhub.edge_proxy.http1 import (
    HEAD_END,
    MAX_HEAD,
    ChunkedScanner,
    Framing,
    MalformedMessage,
    RequestHead,
    ResponseHead,
    body_framing,
    build_head,
    keep_alive,
    parse_response,
    parse_status,
    status_line,
)
from fedhub.edge_proxy.plan import Plan, upstream_target
from fedhub.edge_proxy.upstream import Connection, ResponseMemo

if TYPE_CHECKING:
    from fedhub.edge_proxy.front import Client

log = logging.getLogger(__name__)
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_COMBINE = 16 * 1024  # response heads are sent in one write with body parts up to this


@dataclass(slots=True)
class Memo:
    """The last request head read on a connection and what the header rules made of it.

    Clients repeat heads on keep-alive connections (polling, API scripts, load tests):
    parsing and the header rules are then skipped. The decisions (credentials, route,
    owner, assertion) are never memoized; they run for every request, and the upstream
    head is reused only for the same assertion, credential source and target.
    """

    raw: bytes
    head: RequestHead
    headers: dict[str, str]  # lowercase names, first value
    key: tuple[str | None, str | None, str] | None = None
    framing: Framing | None = None
    upgrade: str | None = None
    upstream_head: bytes = b""


class Exchange:
    """Forwards one request; ``begin`` once, then the client and the upstream drive it."""

    __slots__ = (
        "accept", "bodiless", "client", "client_paused", "conn", "connecting", "done",
        "head_request", "last", "piping", "plan", "req_done", "req_remaining",
        "req_scanner", "resp_buf", "resp_close", "resp_remaining", "resp_reusable",
        "resp_scanner", "resp_started", "resp_until_close", "retried", "reused",
        "upgrade", "upstream_head"
    )

    def __init__(self, client: Client, plan: Plan, head: RequestHead, framing: Framing,
                 upstream_head: bytes, upgrade: str | None, accept: str) -> None:
        self.client = client
        self.plan = plan
        self.head_request = head.method == "HEAD"
        self.upstream_head = upstream_head
        self.upgrade = upgrade
        self.accept = accept
        self.req_remaining = framing.length
        self.req_scanner = ChunkedScanner(trailers=False) if framing.chunked else None
        self.req_done = not framing.length and not framing.chunked
        # Only a request without a body is sent again on a fresh connection: the body of
        # one is forwarded as it arrives and not kept.
        self.bodiless = self.req_done
        self.conn: Connection | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.reused = False
        self.retried = False
        self.done = False
        self.piping = False
        self.client_paused = False
        self.resp_buf = b""
        self.resp_started = False
        self.resp_remaining = 0
        self.resp_scanner: ChunkedScanner | None = None
        self.resp_until_close = False
        self.resp_close = False
        self.resp_reusable = False
        self.last = 0.0  # loop time of the last upstream traffic (see ``tick``)

    @classmethod
    def start(cls, client: Client, memo: Memo, plan: Plan) -> Exchange | None:
        """The exchange for the request in ``memo``, or None to hand it over (odd framing)."""
        head, headers = memo.head, memo.headers
        key = (plan.assertion, plan.source, plan.target)
        if memo.key != key:
            memo.key = key
            memo.upstream_head = b""
            memo.framing = body_framing(headers, request=True)
            framing = memo.framing
            if framing is None:
                return None
            memo.upgrade = None
            if head.upgrade and headers.get("upgrade", "").lower() == "websocket":
                if framing.length or framing.chunked:
                    memo.framing = None
                    return None
                memo.upgrade = headers["upgrade"]
            target = upstream_target(head.target, plan)
            pairs = upstream_pairs(
                head.headers, remote=client.remote, scheme="http",
                host=headers.get("host", ""), assertion=plan.assertion,
                strip_authorization=plan.source == "header", upgrade=memo.upgrade,
            )
            if framing.chunked:
                pairs.append(("Transfer-Encoding", "chunked"))
            memo.upstream_head = build_head(f"{head.method} {target} HTTP/1.1", pairs)
        if memo.framing is None:
            return None
        exchange = cls(client, plan, head, memo.framing, memo.upstream_head, memo.upgrade,
                       headers.get("accept", ""))
        if not exchange.req_done and headers.get("expect", "").lower() == "100-continue":
            client.write(CONTINUE)
        return exchange

    # -- connecting --------------------------------------------------------------------

    def begin(self) -> None:
        """Send the request over a pooled connection, or open one."""
        address = self.plan.address
        front = self.client.front
        if address is None:  # checked on every request: a tunnel may have gone
            address = front.gate.bridge_address(self.plan.target)
        if address is not None:
            conn = front.pool.take(address)
            if conn is not None:
                self.attach(conn, reused=True)
                return
        self.connecting = asyncio.ensure_future(self._connect(address))

    async def _connect(self, address: Address | None) -> None:
        """Open a connection to ``address``; None: a tunnel's bridge that is not up (or
        whose tunnel is gone), to start first (or fail), then reuse a connection to it."""
        front = self.client.front
        try:
            conn = None
            if address is None:
                address = await front.gate.open_bridge(self.plan.target)
                conn = front.pool.take(address)
            reused = conn is not None
            if conn is None:
                conn = await front.pool.connect(address)
        except UpstreamError as exc:
            self.connecting = None
            if not self.done:
                self.fail(exc)
            return
        self.connecting = None
        if self.done:
            if reused:
                front.pool.release(conn)
            else:
                conn.close()
            return
        self.attach(conn, reused=reused)

    def attach(self, conn: Connection, *, reused: bool) -> None:
        """Use ``conn``: send the head and whatever of the body has arrived."""
        self.conn = conn
        self.reused = reused
        conn.owner = self
        self.last = self.client.front.clock()
        conn.write(self.upstream_head)
        self.pump_request()

    # -- request body ------------------------------------------------------------------

    def pump_request(self) -> None:
        """Forward buffered request body bytes (the rest of the buffer is the next request)."""
        conn = self.conn
        client = self.client
        if conn is None or self.req_done or not client.buf:
            return
        buf = client.buf
        scanner = self.req_scanner
        if scanner is not None:
            try:
                n = scanner.feed(buf)
            except MalformedMessage as exc:
                started = self.resp_started
                self.abort()
                if started:
                    client.abort()
                else:  # the client's fault, and it may still be told
                    client.refuse(400, f"malformed request body: {exc}")
                return
            self.req_done = scanner.done
        else:
            n = min(self.req_remaining, len(buf))
            self.req_remaining -= n
            self.req_done = not self.req_remaining
        self.last = self.client.front.clock()
        conn.write(buf if n == len(buf) else buf[:n])
        client.buf = buf[n:]
        client.update_reading()  # reading may have paused while nothing could be sent

    def to_upstream(self, data: bytes) -> None:
        """Piped bytes from the client."""
        if self.conn is not None:
            self.conn.write(data)

    # -- response ----------------------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        """Bytes from the upstream: the response head, then its body."""
        if self.piping:
            self.client.write(data)
            return
        self.last = self.client.front.clock()
        if self.resp_started:
            self._relay(data)
            return
        buf = self.resp_buf + data if self.resp_buf else data
        end = buf.find(HEAD_END)
        if end < 0:
            if len(buf) > MAX_HEAD:
                self.fail(UpstreamProtocolError("response head too large"))
            else:
                self.resp_buf = buf
            return
        self.resp_buf = b""
        raw, rest = buf[:end + 4], buf[end + 4:]
        conn = self.conn
        memo = conn.memo if conn is not None else None
        if memo is not None and memo.raw == raw:
            self._respond(memo.status, memo.keep_alive, memo.headers, memo.out, rest)
            return
        try:
            status, version = parse_status(raw)
            fast = downstream_head(raw) if status >= 200 else None
            if fast is None:  # interim, switching or unusual: the general path
                self._response(parse_response(raw), rest)
                return
        except MalformedMessage as exc:
            self.fail(UpstreamProtocolError(f"malformed response: {exc}"))
            return
        out, found = fast
        headers = {name.decode("latin-1"): value.decode("latin-1")
                   for name, value in found.items()}
        memo = ResponseMemo(raw, status, keep_alive(version, headers.get("connection")),
                            headers, out)
        if conn is not None:
            conn.memo = memo
        self._respond(memo.status, memo.keep_alive, headers, out, rest)

    def _response(self, head: ResponseHead, rest: bytes) -> None:
        status = head.status
        headers: dict[str, str] = {}
        for name, value in head.headers:
            headers.setdefault(name.lower(), value)
        if status == 101:
            self._pipe(head, headers, rest)
            return
        if status < 200:  # an interim answer (103 Early Hints): the final one follows
            self.client.write(build_head(status_line(status, head.reason),
                                         downstream_pairs(head.headers)))
            if rest:
                self.upstream_data(rest)
            return
        out = build_head(status_line(status, head.reason), downstream_pairs(head.headers))
        self._respond(status, head.keep_alive, headers, out[:-2], rest)

    def _respond(self, status: int, upstream_keep_alive: bool, headers: dict[str, str],
                 out: bytes, rest: bytes) -> None:
        """Relay a final response: ``out`` is its head without framing headers and the
        empty line; ``headers`` holds at least its framing headers (lowercase names)."""
        framing: Framing | None = Framing()
        if not (self.head_request or status in (204, 304)):
            framing = body_framing(headers, request=False)
            if framing is None:
                self.fail(UpstreamProtocolError("ambiguous response framing"))
                return
        assert framing is not None
        close = framing.until_close or self.client.closing
        if framing.chunked:
            out += b"Transfer-Encoding: chunked\r\n"
        if close:
            out += b"Connection: close\r\n"
        out += b"\r\n"
        self.resp_started = True
        self.resp_close = close
        self.resp_reusable = upstream_keep_alive and not framing.until_close
        self.resp_remaining = framing.length
        self.resp_scanner = ChunkedScanner() if framing.chunked else None
        self.resp_until_close = framing.until_close
        if not (framing.length or framing.chunked or framing.until_close):
            self.client.write(out)
            self.finish()
        else:
            self._relay(rest, out)

    def _relay(self, data: bytes, prefix: bytes = b"") -> None:
        scanner = self.resp_scanner
        if scanner is not None:
            try:
                n = scanner.feed(data)
            except MalformedMessage as exc:
                log.info("%s: broken chunked response: %s", self.plan.label, exc)
                self.client.abort()
                self.abort()
                return
            done = scanner.done
        elif self.resp_until_close:
            n, done = len(data), False
        else:
            n = min(self.resp_remaining, len(data))
            self.resp_remaining -= n
            done = not self.resp_remaining
        if n < len(data):  # bytes after the response: this connection cannot be trusted
            self.resp_reusable = False
            data = data[:n]
        if prefix and len(data) <= _COMBINE:
            self.client.write(prefix + data)
        else:
            if prefix:
                self.client.write(prefix)
            if data:
                self.client.write(data)
        if done:
            self.finish()

    def _pipe(self, head: ResponseHead, headers: dict[str, str], rest: bytes) -> None:
        if self.upgrade is None or self.conn is None:
            self.fail(UpstreamProtocolError("101 Switching Protocols without an upgrade"))
            return
        pairs = downstream_pairs(head.headers)
        pairs += [("Connection", "Upgrade"), ("Upgrade", headers.get("upgrade", self.upgrade))]
        self.piping = True
        self.client.write(build_head(status_line(101, head.reason), pairs) + rest)
        client = self.client
        if client.buf:
            self.conn.write(client.buf)
            client.buf = b""
        client.update_reading()

    # -- flow control ------------------------------------------------------------------

    def client_blocked(self, blocked: bool) -> None:
        """The client's write buffer is full (True) or drained (False)."""
        self.client_paused = blocked
        if self.conn is not None:
            self.conn.pause_reading(blocked)

    def upstream_blocked(self, blocked: bool) -> None:
        """The upstream's write buffer is full (True) or drained (False)."""
        self.client.upstream_blocked(blocked)

    def tick(self, now: float) -> None:
        """Called every second or so: time out an upstream silent for ``timeout`` seconds.

        One shared timer instead of one per request: arming and cancelling a timer for
        every request would cost more than the rest of its bookkeeping. Waiting on the
        client (a slow upload, a full client buffer) does not count.
        """
        if self.done or self.piping or self.conn is None:
            return
        if self.client_paused or not self.req_done:
            self.last = now
            return
        if now - self.last < self.client.front.timeout:
            return
        if self.resp_started:
            log.info("%s stopped answering mid-response", self.plan.label)
            self.client.abort()
            self.abort()
        else:
            self.fail(UpstreamTimeout("the server did not answer in time"))

    # -- the end -----------------------------------------------------------------------

    def upstream_closed(self, conn: Connection) -> None:
        """The upstream ended the connection: the end of a response, or a failure."""
        if conn is not self.conn or self.done:
            return
        self.conn = None
        conn.close()
        if self.piping:
            self.done = True
            self.client.close()
        elif self.resp_started:
            if self.resp_until_close:
                self.finish()
            else:
                log.info("%s closed the connection mid-response", self.plan.label)
                self.client.abort()
                self.abort()
        elif (self.reused and not self.retried and not self.resp_buf and self.bodiless
              and self.plan.address is not None):
            # A pooled connection the upstream closed just before we used it: try a fresh one.
            # (Not for tunnels: a bridge closes only when its tunnel failed; report that.)
            self.retried = True
            self.connecting = asyncio.ensure_future(self._connect(self.plan.address))
        else:
            self.fail(UpstreamProtocolError("the server closed the connection"))

    def fail(self, exc: UpstreamError) -> None:
        """Answer the client with the error page for ``exc`` (no response was relayed)."""
        if self.resp_started:
            self.client.abort()
            self.abort()
            return
        log.info("%s: %s", self.plan.label, exc)
        status, message = self.client.front.gate.failure(exc, self.plan)
        self.abort()
        close = not self.req_done or self.piping
        self.client.answer(pages.render_error(status, message, self.accept), close=close)
        self.client.finished(close=close)

    def finish(self) -> None:
        """The response is complete: keep the upstream connection if it is reusable."""
        self.done = True
        conn, self.conn = self.conn, None
        if conn is not None:
            if self.resp_reusable and self.req_done and not conn.closed:
                self.client.front.pool.release(conn)
            else:
                conn.close()
        self.client.finished(close=self.resp_close or not self.req_done)

    def abort(self) -> None:
        """Drop the upstream side (the client is gone or gets an error instead)."""
        self.done = True
        if self.connecting is not None:
            self.connecting.cancel()
            self.connecting = None
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
