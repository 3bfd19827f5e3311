"""Readiness: a server that comes up at once is seen at once."""

from __future__ import annotations

import time

import pytest
from aiohttp import web

from fedhub.site_agent.backends.readiness import wait_until_ready
from fedhub.site_agent.errors import BackendError
from tests.support.services import free_port


async def test_a_server_up_right_after_the_first_check_is_seen_quickly() -> None:
    port = free_port()
    app = web.Application()
    async def api(_request: web.Request) -> web.Response:
        return web.json_response({"version": "x"})

    app.router.add_get("/api", api)
    runner = web.AppRunner(app)
    await runner.setup()
    checks: list[float] = []

    async def still_running() -> None:
        checks.append(time.monotonic())
        if len(checks) == 2:  # the first try found nothing; now the server is up
            await web.TCPSite(runner, "127.0.0.1", port).start()

    try:
        await wait_until_ready(f"http://127.0.0.1:{port}/api", 10, still_running)
    finally:
        await runner.cleanup()
    assert len(checks) == 2
    # A fixed quarter-second poll used to make this the bulk of a trivial spawn.
    assert checks[1] - checks[0] < 0.2


async def test_a_silent_server_times_out_with_a_readable_reason() -> None:
    async def still_running() -> None:
        return None

    with pytest.raises(BackendError, match="did not answer"):
        await wait_until_ready(f"http://127.0.0.1:{free_port()}/api", 0.3, still_running)
