"""keep_running: a component's loop comes back after a failure, and stops when it ends."""

from __future__ import annotations

import pytest

from fedhub.events import supervise
from fedhub.events.errors import StoreUnavailable
from fedhub.events.supervise import keep_running


async def test_a_failing_loop_runs_again_until_it_returns(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervise, "FIRST_PAUSE", 0.01)
    runs = []

    async def run() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise StoreUnavailable("no servers available")

    await keep_running("reactor", run)
    assert runs == [0, 1, 2]
    assert caplog.text.count("reactor loop failed; restarting") == 2
