"""Running an agent from settings until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from fedhub.events.jetstream import JetStreamStore
from fedhub.site_agent.agent import SiteAgent
from fedhub.site_agent.backends.registry import make_backend
from fedhub.site_agent.settings import SiteAgentSettings

log = logging.getLogger(__name__)


async def run_agent(settings: SiteAgentSettings, stop: asyncio.Event | None = None) -> None:
    """Connect to NATS, run the agent until ``stop`` is set (or SIGINT/SIGTERM), then shut
    down cleanly. Raises StoreUnavailable if NATS cannot be reached."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    backend = make_backend(settings)
    store = await JetStreamStore.connect(settings.nats_url, name=f"site-agent-{settings.site}")
    agent = SiteAgent(settings, store, backend)
    try:
        await agent.start()
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await agent.close()
        await store.close()
