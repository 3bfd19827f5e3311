"""The edge proxy: authenticate, authorize and forward each request by the route table.

Per request the proxy does dictionary lookups (route, cached token claims, cached
assertion, users and revocations) and the upstream I/O, nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from urllib.parse import quote

from aiohttp import web

from fedhub.edge_proxy import pages
from fedhub.edge_proxy.assertion import AssertionCache
from fedhub.edge_proxy.auth import Authenticator, Identity, authorization_token, session_cookie
from fedhub.edge_proxy.errors import UpstreamError, UpstreamUnreachable
from fedhub.edge_proxy.forward import Forwarder, upstream_url
from fedhub.edge_proxy.headers import upstream_headers
from fedhub.edge_proxy.routes import Route
from fedhub.edge_proxy.settings import EdgeProxySettings
from fedhub.edge_proxy.state import ProxyState
from fedhub.edge_proxy.sync import follow, publish_key, rebuild
from fedhub.edge_proxy.tunnel import TUNNEL_BASE, Tunnels, TunnelUnavailable
from fedhub.edge_proxy.tunnel_target import is_tunnel
from fedhub.events.errors import InvalidToken
from fedhub.events.signing import SigningKey
from fedhub.events.store import EventStore
from fedhub.schemas.names import url_segment

log = logging.getLogger(__name__)
HEALTH_PATH = "/_fedhub/health"
REDIRECTS_COOKIE = "fedhub-redirects"
MAX_REDIRECTS = 3
ROUTE_WAIT = 0.5  # seconds per redirect round to wait for a route the hub already knows


class EdgeProxy:
    """One proxy instance; ``start`` listens at once (503 until the log is rebuilt)."""

    def __init__(
        self, settings: EdgeProxySettings, store: EventStore, key: SigningKey | None = None
    ) -> None:
        self.settings = settings
        self.store = store
        self.key = key if key is not None else SigningKey.load_or_create(settings.key_path)
        self.state = ProxyState()
        self.ready = False
        self._auth = Authenticator(self.state)
        self._assertions = AssertionCache(self.key)
        self._forwarder = Forwarder(settings.upstream_timeout)
        self.tunnels = Tunnels(settings, self.state, self.key)
        self._hub = settings.hub_url
        self._admin_access = settings.admin_access
        self._started = time.monotonic()
        self._runner: web.ServerRunner | None = None
        self._follower: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, publish our key, rebuild from the log, then follow it in the background.

        Raises StoreUnavailable if the log cannot be reached, OSError if the port is taken.
        """
        await self._forwarder.start()
        server = web.Server(self.handle, access_log=log if self.settings.access_log else None)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, backlog=1024)
        await site.start()
        await publish_key(self.store, self.key, self.settings.name)
        start = await rebuild(self.store, self.state)
        self._follower = asyncio.create_task(
            follow(self.store, self.state, start, on_change=self._notify), name="edge-follow"
        )
        await self.tunnels.start(self.store)
        self.ready = True

    async def stop(self) -> None:
        """Stop following, close client connections and the listener (idempotent)."""
        self.ready = False
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.tunnels.stop()
        await self._forwarder.close()

    @property
    def url(self) -> str:
        """Where clients reach this proxy."""
        return f"http://{self.settings.host}:{self.settings.port}"

    def _notify(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        self.tunnels.revalidate()  # a revoked agent key ends its tunnel at once

    # -- requests --------------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request (the aiohttp low-level handler)."""
        path = request.path
        if path == HEALTH_PATH:
            return self._health()
        if not self.ready:
            return pages.error(request, 503, "edge proxy starting")
        if path.startswith("/user/") and len(path) > 6:
            return await self._user(request, path)
        if path == "/":
            return pages.redirect("/hub/")
        return await self._forward(request, self._hub, None, None, "the hub")

    def _health(self) -> web.Response:
        ready = self.ready and self._follower is not None and not self._follower.done()
        body = {
            "ready": ready,
            "routes": len(self.state.routes),
            "uptime": round(time.monotonic() - self._started, 3),
        }
        return pages.json_response(200 if ready else 503, body)

    async def _user(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        route = self.state.routes.match(path)
        found = self._identify(request)
        if found is None:
            if pages.wants_html(request):
                return pages.redirect(f"/hub/login?next={quote(request.raw_path, safe='')}")
            return pages.error(request, 401, "authentication required")
        identity, source = found
        owner = route.user if route is not None else path[6:].split("/", 1)[0]
        if identity.user != owner and not (identity.admin and self._admin_access):
            return pages.error(
                request, 403, f"you are logged in as {identity.user}: this server belongs to"
                f" {owner} and only {owner} may use it")
        if route is None:
            waited = await self._no_route(request, path, owner)
            if not isinstance(waited, Route):
                return waited
            route = waited
        assertion = self._assertions.get(identity.user, route.url_prefix, identity.admin,
                                         token_auth=source != "cookie")
        return await self._forward(request, route.target, assertion, source, _label(route),
                                   route.site)

    def _identify(self, request: web.BaseRequest) -> tuple[Identity, str] | None:
        """The identity and where it came from ("header", "query", "cookie"), or None."""
        headers = request.headers
        candidates: list[tuple[str, str, str]] = []
        header = headers.get("Authorization")
        if header and (token := authorization_token(header)):
            candidates.append((token, "api", "header"))
        if "token=" in request.query_string and (token := request.query.get("token", "")):
            candidates.append((token, "api", "query"))
        cookies = headers.get("Cookie")
        if cookies and (token := session_cookie(cookies)):
            candidates.append((token, "session", "cookie"))
        for token, typ, source in candidates:
            try:
                return self._auth.identify(token, typ), source
            except InvalidToken as exc:
                log.debug("refusing %s %s: %s", typ, source, exc)
        return None

    async def _no_route(
        self, request: web.BaseRequest, path: str, owner: str
    ) -> Route | web.StreamResponse:
        """The route once it appears, or the answer for a server that is not running.

        A browser goes to the hub's page for the server. If the hub sends it straight
        back (it already saw the route, we did not yet), a counter cookie breaks the loop:
        wait a little for the route, and give up with a page after a few rounds.
        """
        # The coordinator counts its own rounds in ?redirects=N when it sends a browser back.
        rounds = max(_int(request.cookies.get(REDIRECTS_COOKIE)),
                     _int(request.query.get("redirects")))
        if rounds:
            route = await self._wait_route(path, wait=ROUTE_WAIT * min(rounds, MAX_REDIRECTS))
            if route is not None:
                return route
        rest = path[6:].split("/", 2)
        server = rest[1] if len(rest) > 1 and rest[1] in self.state.servers.get(owner, ()) else ""
        if not pages.wants_html(request):
            return pages.error(request, 503, f"server not running: {_who(owner, server)}")
        if rounds >= MAX_REDIRECTS:
            return pages.error(
                request, 503, f"{_who(owner, server)} is not running, or its route has not"
                " reached this proxy yet. Reload in a moment, or start it from the hub.")
        user_path = f"/user/{url_segment(owner)}/"
        cookie = (f"{REDIRECTS_COOKIE}={rounds + 1}; Path={user_path}; Max-Age=30; HttpOnly;"
                  " SameSite=Lax")
        return pages.redirect(f"/hub{user_path}{server}", cookie=cookie)

    async def _wait_route(self, path: str, wait: float) -> Route | None:
        deadline = time.monotonic() + wait
        while (route := self.state.routes.match(path)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return route

    def _unreachable(self, label: str, site: str) -> str:
        if site and site in self.state.unreachable_sites:
            return (f"the site {site} is unreachable: {label} has not been stopped and will "
                    "answer again when the site reconnects")
        return f"{label} is not reachable"

    async def _forward(
        self, request: web.BaseRequest, target: str, assertion: str | None,
        source: str | None, label: str, site: str = "",
    ) -> web.StreamResponse:
        forwarder = self._forwarder
        if is_tunnel(target):
            try:
                forwarder = await self.tunnels.forwarder(target)
            except TunnelUnavailable as exc:
                log.info("%s: %s", label, exc)
                return pages.error(request, 503, str(exc))
            target = TUNNEL_BASE  # the bridge's socket decides where it goes
        url = upstream_url(target, request)
        if source == "query":  # the fedhub token must not reach the user's server
            url = url.with_query([(k, v) for k, v in url.query.items() if k != "token"])
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        headers = upstream_headers(
            request, assertion=assertion, strip_authorization=source == "header",
            websocket=websocket,
        )
        try:
            if websocket:
                return await forwarder.websocket(request, url, headers)
            return await forwarder.http(request, url, headers)
        except UpstreamUnreachable as exc:
            log.info("%s unreachable: %s", label, exc)
            return pages.error(request, exc.status, self._unreachable(label, site))
        except UpstreamError as exc:
            log.info("%s failed: %s", label, exc)
            if site in self.state.unreachable_sites:
                return pages.error(request, 503, self._unreachable(label, site))
            what = "did not answer in time" if exc.status == 504 else "answered badly"
            return pages.error(request, exc.status, f"{label} {what}")


def _who(user: str, server: str) -> str:
    return f"the server {server!r} of {user}" if server else f"the server of {user}"


def _label(route: Route) -> str:
    where = f" at site {route.site}" if route.site else ""
    return f"{_who(route.user, route.server)}{where}"


def _int(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0
