"""Lanes: different servers' reactions run concurrently, one server's strictly in order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import pytest

from fedhub.coordinator.reactor import lane_of
from fedhub.events.lanes import Lanes


def recorder(log: list[str], name: str, gate: asyncio.Event | None = None
             ) -> Callable[[], Awaitable[None]]:
    async def work() -> None:
        log.append(f"start {name}")
        if gate is not None:
            await gate.wait()
        log.append(f"end {name}")
    return work


async def test_one_key_runs_in_order_while_another_key_overtakes() -> None:
    lanes, log, gate = Lanes(), list[str](), asyncio.Event()
    await lanes.submit("a", 1, recorder(log, "a1", gate))
    await lanes.submit("a", 2, recorder(log, "a2"))
    await lanes.submit("b", 3, recorder(log, "b3"))
    await asyncio.sleep(0.01)
    assert log == ["start a1", "start b3", "end b3"]  # b did not wait for a
    gate.set()
    await lanes.drain()
    assert log[3:] == ["end a1", "start a2", "end a2"]


async def test_position_never_passes_unfinished_work() -> None:
    lanes, log, gate = Lanes(), list[str](), asyncio.Event()
    await lanes.submit("a", 5, recorder(log, "slow", gate))
    await lanes.submit("b", 6, recorder(log, "quick"))
    await asyncio.sleep(0.01)
    assert lanes.done_through(7) == 4  # 6 is done, 5 is not
    gate.set()
    await lanes.drain()
    assert lanes.done_through(7) == 7


async def test_a_failing_piece_of_work_is_logged_and_stops_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    lanes, log = Lanes(), list[str]()

    async def boom() -> None:
        raise RuntimeError("bad event")

    await lanes.submit("a", 1, boom)
    await lanes.submit("a", 2, recorder(log, "next"))
    with caplog.at_level(logging.ERROR):
        await lanes.drain()
    assert log == ["start next", "end next"]
    assert "event 1" in caplog.text


async def test_limit_bounds_work_in_flight_and_close_cancels_it() -> None:
    lanes, log, gate = Lanes(limit=2), list[str](), asyncio.Event()
    await lanes.submit("a", 1, recorder(log, "a", gate))
    await lanes.submit("b", 2, recorder(log, "b", gate))
    third = asyncio.create_task(lanes.submit("c", 3, recorder(log, "c")))
    await asyncio.sleep(0.01)
    assert not third.done()  # waits for a free slot
    await lanes.close()
    await asyncio.wait_for(third, 1)  # cancelled work frees its slots
    await lanes.close()
    assert "end a" not in log and "end b" not in log


def test_a_sites_report_and_the_record_share_the_servers_lane() -> None:
    assert lane_of("fedhub.site.hpc.server.alice._") == lane_of("fedhub.server.alice._")
    assert lane_of("fedhub.server.alice._") != lane_of("fedhub.server.bob._")
    assert lane_of("fedhub.site.hpc.agent") == "fedhub.site.hpc.agent"
