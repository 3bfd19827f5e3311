"""The bulk-pull NATS reader against a scripted server: framing, pings, short batches."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlparse

import pytest

from fedhub.events.wire import WireError, WireReader, ack_numbers

INBOX = "_INBOX.t"
NEXT = "$JS.API.CONSUMER.MSG.NEXT.FEDHUB.c1"


def data(seq: int, pending: int, payload: bytes, headers: bool = True) -> bytes:
    reply = f"$JS.ACK.FEDHUB.c1.1.{seq}.{seq}.1700000000.{pending}"
    if not headers:
        return b"MSG fedhub.route.x 1 %s %d\r\n%s\r\n" % (reply.encode(), len(payload), payload)
    hdr = b"NATS/1.0\r\nNats-Msg-Id: abc\r\n\r\n"
    return b"HMSG fedhub.route.x 1 %s %d %d\r\n%s%s\r\n" % (
        reply.encode(), len(hdr), len(hdr) + len(payload), hdr, payload)


def status(code: bytes) -> bytes:
    hdr = b"NATS/1.0 " + code + b" Request Timeout\r\n\r\n"
    return b"HMSG %s 1 %d %d\r\n%s\r\n" % (INBOX.encode(), len(hdr), len(hdr), hdr)


class Script:
    """A fake server: answers the login, then one scripted reply per pull request."""

    def __init__(self, replies: list[bytes], info: dict[str, object] | None = None,
                 login: bytes = b"PONG\r\n") -> None:
        self.replies = replies
        self.info = info or {"server_id": "fake", "headers": True}
        self.login = login
        self.requests: list[dict[str, int]] = []
        self.connect: dict[str, object] = {}
        self.pongs = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"INFO " + json.dumps(self.info).encode() + b"\r\n")
        try:
            while line := await reader.readline():
                if line.startswith(b"CONNECT "):
                    self.connect = json.loads(line[8:])
                elif line == b"PING\r\n":
                    writer.write(self.login)
                elif line == b"PONG\r\n":
                    self.pongs += 1
                elif line.startswith(b"PUB "):
                    self.requests.append(json.loads(await reader.readline()))
                    reply = self.replies.pop(0) if self.replies else b""
                    for i in range(0, len(reply), 5):  # in pieces: framing must not care
                        writer.write(reply[i:i + 5])
                        await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Script, str]]:
    script: Script = request.param
    srv = await asyncio.start_server(script.serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield script, f"nats://user:secret@127.0.0.1:{port}"


async def pull_all(url: str, pending: int, batch: int) -> list[tuple[int, bytes]]:
    """Everything pulled, in order; batches are at most ``batch`` long (and may be shorter:
    the reader hands out what has arrived before it waits)."""
    wire = await WireReader.open(urlparse(url), "test")
    try:
        batches = [items async for items in wire.pull(NEXT, INBOX, pending, batch)]
    finally:
        wire.close()
    assert all(0 < len(items) <= batch for items in batches)
    return [item for items in batches for item in items]


@pytest.mark.parametrize("server", [Script([
    data(1, 3, b"one") + b"PING\r\n" + data(2, 2, b"two", headers=False),
    status(b"408"),  # nothing this time: asked again
    data(5, 1, b'{"x": "\r\n"}') + status(b"408"),  # answered short
    data(9, 0, b""),
])], indirect=True)
async def test_batches_in_order_across_pieces_pings_and_short_answers(
    server: tuple[Script, str],
) -> None:
    script, url = server
    items = await pull_all(url, pending=4, batch=2)
    assert items == [(1, b"one"), (2, b"two"), (5, b'{"x": "\r\n"}'), (9, b"")]
    assert [r["batch"] for r in script.requests] == [2, 2, 2, 1]
    assert script.pongs == 1
    assert (script.connect["user"], script.connect["pass"]) == ("user", "secret")


@pytest.mark.parametrize("server", [Script([
    data(1, 3, b"a") + data(2, 2, b"b"),
    data(3, 1, b"c") + data(4, 0, b"d"),
])], indirect=True)
async def test_two_batches_are_asked_for_before_the_first_arrives(
    server: tuple[Script, str],
) -> None:
    script, url = server
    assert await pull_all(url, pending=4, batch=2) == [(1, b"a"), (2, b"b"), (3, b"c"),
                                                       (4, b"d")]
    assert [r["batch"] for r in script.requests] == [2, 2]


@pytest.mark.parametrize("server", [Script([status(b"409")])], indirect=True)
async def test_a_failed_pull_is_an_error(server: tuple[Script, str]) -> None:
    with pytest.raises(WireError, match="409"):
        await pull_all(server[1], pending=1, batch=1)


@pytest.mark.parametrize("server", [Script([status(b"408")] * 3)], indirect=True)
async def test_a_silent_consumer_is_an_error(server: tuple[Script, str]) -> None:
    with pytest.raises(WireError, match="stalled"):
        await pull_all(server[1], pending=1, batch=1)


@pytest.mark.parametrize("server", [
    Script([], info={"tls_required": True}),
    Script([], info={"nonce": "abc"}),
    Script([], login=b"-ERR 'Authorization Violation'\r\n"),
], indirect=True)
async def test_what_it_cannot_log_in_to_is_refused_up_front(
    server: tuple[Script, str],
) -> None:
    with pytest.raises(WireError):
        await WireReader.open(urlparse(server[1]), "test")


async def test_only_plain_nats_urls() -> None:
    with pytest.raises(WireError):
        await WireReader.open(urlparse("tls://127.0.0.1:4222"), "test")


def test_ack_numbers_reads_both_reply_layouts() -> None:
    assert ack_numbers("$JS.ACK.FEDHUB.c1.1.42.7.1700000000.3") == (42, 3)
    assert ack_numbers("$JS.ACK.hub.ACCHASH.FEDHUB.c1.1.42.7.1700000000.3.rnd") == (42, 3)
    assert ack_numbers("_INBOX.abc") is None
