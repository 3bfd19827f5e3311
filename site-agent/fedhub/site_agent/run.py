"""Running an agent from settings until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

from fedhub.events.jetstream import JetStreamStore
from fedhub.events.signing import SigningKey
from fedhub.schemas.bundle import Bundle
from fedhub.site_agent.agent import SiteAgent
from fedhub.site_agent.backends.registry import make_backend
from fedhub.site_agent.settings import SiteAgentSettings

log = logging.getLogger(__name__)


def with_bundle(settings: SiteAgentSettings) -> tuple[SiteAgentSettings, SigningKey | None, str]:
    """Apply a credentials bundle: its site, backend, NATS user and key win over settings.

    Returns (settings, key or None to use the key file, NATS inbox prefix). Raises
    BundleError for an unreadable bundle.
    """
    if settings.credentials is None:
        return settings, None, ""
    bundle = Bundle.read(settings.credentials)
    merged = settings.model_copy(update={
        "site": bundle.site, "backend": bundle.backend,
        "nats_url": bundle.nats_url_with_credentials(), "tunnel": bundle.tunnel})
    if not settings.agent_id or settings.agent_id.endswith(f"-{settings.site}"):
        merged.agent_id = settings.agent_id.removesuffix(f"-{settings.site}") + f"-{bundle.site}"
    key = SigningKey.from_pem(bundle.agent_key_pem.get_secret_value())
    return merged, key, bundle.inbox_prefix


async def run_agent(settings: SiteAgentSettings, stop: asyncio.Event | None = None) -> None:
    """Connect to NATS, run the agent until ``stop`` is set (or SIGINT/SIGTERM), then shut
    down cleanly. Raises StoreUnavailable if NATS cannot be reached."""
    settings, key, inbox = with_bundle(settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    backend = make_backend(settings)
    # a site credential (its own inbox prefix) reads through filter-authorized consumers
    store = await JetStreamStore.connect(settings.nats_url, name=f"site-agent-{settings.site}",
                                         create_streams=key is None, inbox_prefix=inbox)
    agent = SiteAgent(settings, store, backend, key=key)
    try:
        await agent.start()
        await stop.wait()
        log.info("shutting down")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        await agent.close()
        await store.close()
