"""The EventStore contract against a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

import pytest

from fedhub.events.errors import StoreUnavailable
from fedhub.events.jetstream import JetStreamStore
from tests.support.polling import until
from tests.support.services import nats_server
from tests.unit.events.contract import EventStoreContract


class TestJetStreamStore(EventStoreContract):
    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[JetStreamStore]:
        # A fresh server per test: deleting and re-creating a stream in one server is
        # asynchronous and can hand a test the previous test's messages.
        with nats_server(tmp_path) as url:
            s = await JetStreamStore.connect(url)
            yield s
            await s.close()


async def test_first_is_fetched_without_creating_a_consumer(tmp_path: Path) -> None:
    # fedhub audit --since bisects the log with ``first``: it used to create (and delete)
    # a consumer per step. Watch the JetStream API requests on the server itself.
    import nats

    from fedhub.events.envelope import new_event
    from fedhub.schemas import subjects
    from fedhub.schemas.events import UserCreated

    with nats_server(tmp_path) as url:
        store = await JetStreamStore.connect(url)
        watcher = await nats.connect(url)
        try:
            for i in range(5):
                await store.append(new_event(subjects.user(f"u{i}"), UserCreated(name=f"u{i}"),
                                             actor="test", signer=None))
            requests: list[str] = []

            async def seen(msg: nats.aio.msg.Msg) -> None:
                requests.append(msg.subject)

            await watcher.subscribe("$JS.API.>", cb=seen)
            await watcher.flush()
            found = [await store.first(start=seq) for seq in (1, 3, 5, 6)]
            assert [f.seq if f else None for f in found] == [1, 3, 5, None]
            # The watcher's copies may arrive after the answers: wait for all four.
            await until(lambda: sum(".DIRECT.GET." in r for r in requests) >= 4,
                        what="first's four direct gets")
            await watcher.flush()  # and anything else first asked for, had it asked
            assert len(requests) == 4 and all(".DIRECT.GET." in r for r in requests), requests
            # A read, by contrast, does create a consumer (the watcher sees it).
            async with aclosing(store.read(start=2)) as reading:
                await anext(reading)
            await until(lambda: any(r.startswith("$JS.API.CONSUMER.") for r in requests),
                        what="the read's consumer request")
        finally:
            await watcher.close()
            await store.close()


async def test_closing_while_nats_is_away_just_closes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A component stopped (Ctrl-C) while its NATS server is down used to end with a
    # traceback: nats-py refuses to drain a connection that is being re-established.
    with nats_server(tmp_path) as url:
        store = await JetStreamStore.connect(url)
    await until(lambda: "reconnecting" in caplog.text, what="the client to notice")
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.last_seq()
