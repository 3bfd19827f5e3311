"""The EventStore contract against a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fedhub.events.jetstream import JetStreamStore
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
