"""Pulling a JetStream consumer dry over a connection of its own, speaking NATS directly.

nats-py handles every message through its general machinery (a regular-expression
parse, a header dict, a Msg object, a queue); for the 100,000 messages of a big rebuild
that is most of the time left. A bulk pull needs far less: the reply subject (stream
sequence and what is pending) and the payload. This reader speaks just enough of the
protocol for that (CONNECT with no credentials or with a URL's user and password,
SUB, PUB, MSG/HMSG, PING/PONG, -ERR); anything else (TLS, credential files, a server
asking for what we cannot give) raises WireError before the first message, and the
caller goes back to nats-py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from urllib.parse import ParseResult

_CHUNK = 1 << 20
_TIMEOUT = 5.0


class WireError(Exception):
    """The server refused us, broke the protocol, or went quiet."""


class WireReader:
    """One plain-TCP NATS connection that pulls batches from one consumer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._buf = b""
        self._pos = 0
        self._pending = -1  # after the last message taken

    @classmethod
    async def open(cls, url: ParseResult, name: str) -> WireReader:
        """Connect to the server at ``url`` (``nats://[user:pass@]host:port``) and log in.

        Raises WireError if it cannot be done without TLS or a credentials file.
        """
        if url.scheme != "nats" or not url.hostname:
            raise WireError(f"not a plain nats:// URL: {url.scheme}")
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(url.hostname, url.port or 4222, limit=_CHUNK),
                _TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise WireError(f"cannot connect: {exc}") from exc
        self = cls(reader, writer)
        try:
            line = await self._line()
            if not line.startswith(b"INFO "):
                raise WireError("no INFO from the server")
            info = json.loads(line[5:])
            if info.get("tls_required") or info.get("nonce"):
                raise WireError("the server wants TLS or a signed nonce")
            options: dict[str, object] = {
                "verbose": False, "pedantic": False, "lang": "python3", "version": "fedhub",
                "protocol": 1, "headers": True, "no_responders": True, "name": name,
            }
            if url.username is not None and url.password is not None:
                options.update(user=url.username, **{"pass": url.password})
            elif url.username is not None:
                options["auth_token"] = url.username
            self._send(b"CONNECT " + json.dumps(options).encode() + b"\r\nPING\r\n")
            line = await self._line()
            if line != b"PONG":
                raise WireError(f"server refused: {line[:200]!r}")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self._writer.close()

    async def pull(
        self, next_subject: str, inbox: str, pending: int, batch: int
    ) -> AsyncGenerator[list[tuple[int, bytes]], None]:
        """``(stream sequence, payload)`` lists (at most ``batch`` long) from the pull
        consumer behind ``next_subject`` until nothing is pending; raises WireError.

        Two batches stay requested, so the server sends while the caller folds; what has
        arrived is handed out before waiting for more.
        """
        self._send(f"SUB {inbox} 1\r\n".encode())
        in_flight = 0  # messages requested and not received yet
        items: list[tuple[int, bytes]] = []
        stalls = 0
        while pending > 0:
            while in_flight < min(pending, 2 * batch):
                in_flight += self._request(next_subject, inbox, min(batch, pending - in_flight))
            before = len(items)
            status = self._parse(items, batch)
            if len(items) > before:
                in_flight -= len(items) - before
                pending = self._pending
                stalls = 0
            if status is not None:
                if status not in ("404", "408"):
                    raise WireError(f"pull request failed: status {status}")
                in_flight = 0  # a request ended short: ask afresh
                if len(items) == before:
                    stalls += 1
                    if stalls >= 3:
                        raise WireError("reading stalled")
                continue
            full = len(items) >= batch  # else the buffer ran dry
            if items:
                yield items
                items = []
            if not full and pending > 0:
                await self._fill()

    def _request(self, next_subject: str, inbox: str, count: int) -> int:
        body = json.dumps({"batch": count, "expires": int(_TIMEOUT * 1e9)}).encode()
        self._send(b"PUB %s %s %d\r\n%s\r\n" % (next_subject.encode(), inbox.encode(),
                                               len(body), body))
        return count

    def _parse(self, items: list[tuple[int, bytes]], limit: int) -> str | None:
        """Move the complete messages in the buffer into ``items`` until it holds
        ``limit``; return the code of a status message met on the way, None otherwise.
        Synchronous: one call handles a whole chunk."""
        buf = self._buf
        while len(items) < limit:
            pos = self._pos
            end = buf.find(b"\r\n", pos)
            if end < 0:
                return None
            if buf.startswith(b"HMSG ", pos) or buf.startswith(b"MSG ", pos):
                parts = buf[pos:end].split(b" ")
                stop = end + 2 + int(parts[-1])
                if len(buf) < stop + 2:
                    return None
                self._pos = stop + 2
                headers = parts[0] == b"HMSG"
                if len(parts) == (5 if headers else 4):  # no reply subject: a status
                    return buf[end + 11:end + 14].decode() if headers else "?"
                numbers = ack_numbers(parts[3].decode())
                if numbers is None:
                    raise WireError("a message without a JetStream reply subject")
                items.append((numbers[0], buf[end + 2 + (int(parts[4]) if headers else 0):stop]))
                self._pending = numbers[1]
                continue
            line = buf[pos:end]
            self._pos = end + 2
            if line == b"PING":
                self._send(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise WireError(f"server error: {line[:200]!r}")
            # +OK, PONG, INFO updates: nothing to do
        return None

    async def _line(self) -> bytes:
        while True:
            end = self._buf.find(b"\r\n", self._pos)
            if end >= 0:
                line = self._buf[self._pos:end]
                self._pos = end + 2
                return line
            await self._fill()

    async def _fill(self) -> None:
        try:
            chunk = await asyncio.wait_for(self._reader.read(_CHUNK), _TIMEOUT + 1)
        except (OSError, TimeoutError) as exc:
            raise WireError(f"connection failed: {exc}") from exc
        if not chunk:
            raise WireError("connection closed by the server")
        # bytes, not a bytearray: payloads are sliced out as they are, one copy each.
        self._buf = self._buf[self._pos:] + chunk
        self._pos = 0

    def _send(self, data: bytes) -> None:
        self._writer.write(data)


def ack_numbers(reply: str) -> tuple[int, int] | None:
    """(stream sequence, messages pending after this one) from a JetStream ack subject,
    in either layout (``$JS.ACK.<stream>...`` or the domain form); None otherwise."""
    tokens = reply.split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[8])
    if len(tokens) >= 11 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[7]), int(tokens[10])
    return None
