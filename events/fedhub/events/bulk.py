"""Reading many messages from JetStream quickly: an ephemeral pull consumer, drained in
batches over a connection of its own (fedhub.events.wire) or, where that cannot log in,
through one nats-py subscription callback.

nats-py's ``fetch`` starts a timed wait (a task) and parses the metadata of every
message; for a rebuild of 100,000 routes that cost more than everything else together.
Either way here, the next batch is requested before the current one is handed out, so
the server sends while the caller folds. Memory stays bounded by two batches.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator
from urllib.parse import ParseResult

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import NotFoundError

from fedhub.events.errors import StoreUnavailable
from fedhub.events.wire import WireError, WireReader, ack_numbers

log = logging.getLogger(__name__)

BATCH = 2048
_TIMEOUT = 5.0
_MAX_STALLS = 3


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
    config: jsapi.ConsumerConfig, batch: int = BATCH, direct: ParseResult | None = None,
) -> AsyncGenerator[list[tuple[int, bytes]], None]:
    """``(stream sequence, data)`` of what the consumer ``config`` over ``subjects`` holds
    now, in order, in lists of at most ``batch``; over a connection of its own to
    ``direct`` when given and possible. Raises StoreUnavailable."""
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
        wire = await _wire(direct, nc) if pending and direct is not None else None
        if wire is not None:
            try:
                async for items in wire.pull(next_subject, nc.new_inbox(), pending, batch):
                    yield items
            except WireError as exc:
                raise StoreUnavailable(f"reading {subjects} failed: {exc}") from exc
            finally:
                wire.close()
            return
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


async def _wire(url: ParseResult, nc: Client) -> WireReader | None:
    try:
        return await WireReader.open(url, f"{nc.options.get('name') or 'fedhub'}-bulk")
    except WireError as exc:
        log.info("bulk read through nats-py: %s", exc)
        return None
