"""The edge proxy: authenticate, authorize and forward each request by the route table.

Per request the proxy does dictionary lookups (route, cached token claims, cached
assertion, users and revocations) and the upstream I/O, nothing else. The decisions live
here and serve both paths: the fast path (front.py: ``plan``, ``failure``) and aiohttp's
server, which answers everything the fast path hands over (``handle``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from aiohttp import web
from yarl import URL

from fedhub.edge_proxy import client_errors, pages
from fedhub.edge_proxy.address import Address, tcp_address
from fedhub.edge_proxy.assertion import AssertionCache
from fedhub.edge_proxy.auth import Authenticator, Identity, authorization_token, session_cookie
from fedhub.edge_proxy.errors import UpstreamError, UpstreamUnreachable
from fedhub.edge_proxy.forward import Forwarder, upstream_url
from fedhub.edge_proxy.front import Front
from fedhub.edge_proxy.headers import upstream_headers
from fedhub.edge_proxy.http1 import RequestHead
from fedhub.edge_proxy.plan import Plan, upstream_target, who
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


@dataclass(slots=True)
class Access:
    """Who asks (None: nobody we know) for the server of ``owner``, and its route if any."""

    identity: Identity | None
    source: str  # where the credential came from: "header", "query" or "cookie"
    owner: str
    route: Route | None
    allowed: bool
    refused: str = ""  # why a credential that was sent did not identify anyone


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
        self._access_log = settings.access_log
        self._started = time.monotonic()
        self._hub_plan = Plan(self._hub, tcp_address(self._hub), None, None)
        self._runner: web.ServerRunner | None = None
        self._front: Front | None = None
        self._follower: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen, publish our key, rebuild from the log, then follow it in the background.

        Raises StoreUnavailable if the log cannot be reached, OSError if the port is taken.
        """
        await self._forwarder.start()
        server = web.Server(self.handle, access_log=log if self.settings.access_log else None,
                            logger=client_errors.LOGGER)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        self._front = Front(self, server, self.settings.upstream_timeout)
        await self._front.start(self.settings.host, self.settings.port)
        await publish_key(self.store, self.key, self.settings.name)
        start = await rebuild(self.store, self.state)
        self._follower = asyncio.create_task(
            follow(self.store, self.state, start, on_change=self._notify), name="edge-follow"
        )
        await self.tunnels.start(self.store)
        if self._admin_access:
            log.warning("admin_access is on: admins reach every user's server, and as every "
                        "server shares this proxy's origin, a page one of them opens acts "
                        "with the admin's session")
        self.ready = True

    async def stop(self) -> None:
        """Stop following, close client connections and the listener (idempotent)."""
        self.ready = False
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None
        if self._front is not None:
            await self._front.stop()
            self._front = None
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
        if not path.startswith("/"):  # "*" or host:port, after a hand-over to aiohttp
            return pages.error(request, 400, "malformed request: the target must be a path "
                               "or a URL")
        if not self.ready:
            return pages.error(request, 503, "edge proxy starting")
        if path.startswith("/user/") and len(path) > 6:
            return await self._user(request, path)
        if path == "/":
            return pages.redirect("/hub/")
        return await self._forward(request, self._hub_plan)

    def _health(self) -> web.Response:
        ready = self.ready and self._follower is not None and not self._follower.done()
        body = {
            "ready": ready,
            "routes": len(self.state.routes),
            # Routes rebuilt but not yet signature-checked (checked on first use meanwhile).
            "unchecked": self.state.routes.unchecked,
            "uptime": round(time.monotonic() - self._started, 3),
        }
        return pages.json_response(200 if ready else 503, body)

    async def _user(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        headers = request.headers
        access = self._access(path, headers.get("Authorization"), request.query_string,
                              headers.get("Cookie"))
        identity, owner = access.identity, access.owner
        if identity is None:
            if pages.wants_html(request):
                return pages.redirect(f"/hub/login?next={quote(request.raw_path, safe='')}")
            why = (f"not accepted ({access.refused}); log in again or send a valid"
                   if access.refused else "authentication required: log in or send")
            return pages.error(request, 401, f"{why} 'Authorization: token ...'")
        if not access.allowed:
            return pages.error(
                request, 403, f"you are logged in as {identity.user}: this server belongs to"
                f" {owner} and only {owner} may use it")
        route = access.route
        if route is None:
            waited = await self._no_route(request, path, owner)
            if not isinstance(waited, Route):
                return waited
            route = waited
        return await self._forward(request, self._plan(route, identity, access.source))

    # -- decisions (both paths) --------------------------------------------------------

    def plan(self, head: RequestHead, headers: dict[str, str]) -> Plan | None:
        """Where the fast path forwards this request; None when aiohttp must answer it.

        Only requests that are simply forwarded take the fast path: a user's own server
        that has a route, or the hub (over plain HTTP). Health checks, refusals, missing
        routes and redirects are aiohttp's.
        """
        raw_path, _, query = head.target.partition("?")
        if raw_path == HEALTH_PATH or not self.ready or "#" in query or self._access_log:
            return None  # (aiohttp writes the access log: with it on, it answers all)
        path = _decoded(raw_path) if "%" in raw_path else raw_path
        if path.startswith("/user/") and len(path) > 6:
            access = self._access(path, headers.get("authorization"), query,
                                  headers.get("cookie"))
            route = access.route
            if route is None or access.identity is None or not access.allowed:
                return None
            if route.address is None and not is_tunnel(route.target):
                return None  # https, or a target with a path: aiohttp forwards those
            return self._plan(route, access.identity, access.source)
        if path == "/" or self._hub_plan.address is None:
            return None
        return self._hub_plan

    def _access(self, path: str, authorization: str | None, query_string: str,
                cookie: str | None) -> Access:
        route = self.state.routes.match(path)
        owner = route.user if route is not None else path[6:].split("/", 1)[0]
        found = self._identify(authorization, query_string, cookie)
        if isinstance(found, str):
            return Access(None, "", owner, route, False, found)
        identity, source = found
        allowed = identity.user == owner or (identity.admin and self._admin_access)
        return Access(identity, source, owner, route, allowed)

    def _plan(self, route: Route, identity: Identity, source: str) -> Plan:
        assertion = self._assertions.get(identity.user, route.url_prefix, identity.admin,
                                         token_auth=source != "cookie")
        return Plan(route.target, route.address, assertion, source, route)

    def _identify(self, authorization: str | None, query_string: str, cookie: str | None
                  ) -> tuple[Identity, str] | str:
        """The identity and where it came from ("header", "query", "cookie"); else why
        the credentials sent identify nobody ("" when none were sent)."""
        candidates: list[tuple[str, str, str]] = []
        if authorization and (token := authorization_token(authorization)):
            candidates.append((token, "api", "header"))
        if "token=" in query_string and (token := _query_token(query_string)):
            candidates.append((token, "api", "query"))
        if cookie and (token := session_cookie(cookie)):
            candidates.append((token, "session", "cookie"))
        refused = ""
        for token, typ, source in candidates:
            try:
                return self._auth.identify(token, typ), source
            except InvalidToken as exc:
                log.debug("refusing %s %s: %s", typ, source, exc)
                refused = refused or f"{'session' if typ == 'session' else 'API token'}: {exc}"
        return refused

    def bridge_address(self, target: str) -> Address | None:
        """The bridge socket of a ``tunnel://`` target whose bridge is up and tunnel live;
        None otherwise (``open_bridge`` then starts it, or says why it cannot)."""
        bridge = self.tunnels.ready(target)
        return bridge.address if bridge is not None else None

    async def open_bridge(self, target: str) -> Address:
        """The bridge socket of a ``tunnel://`` target, starting the bridge if need be.

        Raises TunnelUnavailable when the site has no live tunnel or no such forward.
        """
        try:
            bridge = await self.tunnels.bridge(target)
        except ValueError as exc:
            raise TunnelUnavailable(f"bad tunnel target: {exc}") from exc
        return bridge.address

    def failure(self, exc: UpstreamError, plan: Plan) -> tuple[int, str]:
        """The status and message a client gets when forwarding by ``plan`` failed."""
        if isinstance(exc, TunnelUnavailable):
            return 503, str(exc)
        if isinstance(exc, UpstreamUnreachable):
            return exc.status, self._unreachable(plan.label, plan.site)
        if plan.site in self.state.unreachable_sites:
            return 503, self._unreachable(plan.label, plan.site)
        what = "did not answer in time" if exc.status == 504 else "answered badly"
        return exc.status, f"{plan.label} {what}"

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
            return pages.error(request, 503, f"server not running: {who(owner, server)}")
        if rounds >= MAX_REDIRECTS:
            return pages.error(
                request, 503, f"{who(owner, server)} is not running, or its route has not"
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

    async def _forward(self, request: web.BaseRequest, plan: Plan) -> web.StreamResponse:
        forwarder = self._forwarder
        target, source = plan.target, plan.source
        if is_tunnel(target):
            try:
                forwarder = await self.tunnels.forwarder(target)
            except TunnelUnavailable as exc:
                log.info("%s: %s", plan.label, exc)
                return pages.error(request, 503, str(exc))
            target = TUNNEL_BASE  # the bridge's socket decides where it goes
        url = upstream_url(target, request)
        if url.raw_query_string:
            url = URL(target + upstream_target(url.raw_path_qs, plan), encoded=True)
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        headers = upstream_headers(
            request, assertion=plan.assertion, strip_authorization=source == "header",
            websocket=websocket,
        )
        try:
            if websocket:
                return await forwarder.websocket(request, url, headers)
            return await forwarder.http(request, url, headers)
        except UpstreamError as exc:
            log.info("%s: %s", plan.label, exc)
            status, message = self.failure(exc, plan)
            return pages.error(request, status, message)


def _int(value: str | None) -> int:
    try:
        return max(0, int(value)) if value else 0
    except ValueError:
        return 0


def _query_token(query_string: str) -> str | None:
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        if name == "token":
            return value or None
    return None


@functools.lru_cache(maxsize=4096)
def _decoded(raw_path: str) -> str:
    # The same decoding aiohttp applies to request.path, so both paths match alike.
    return URL.build(path=raw_path, encoded=True).path
