"""Fixtures shared by the coordinator's unit tests: hubs on a MemoryStore with their
projection running, and clients of their HTTP API (errors answered as a server would)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fedhub.coordinator import api, pages
from fedhub.coordinator.app import install_error_handlers, open_hub
from fedhub.coordinator.auth import issue_token
from fedhub.coordinator.context import Hub
from fedhub.coordinator.settings import CoordinatorSettings
from fedhub.events.memory import MemoryStore
from fedhub.events.store import EventStore

MakeHub = Callable[..., Awaitable[Hub]]


@pytest.fixture
async def make_hub(tmp_path: Path) -> AsyncIterator[MakeHub]:
    """``await make_hub(store=None, **settings)``: a hub (in ``tmp_path`` unless
    ``data_dir`` says otherwise) whose projection runs until the test ends."""
    running: list[asyncio.Task[None]] = []

    async def make(store: EventStore | None = None, **settings: Any) -> Hub:
        settings.setdefault("data_dir", tmp_path)
        hub = await open_hub(CoordinatorSettings(**settings), store or MemoryStore())
        running.append(asyncio.create_task(hub.projection.run()))
        return hub

    yield make
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def app_of(hub: Hub) -> FastAPI:
    """The API and pages of ``hub`` with the app's error handlers."""
    app = FastAPI()
    app.include_router(api.router)
    app.include_router(pages.router)
    install_error_handlers(app)
    app.state.hub = hub
    return app


def client_of(hub: Hub, token: str | None = None) -> httpx.AsyncClient:
    """A client of ``hub`` (with ``token`` in its Authorization header if given); app
    exceptions come back as the 500s a server would send."""
    transport = httpx.ASGITransport(app=app_of(hub), raise_app_exceptions=False)
    headers = {"Authorization": f"token {token}"} if token else {}
    return httpx.AsyncClient(transport=transport, base_url="http://hub", headers=headers)


async def admin_client(hub: Hub, name: str = "root") -> httpx.AsyncClient:
    """A client with a fresh API token of the (existing) admin ``name``."""
    secret, _ = await issue_token(hub, name, "test", None, "test")
    return client_of(hub, secret)
