"""EventStore on NATS JetStream: stream FEDHUB (subjects ``fedhub.>``) plus a small
last-value-only stream for heartbeats.

De-duplication uses the event id as ``Nats-Msg-Id``; per-subject optimistic concurrency
uses ``Nats-Expected-Last-Subject-Sequence``; both are enforced by the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js import api as jsapi
from nats.js.errors import APIError, NotFoundError

from fedhub.events.bulk import bulk_read
from fedhub.events.envelope import Envelope, decode
from fedhub.events.errors import (
    ConcurrencyError,
    ConsumerMismatch,
    MalformedEvent,
    StoreUnavailable,
)
from fedhub.events.repeats import RepeatLimiter
from fedhub.events.store import StoredEvent
from fedhub.schemas.subjects import ALL, HEALTH_ROOT, HEALTH_STREAM, STREAM

log = logging.getLogger(__name__)
_repeats = RepeatLimiter(log)  # the client retries every second while a server is away
WRONG_LAST_SEQUENCE = 10071
# Events decoded per batch of a read: small reads (one server's events) are common, and
# a batch is requested ahead while the previous one is handed out.
_READ_BATCH = 256


def _stored(seq: int, data: bytes, subject: str | None) -> StoredEvent | None:
    """The decoded event, or None (logged) for a malformed message: reads skip those."""
    try:
        return StoredEvent(seq, decode(data))
    except MalformedEvent as exc:
        log.warning("skipping malformed message %d on %s: %s", seq, subject, exc)
        return None


def _refused(exc: Exception) -> bool:
    """True for the server's refusal of the credentials (wrong, or revoked)."""
    return "authorization violation" in str(exc).lower()


async def _on_error(exc: Exception) -> None:
    if _refused(exc):
        _repeats.warning(f"NATS refuses these credentials ({exc}): wrong, or revoked (a site "
                         "removed with `fedhub site remove`); retrying")
    else:
        _repeats.warning(f"NATS: {exc or type(exc).__name__}")


def redacted(url: str) -> str:
    """``url`` (one or several, comma-separated) without user names and passwords: for
    messages and logs."""
    def one(part: str) -> str:
        # by hand, not urlsplit: a password may hold "#", "/" or "?", and a URL may have no
        # scheme; a NATS URL has no path, so everything up to the last "@" is credentials
        scheme, sep, rest = part.strip().rpartition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}"
    return ",".join(one(part) for part in url.split(","))


async def _on_reconnect() -> None:
    log.info("NATS: reconnected")


@dataclass
class _JetStreamDelivery:
    seq: int
    event: Envelope
    _msg: Msg

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float = 1.0) -> None:
        await self._msg.nak(delay=delay)


FOLLOW_CHECK = 3.0  # seconds of quiet after which a follower checks its consumer delivers
FOLLOW_RETRY_MAX = 10.0  # seconds between a lost follower's attempts to resume


def _credentials(urls: list[str]) -> tuple[str | None, str | None]:
    """The user and password written into the first of ``urls`` that has any."""
    for url in urls:
        parts = urlsplit(url)
        if parts.username is not None:
            password = unquote(parts.password) if parts.password is not None else None
            return unquote(parts.username), password
    return None, None


class _ConsumerLost(Exception):
    """An ordered consumer that no longer delivers (its server went away)."""


def servers(url: str) -> list[str]:
    """The NATS servers of a ``nats_url``: one URL, or several separated by commas (the
    client learns the rest of a cluster from whichever answers)."""
    found = [part.strip() for part in url.split(",") if part.strip()]
    if not found:
        raise StoreUnavailable("no NATS server URL given")
    return found


async def _delivering(sub: JetStreamContext.PushSubscription) -> bool:
    """True if the consumer behind ``sub`` still exists and pushes to this client."""
    try:
        info = await sub.consumer_info()
    except (TimeoutError, NatsError):  # gone, or its server does not answer
        return False
    return bool(info.push_bound)


class JetStreamStore:
    """EventStore backed by a NATS JetStream stream; see EventStore for the contract."""

    def __init__(self, nc: Client, js: JetStreamContext, stream: str = STREAM,
                 bounded_reads: bool = True, direct_reads: bool = False) -> None:
        self._nc = nc
        self._js = js
        self._stream = stream
        # Bulk reads may open a connection of their own (fedhub.events.wire): only when
        # the URL alone logs in, i.e. no credentials file.
        self._direct_reads = direct_reads
        # Pull consumers keep long reads (audit, rebuilds) in flat memory, but fetching
        # needs permission on the consumer's random name, which a site's credential cannot
        # be given without letting it fetch from every consumer; sites (whose credential
        # has an inbox prefix of its own) read their few subjects with named push
        # consumers, authorized by their filter.
        self._bounded_reads = bounded_reads

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        credentials: str | None = None,
        create_streams: bool = True,
        replicas: int = 1,
        name: str = "fedhub",
        connect_timeout: float = 15.0,
        inbox_prefix: str = "",
    ) -> JetStreamStore:
        """Connect (reconnecting forever once connected) and make sure the streams exist.

        Raises StoreUnavailable if the first connection fails.
        """
        nc = Client()
        # Why the first connection fails, if the server said (one kept: the callback lives
        # as long as the connection, and a revoked credential is refused every second).
        refusals: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            if _refused(exc) and not refusals:
                refusals.append(exc)
            await _on_error(exc)

        async def on_disconnect() -> None:  # nats-py calls it on close() too: say so only
            if not nc.is_closed:  # when the connection was lost
                log.warning("NATS: disconnected; reconnecting")

        try:
            # Once connected, reconnect forever; the first connection gets a deadline so a
            # wrong URL is reported instead of retried silently.
            urls = servers(url)
            user, password = _credentials(urls)
            await asyncio.wait_for(nc.connect(
                urls,
                # Given apart, not only in a URL: the client then uses them with every
                # server of a cluster, the ones it fails over to and learns of included.
                user=user,
                password=password,
                name=name,
                user_credentials=credentials,
                max_reconnect_attempts=-1,
                reconnect_time_wait=1,
                connect_timeout=5,
                allow_reconnect=True,
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=_on_reconnect,
                # A site's credential may only receive on its own inbox prefix.
                inbox_prefix=inbox_prefix or "_INBOX",
            ), timeout=connect_timeout)
        except (NatsError, OSError, TimeoutError) as exc:
            # A refused or timed-out first connection may hold a half-open socket (e.g. a
            # wrong password keeps nats-py retrying): close it now, not at garbage collection.
            with contextlib.suppress(Exception):
                await nc.close()
            why = (f"it refuses these credentials ({refusals[-1]}): wrong, or revoked"
                   if refusals else str(exc) or "no answer in time")
            raise StoreUnavailable(f"cannot connect to NATS at {redacted(url)}: {why}") from exc
        store = cls(nc, nc.jetstream(), bounded_reads=not inbox_prefix,
                    direct_reads=credentials is None)
        if create_streams:
            try:
                await store.ensure_streams(replicas=replicas)
            except StoreUnavailable:  # e.g. a cluster still electing: the caller retries
                await nc.close()
                raise
        return store

    async def ensure_streams(self, *, replicas: int = 1) -> None:
        """Create the FEDHUB and health streams if missing (idempotent), kept on
        ``replicas`` servers of the cluster; a stream kept on fewer is scaled up (never
        down: a component configured with fewer must not undo another's choice)."""
        log_cfg = jsapi.StreamConfig(
            name=self._stream,
            subjects=[ALL],
            storage=jsapi.StorageType.FILE,
            num_replicas=replicas,
            deny_delete=True,
            duplicate_window=120.0,
            allow_direct=True,
        )
        health_cfg = jsapi.StreamConfig(
            name=HEALTH_STREAM,
            subjects=[f"{HEALTH_ROOT}.>"],
            storage=jsapi.StorageType.MEMORY,
            num_replicas=replicas,
            max_msgs_per_subject=1,
            max_age=3600.0,
            allow_direct=True,
        )
        for name, cfg in ((self._stream, log_cfg), (HEALTH_STREAM, health_cfg)):
            try:
                await self._js.add_stream(cfg)
            except APIError as exc:  # it exists; or the server refuses it, said below
                await self._scale_up(name, replicas, exc)
            except NatsError as exc:
                raise StoreUnavailable(f"cannot create stream {name}: {exc}") from exc

    async def _scale_up(self, stream: str, replicas: int, refused: APIError) -> None:
        try:
            config = (await self._js.stream_info(stream)).config
        except NotFoundError:  # e.g. more replicas than a lone server can keep
            raise StoreUnavailable(f"cannot create stream {stream} on {replicas} servers: "
                                   f"{refused.description or refused}") from refused
        except NatsError as exc:
            raise StoreUnavailable(f"cannot read stream {stream}: {exc}") from exc
        try:
            if (config.num_replicas or 1) >= replicas:
                return
            config.num_replicas = replicas
            await self._js.update_stream(config)
        except NatsError as exc:
            raise StoreUnavailable(f"cannot keep stream {stream} on {replicas} servers: "
                                   f"{exc}") from exc
        log.info("stream %s is now kept on %d servers", stream, replicas)

    async def close(self) -> None:
        """Drain and close the connection; just close it while it is being re-established
        (there is nothing to drain to, and the component is stopping anyway)."""
        if self._nc.is_closed:
            return
        try:
            await self._nc.drain()
        except (NatsError, OSError, TimeoutError):
            await self._nc.close()

    async def append(self, event: Envelope, *, expected_seq: int | None = None) -> int:
        headers = {"Nats-Msg-Id": event.id}
        if expected_seq is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_seq)
        try:
            ack = await self._js.publish(
                event.subject, event.encode(), stream=self._stream, headers=headers, timeout=5
            )
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                raise ConcurrencyError(event.subject, expected_seq or 0) from exc
            raise StoreUnavailable(f"append to {event.subject} refused: {exc}") from exc
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"append to {event.subject} failed: {exc}") from exc
        return int(ack.seq)

    async def append_raw(self, subject: str, data: bytes) -> int:
        try:
            ack = await self._js.publish(subject, data, stream=self._stream, timeout=5)
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"append to {subject} failed: {exc}") from exc
        return int(ack.seq)

    async def last(self, subject: str) -> StoredEvent | None:
        try:
            raw = await self._js.get_last_msg(self._stream, subject, direct=True)
        except NotFoundError:
            return None
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"cannot read {subject}: {exc}") from exc
        assert raw.seq is not None and raw.data is not None
        return StoredEvent(int(raw.seq), decode(raw.data))

    async def first(self, subjects: str = "fedhub.>", *, start: int = 1) -> StoredEvent | None:
        seq = max(start, 1)
        while True:
            try:  # a direct get of the next message on the subjects: no consumer
                raw = await self._js.get_msg(self._stream, seq=seq, subject=subjects,
                                             next=True, direct=True)
            except NotFoundError:
                return None
            except (TimeoutError, NatsError) as exc:
                raise StoreUnavailable(f"cannot read {subjects} from {seq}: {exc}") from exc
            assert raw.seq is not None
            if (item := _stored(int(raw.seq), raw.data or b"", raw.subject)) is not None:
                return item
            seq = int(raw.seq) + 1

    async def last_seq(self) -> int:
        try:
            info = await self._js.stream_info(self._stream)
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"cannot read stream info: {exc}") from exc
        return int(info.state.last_seq)

    def _decoded(self, msg: Msg) -> StoredEvent | None:
        item = _stored(int(msg.metadata.sequence.stream), msg.data, msg.subject)
        if item is not None and item.event.subject != msg.subject:
            # Every append is stored under its envelope's subject: one that is not was
            # written by someone else, e.g. a site copying a command onto its own subject.
            log.warning("skipping message %d on %s: its envelope names %s", item.seq,
                        msg.subject, item.event.subject[:200])
            return None
        return item

    async def _ordered(
        self, subjects: str, config: jsapi.ConsumerConfig, *, until_caught_up: bool
    ) -> AsyncGenerator[StoredEvent, None]:
        """Decoded events of :meth:`_ordered_msgs`; malformed ones are logged and skipped."""
        async for msg in self._ordered_msgs(subjects, config, until_caught_up=until_caught_up):
            item = self._decoded(msg)
            if item is not None:
                yield item

    async def _ordered_msgs(
        self, subjects: str, config: jsapi.ConsumerConfig, *, until_caught_up: bool,
        watch: bool = False, stream: str | None = None, patience: float | None = None,
    ) -> AsyncGenerator[Msg, None]:
        """An ordered (flow-controlled, gap-free) push consumer over ``subjects`` of
        ``stream`` (the log's by default); without ``watch``, waiting more than
        ``patience`` seconds (if given) for a message raises StoreUnavailable.

        The consumer is named, so the server sees the filter in the API subject and can
        refuse a site credential that asks for subjects it may not read. With ``watch``,
        after each quiet spell it checks that the consumer still delivers to it, and
        raises _ConsumerLost when not: in a cluster, an ordered consumer lives on one
        server, and the client's own recovery recreates it under its old name, which
        the cluster refuses for as long as it remembers that consumer.
        """
        config.name = self._nc._nuid.next().decode()
        try:
            sub = await self._js.subscribe(
                subjects,
                stream=stream or self._stream,
                ordered_consumer=True,
                config=config,
                pending_msgs_limit=-1,
                pending_bytes_limit=-1,
            )
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(
                f"cannot read {subjects}: {str(exc) or 'refused or timed out'}"
            ) from exc
        try:
            if until_caught_up:
                # num_pending counts only what is not yet delivered; an empty match has
                # delivered nothing and has nothing pending.
                try:
                    info = await sub.consumer_info()
                except (TimeoutError, NatsError) as exc:
                    raise StoreUnavailable(f"cannot read {subjects}: {exc}") from exc
                delivered = int(info.delivered.consumer_seq or 0) if info.delivered else 0
                if int(info.num_pending or 0) == 0 and delivered == 0:
                    return
            while True:
                try:
                    msg = await sub.next_msg(timeout=FOLLOW_CHECK if watch else patience)
                except TimeoutError:  # nats-py raises its own or asyncio's
                    if not watch:
                        raise StoreUnavailable(
                            f"cannot read {subjects}: nothing came for {patience} s") from None
                    if not await _delivering(sub):
                        raise _ConsumerLost(subjects) from None
                    continue
                except NatsError as exc:  # e.g. the connection closed under it
                    raise StoreUnavailable(f"cannot read {subjects}: {exc}") from exc
                yield msg
                if until_caught_up and msg.metadata.num_pending == 0:
                    return
        finally:
            try:
                await sub.unsubscribe()
            except (NatsError, TimeoutError):
                pass

    async def _pulled(
        self, subjects: str, config: jsapi.ConsumerConfig
    ) -> AsyncGenerator[StoredEvent, None]:
        """Everything ``subjects`` holds now, in bounded batches from an ephemeral pull
        consumer (``bulk_read``): memory stays flat however long the log (a push consumer
        buffers whatever the server sends ahead of a slow reader)."""
        async with aclosing(bulk_read(self._nc, self._js, self._stream, subjects,
                                      config, batch=_READ_BATCH)) as batches:
            async for batch in batches:
                for seq, data in batch:
                    if (item := _stored(seq, data, subjects)) is not None:
                        yield item

    def _start_config(self, start: int) -> jsapi.ConsumerConfig:
        if start <= 1:
            return jsapi.ConsumerConfig(deliver_policy=jsapi.DeliverPolicy.ALL)
        return jsapi.ConsumerConfig(
            deliver_policy=jsapi.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
        )

    async def read(
        self, subjects: str = ALL, *, start: int = 1
    ) -> AsyncGenerator[StoredEvent, None]:
        if not self._bounded_reads:
            async for item in self._ordered(subjects, self._start_config(start),
                                            until_caught_up=True):
                yield item
            return
        async for item in self._pulled(subjects, self._start_config(start)):
            yield item

    async def follow(
        self, subjects: str = ALL, *, start: int = 1
    ) -> AsyncGenerator[StoredEvent, None]:
        """See EventStore.follow. Raises StoreUnavailable if it cannot start or the store
        is closed; otherwise, once following, it outlives the loss of any NATS server: a
        consumer that stops delivering is replaced by a new one from the next event,
        retried until the cluster takes it."""
        following, pause = False, 0.5
        while True:
            try:
                async for msg in self._ordered_msgs(subjects, self._start_config(start),
                                                    until_caught_up=False, watch=True):
                    following, pause = True, 0.5
                    start = int(msg.metadata.sequence.stream) + 1
                    item = self._decoded(msg)
                    if item is not None:
                        yield item
            except _ConsumerLost:  # it was subscribed, even if nothing came: resume for good
                following = True
                log.warning("following %s: the consumer stopped delivering (a NATS server "
                            "went away?); resuming from event %d", subjects, start)
            except StoreUnavailable as exc:
                if not following or self._nc.is_closed:  # a closed connection stays closed
                    raise
                log.warning("following %s: cannot resume from event %d yet (%s); retrying "
                            "in %.1f s", subjects, start, exc, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, FOLLOW_RETRY_MAX)

    async def latest_per_subject(self, subjects: str) -> list[StoredEvent]:
        cfg = jsapi.ConsumerConfig(deliver_policy=jsapi.DeliverPolicy.LAST_PER_SUBJECT)
        if not self._bounded_reads:
            return [i async for i in self._ordered(subjects, cfg, until_caught_up=True)]
        return [item async for item in self._pulled(subjects, cfg)]

    async def latest_raw(self, subjects: str) -> AsyncGenerator[tuple[int, bytes], None]:
        """See fedhub.events.raw.RawReader: the latest message per subject, undecoded.

        Raises NotImplementedError on a site's connection (its credential may not create
        the pull consumer a bulk read uses): use ``latest_per_subject`` there."""
        if not self._bounded_reads:
            raise NotImplementedError("latest_raw needs a pull consumer, which a site's "
                                      "credential may not create; use latest_per_subject")
        cfg = jsapi.ConsumerConfig(deliver_policy=jsapi.DeliverPolicy.LAST_PER_SUBJECT)
        direct = self._nc.connected_url if self._direct_reads else None
        # aclosing: a reader that stops early must close the bulk read (and its own
        # connection) now, not whenever the loop gets to finalize the generator.
        async with aclosing(bulk_read(self._nc, self._js, self._stream, subjects, cfg,
                                      direct=direct)) as batches:
            async for batch in batches:
                for item in batch:
                    yield item

    async def consume(
        self, subjects: str, *, durable: str
    ) -> AsyncGenerator[_JetStreamDelivery, None]:
        cfg = jsapi.ConsumerConfig(
            ack_policy=jsapi.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_deliver=-1,
            filter_subject=subjects,
        )
        try:
            sub = await self._js.pull_subscribe(
                subjects, durable=durable, stream=self._stream, config=cfg
            )
            info = await sub.consumer_info()
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(
                f"cannot consume {subjects} as {durable}: {str(exc) or 'refused or timed out'}"
            ) from exc
        if info.config.filter_subject != subjects:
            # Binding to an existing durable ignores the filter asked for: refuse instead.
            await sub.unsubscribe()
            raise ConsumerMismatch(
                f"durable {durable} consumes {info.config.filter_subject}, not {subjects}")
        batch: list[Msg] = []
        try:
            while True:
                try:
                    batch = await sub.fetch(16, timeout=5)
                except TimeoutError:  # nats-py raises its own or asyncio's
                    continue
                except NatsError as exc:
                    if self._nc.is_closed:  # closed by its owner, or given up for good
                        raise StoreUnavailable(f"consumer {durable}: {exc}") from exc
                    log.warning("consumer %s: fetch failed (%s); retrying", durable, exc)
                    await asyncio.sleep(1)
                    continue
                while batch:
                    msg = batch.pop(0)
                    item = self._decoded(msg)
                    if item is None:
                        await msg.ack()
                        continue
                    batch.insert(0, msg)  # still ours until the caller acks it
                    yield _JetStreamDelivery(item.seq, item.event, msg)
                    batch.pop(0)
        finally:
            # Hand back what we fetched but did not finish, so a restarted consumer gets
            # it at once instead of after ack_wait.
            with contextlib.suppress(NatsError):  # e.g. the connection closed
                for msg in batch:
                    if not msg._ackd:  # the caller may have acked it before closing us
                        await msg.nak()
                await sub.unsubscribe()

    async def delete_consumer(self, durable: str) -> bool:
        try:
            return bool(await self._js.delete_consumer(self._stream, durable))
        except NotFoundError:
            return False
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"cannot delete consumer {durable}: {exc}") from exc

    async def put_health(self, subject: str, data: bytes) -> None:
        try:
            await self._js.publish(subject, data, stream=HEALTH_STREAM, timeout=5)
        except (TimeoutError, NatsError) as exc:
            raise StoreUnavailable(f"heartbeat on {subject} failed: {exc}") from exc

    async def latest_health(self, subjects: str) -> dict[str, tuple[bytes, datetime]]:
        cfg = jsapi.ConsumerConfig(deliver_policy=jsapi.DeliverPolicy.LAST_PER_SUBJECT)
        out: dict[str, tuple[bytes, datetime]] = {}
        async with aclosing(self._ordered_msgs(subjects, cfg, until_caught_up=True,
                                               stream=HEALTH_STREAM, patience=5)) as msgs:
            async for msg in msgs:
                stamp: Any = msg.metadata.timestamp
                out[msg.subject] = (msg.data, stamp if stamp else datetime.now(UTC))
        return out
