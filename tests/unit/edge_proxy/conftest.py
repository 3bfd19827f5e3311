"""The fast-path front end's tests also run on uvloop, the loop the proxy uses in production.

uvloop's transports are not asyncio's classes and differ in flow control and in
``set_protocol``, which the hand-over to aiohttp relies on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
        "asyncio": asyncio.new_event_loop}
    if item.nodeid.split("::")[0].endswith("test_front.py"):
        factories["uvloop"] = uvloop.new_event_loop
    return factories
