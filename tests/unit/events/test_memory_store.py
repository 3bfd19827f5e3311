from __future__ import annotations

import pytest

from fedhub.events.memory import MemoryStore
from tests.unit.events.contract import EventStoreContract


class TestMemoryStore(EventStoreContract):
    @pytest.fixture
    def store(self) -> MemoryStore:
        return MemoryStore()
