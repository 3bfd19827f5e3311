"""Wiring: the FastAPI application, its background tasks and its bootstrap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from sqlalchemy.orm import sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fedhub.coordinator import api, health, pages, reactor
from fedhub.coordinator.auth import issue_token
from fedhub.coordinator.context import Hub
from fedhub.coordinator.db import UNREACHABLE, make_engine
from fedhub.coordinator.errors import CoordinatorError, Unauthorized, Unavailable
from fedhub.coordinator.projection import ProjectionRunner
from fedhub.coordinator.settings import CoordinatorSettings
from fedhub.coordinator.users import create_user
from fedhub.events.enroll import enroll
from fedhub.events.envelope import derived_id
from fedhub.events.errors import StoreUnavailable
from fedhub.events.jetstream import JetStreamStore
from fedhub.events.signing import KeyRing, SigningKey
from fedhub.events.store import EventStore
from fedhub.events.supervise import keep_running
from fedhub.schemas import subjects
from fedhub.schemas.events import KeyPublished

log = logging.getLogger(__name__)


async def load_keys(hub: Hub) -> None:
    """Enroll every key in the log (the reactor keeps the ring current afterwards)."""
    async for item in hub.store.read("fedhub.key.>"):
        enroll(hub.keyring, item)


async def bootstrap(hub: Hub) -> None:
    """First-start duties: the admin account and the CLI token."""
    s = hub.settings
    with hub.sessions() as db:
        from fedhub.coordinator.db import User

        has_admin = db.get(User, s.admin_user) is not None
    if not has_admin and await hub.store.last(subjects.user(s.admin_user)) is None:
        await create_user(hub, s.admin_user, admin=True, actor=hub.actor,
                          password=s.admin_password or None)
        log.info("created admin user %s", s.admin_user)
    if s.cli_token_file is not None and not s.cli_token_file.exists():
        secret, _ = await issue_token(hub, s.admin_user, "fedhub command line", None, hub.actor)
        s.cli_token_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(s.cli_token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret)


async def open_hub(settings: CoordinatorSettings, store: EventStore | None = None) -> Hub:
    """Connect to the log, load the key, publish it, and build the context."""
    store = store or await JetStreamStore.connect(settings.nats_url, name="fedhub-coordinator",
                                                  replicas=settings.stream_replicas)
    key = SigningKey.load_or_create(settings.data_dir / "keys" / f"coordinator-{settings.name}.pem")
    engine = make_engine(settings.db_url)
    sessions = sessionmaker(engine, expire_on_commit=False)
    keyring = KeyRing()
    keyring.add_signing_key(key, "coordinator", settings.name)
    hub = Hub(settings, store, key, sessions, ProjectionRunner(store, sessions), keyring)
    await hub.emit(subjects.key(key.kid), KeyPublished(kid=key.kid, public_key=key.public_b64,
                   role="coordinator", name=settings.name),
                   event_id=derived_id(key.kid, "key-published"))
    return hub


def create_app(settings: CoordinatorSettings, store: EventStore | None = None) -> FastAPI:
    """The coordinator as an ASGI app; the log is opened in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = await open_hub(settings, store)
        app.state.hub = hub
        await load_keys(hub)
        tasks = [asyncio.create_task(keep_running(n, run), name=n) for n, run in (
            ("projection", hub.projection.run), ("reactor", lambda: reactor.run(hub)),
            ("health", lambda: health.watch(hub)))]
        await hub.projection.wait_for(await hub.store.last_seq(), timeout=120)
        await bootstrap(hub)
        log.info("coordinator %s ready on %s:%s", settings.name, settings.host, settings.port)
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if store is None:
                close = getattr(hub.store, "close", None)
                if close is not None:
                    await close()

    app = FastAPI(title="fedhub coordinator", lifespan=lifespan, docs_url="/hub/api/docs",
                  openapi_url="/hub/api/openapi.json", redoc_url=None)
    app.include_router(api.router)
    app.include_router(pages.router)

    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    install_error_handlers(app)
    return app


# An oversized body is read and dropped up to this size, so the client sees the 413.
DISCARD_MAX = 64 * 1024 * 1024


class BodyLimit:
    """Answers 413 to a request whose body is over ``limit`` bytes, before any handler
    reads it: at once if it declares its length, else (chunked) once that many bytes have
    arrived; a chunked body within the limit is read here and handed on whole. Plain ASGI:
    starlette's ``@app.middleware("http")`` runs every request in a task of its own, which
    cost the coordinator about a tenth of a cheap request's CPU."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            length = _header(scope, b"content-length")
            if length.isdigit() and int(length) > self.limit:
                if _header(scope, b"expect").lower() != b"100-continue":
                    await _discard_body(receive, DISCARD_MAX)  # else the client waits for us
                await self._refuse(scope, receive, send)
                return
            if not length and _header(scope, b"transfer-encoding"):
                try:
                    body = await _read_body(receive, self.limit)
                except _ClientGone:
                    return  # no one to answer; a handler must not see half a body
                if body is None:
                    await self._refuse(scope, receive, send)
                    return
                receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = JSONResponse({"status": 413, "message":
                               f"request body larger than {self.limit} bytes"}, 413)
        await answer(scope, receive, send)


class _ClientGone(Exception):
    """The client disconnected before it had sent the whole body."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body of a request, or None if it passes ``limit`` bytes (the rest then
    read and dropped like a declared oversized body's). Raises _ClientGone if the client
    leaves before the end of a body within the limit."""
    parts: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise _ClientGone
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > limit:
            if message.get("more_body"):  # the rest is dropped, as for a declared size
                await _discard_body(receive, DISCARD_MAX - seen)
            return None
        parts.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` first, then whatever ``receive`` says (the
    disconnect a streaming response waits for)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        return pending.pop() if pending else await receive()

    return replay


def _header(scope: Scope, name: bytes) -> bytes:
    """The first value of header ``name`` (lowercase) of an HTTP request, or b""."""
    return next((v for k, v in scope["headers"] if k == name), b"")


async def _discard_body(receive: Receive, most: int) -> None:
    """Read and drop up to ``most`` bytes of a request's body. Answering before the
    client has sent its body races with it: the server closes a connection with unread
    data, the kernel resets it, and the client may lose the answer with the reset. (A
    client that sent ``Expect: 100-continue`` sends nothing until told to: it is answered
    at once, as reading would tell it to send the body.)"""
    seen = 0
    while seen <= most:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body"):
            return


async def _on_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CoordinatorError)
    if request.url.path.startswith("/hub/api"):
        return JSONResponse({"status": exc.status, "message": exc.message}, exc.status)
    if isinstance(exc, Unauthorized) and exc.status == 401:
        return RedirectResponse(f"/hub/login?next={request.url.path}", 302)
    return pages.render(request, "error.html", None, status=exc.status, title="",
                        message=exc.message)


async def _on_log_down(request: Request, exc: Exception) -> Response:
    # Any handler may find the log unreachable: a 503 saying so, never a bare 500.
    return await _on_error(request, Unavailable(f"the event log is unavailable: {exc}"))


async def _on_db_down(request: Request, exc: Exception) -> Response:
    # The database is restarting or unreachable: a 503 the client may retry. (The driver's
    # message can name hosts and users: it goes to the log, not to the client.)
    log.warning("%s %s: the database is unavailable: %s", request.method, request.url.path,
                getattr(exc, "orig", None) or exc)
    return await _on_error(request, Unavailable("the database is unavailable; try again "
                                                "shortly"))


async def _on_bug(request: Request, exc: Exception) -> Response:
    # A bug: still tell the client what failed, never a bare 500, but not the exception's
    # text (a driver's message may quote SQL, paths or values). Starlette re-raises it
    # afterwards, so the server logs the traceback.
    if request.url.path.startswith("/hub/api"):
        return JSONResponse({"status": 500, "message": f"{request.method} {request.url.path} "
                             f"failed: internal error ({type(exc).__name__}); the hub's log "
                             "has the details"}, 500)
    return pages.render(request, "error.html", None, status=500, title="",
                        message=f"Internal error ({type(exc).__name__}); the hub's log has "
                        "the details.")


def install_error_handlers(app: FastAPI) -> None:
    """Answer CoordinatorError with its status (JSON under /hub/api, a page elsewhere), an
    unreachable event log or database with 503, and any other exception (a bug) with a 500
    saying what failed, whichever handler raised it."""
    app.add_exception_handler(CoordinatorError, _on_error)
    app.add_exception_handler(StoreUnavailable, _on_log_down)
    for unreachable in UNREACHABLE:
        app.add_exception_handler(unreachable, _on_db_down)
    app.add_exception_handler(Exception, _on_bug)
