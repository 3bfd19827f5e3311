"""Reading many messages from JetStream quickly: an ephemeral pull consumer, drained by
a plain subscription callback in batches.

nats-py's ``fetch`` starts a timed wait (a task) and parses the metadata of every
message; for a rebuild of 100,000 routes that cost more than everything else together.
Here one callback per message only splits the reply subject for the two numbers needed,
and the next batch is requested before the current one is handed out, so the server
sends while the caller folds. Memory stays bounded by two batches.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from fedhub.events.errors import StoreUnavailable

BATCH = 2048
_TIMEOUT = 5.0
_MAX_STALLS = 3


def ack_numbers(reply: str) -> tuple[int, int] | None:
    """(stream sequence, messages pending after this one) from a JetStream ack subject,
    in either layout (``$JS.ACK.<stream>...`` or the domain form); None otherwise."""
    tokens = reply.split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[8])
    if len(tokens) >= 11 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[7]), int(tokens[10])
    return None


class _Batches:
    """Collects the answer to one pull request at a time (the subscription callback)."""

    def __init__(self) -> None:
        self.items: list[tuple[int, bytes]] = []
        self.wanted = 0
        self.pending = -1  # after the last message received; -1: none received yet
        self.status = ""  # of a status message ending the request early (404, 408, 409)
        self.done = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        numbers = ack_numbers(msg.reply) if msg.reply else None
        if numbers is None:  # a status message: the request ended short
            self.status = (msg.headers or {}).get("Status", "?")
            self.done.set()
            return
        self.items.append((numbers[0], msg.data))
        self.pending = numbers[1]
        if len(self.items) >= self.wanted or self.pending == 0:
            self.done.set()

    def take(self) -> list[tuple[int, bytes]]:
        items, self.items = self.items, []
        self.status = ""
        self.done.clear()
        return items


async def bulk_read(
    nc: Client, js: JetStreamContext, stream: str, subjects: str,
    config: jsapi.ConsumerConfig, batch: int = BATCH,
) -> AsyncGenerator[list[tuple[int, bytes]], None]:
    """``(stream sequence, data)`` of what the consumer ``config`` over ``subjects`` holds
    now, in order, in lists of at most ``batch``. Raises StoreUnavailable."""
    config.filter_subject = subjects
    config.ack_policy = jsapi.AckPolicy.NONE
    config.inactive_threshold = 60.0  # dropped by the server if we vanish mid-read
    collector = _Batches()
    try:
        info = await js.add_consumer(stream, config)
        sub = await nc.subscribe(nc.new_inbox(), cb=collector.on_msg,
                                 pending_msgs_limit=4 * batch, pending_bytes_limit=-1)
    except (TimeoutError, NatsError) as exc:
        raise StoreUnavailable(
            f"cannot read {subjects}: {str(exc) or 'refused or timed out'}") from exc
    next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{info.name}"

    async def request(count: int) -> None:
        collector.wanted = count
        body = json.dumps({"batch": count, "expires": int(_TIMEOUT * 1e9)}).encode()
        await nc.publish(next_subject, body, reply=sub.subject)

    try:
        pending = int(info.num_pending or 0)
        stalls = 0
        if pending:
            await request(min(batch, pending))
        while pending > 0:
            try:
                await asyncio.wait_for(collector.done.wait(), _TIMEOUT + 1)
            except TimeoutError:
                pass
            status = collector.status
            items = collector.take()
            if items:
                stalls = 0
                pending = collector.pending
            elif status in ("", "404", "408"):  # nothing yet: ask again, a few times
                stalls += 1
                if stalls >= _MAX_STALLS:
                    raise StoreUnavailable(f"reading {subjects} stalled")
            else:
                raise StoreUnavailable(f"reading {subjects} failed: status {status}")
            if pending > 0:
                await request(min(batch, pending))  # the server sends while we hand out
            if items:
                yield items
    except (TimeoutError, NatsError) as exc:
        raise StoreUnavailable(f"reading {subjects} failed: {exc}") from exc
    finally:
        try:
            await sub.unsubscribe()
            await js.delete_consumer(stream, info.name)
        except (TimeoutError, NatsError, NotFoundError):
            pass
