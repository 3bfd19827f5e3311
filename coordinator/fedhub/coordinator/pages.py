"""HTML pages under ``/hub/``: login, home, spawn progress, not running, tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from fedhub.coordinator import auth, servers, users
from fedhub.coordinator.api import hub_of
from fedhub.coordinator.auth import COOKIE, Identity
from fedhub.coordinator.db import Token
from fedhub.coordinator.errors import Forbidden, NotFound, TooManyRequests
from fedhub.coordinator.sites import SiteView, free_cpus, list_sites, problem
from fedhub.schemas.events import ServerStatus
from fedhub.schemas.names import server_prefix

router = APIRouter(prefix="/hub")
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def safe_next(target: str | None) -> str:
    """Only same-site paths may be redirected to after login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/hub/home"
    return target


def describe_free(site: SiteView) -> str:
    """Free capacity as a person reads it: cores and memory where the site reports them."""
    if site.status != "online" or not site.capacity:
        return ""
    if trouble := problem(site):
        return trouble
    parts = [f"{free_cpus(site):g} cores"]
    mem = site.capacity.get("mem_available_mb", site.capacity.get("free_memory_mb"))
    if isinstance(mem, int | float):
        parts.append(f"{mem / 1024:.1f} GiB")
    return ", ".join(parts)


def render(request: Request, name: str, ident: Identity | None, status: int = 200,
           **context: Any) -> HTMLResponse:
    hub = hub_of(request)
    xsrf = ident.xsrf(hub.xsrf_secret) if ident and ident.via == "session" else ""
    return templates.TemplateResponse(request, name, {"user": ident, "xsrf": xsrf, **context},
                                      status_code=status)


def _login_redirect(request: Request) -> RedirectResponse:
    nxt = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/hub/login?next={quote(nxt)}", 302)


@router.get("/")
async def root(request: Request) -> Response:
    return RedirectResponse("/hub/home", 302)


@router.get("/login")
async def login_page(request: Request, next: str = "") -> Response:
    if auth.identify(hub_of(request), request) is not None:
        return RedirectResponse(safe_next(next), 302)
    return render(request, "login.html", None, next=safe_next(next), error="", username="")


@router.post("/login")
async def login_submit(request: Request, username: str = Form(""), password: str = Form(""),
                       next: str = Form("")) -> Response:
    hub = hub_of(request)
    remote = request.client.host if request.client else None
    try:
        token = await auth.login(hub, username, password, remote)
    except (Forbidden, TooManyRequests) as exc:
        page = render(request, "login.html", None, status=exc.status, next=safe_next(next),
                      error=exc.message, username=username[:64])
        if isinstance(exc, TooManyRequests):
            page.headers["Retry-After"] = str(exc.retry_after)
        return page
    resp = RedirectResponse(safe_next(next), 302)
    resp.set_cookie(COOKIE, token, max_age=int(hub.settings.cookie_max_age), path="/",
                    httponly=True, samesite="lax",
                    secure=hub.settings.public_url.startswith("https://"))
    return resp


@router.get("/logout")
async def logout(request: Request) -> Response:
    hub = hub_of(request)
    ident = auth.identify(hub, request)
    if ident is not None:
        await auth.logout(hub, ident)
    resp = RedirectResponse("/hub/login", 302)
    resp.delete_cookie(COOKIE, path="/")
    return resp


@router.get("/home")
async def home(request: Request) -> Response:
    hub = hub_of(request)
    ident = auth.identify(hub, request)
    if ident is None:
        return _login_redirect(request)
    down = servers.unreachable_sites(hub)  # once, not per row
    rows = [servers.server_model(hub, r, down) for r in users.servers_of(hub, ident.name)]
    sites = await list_sites(hub)
    free = {s.name: describe_free(s) for s in sites}
    return render(request, "home.html", ident, servers=rows, sites=sites, free=free)


@router.get("/spawn-pending/{user}")
@router.get("/spawn-pending/{user}/{server}")
async def spawn_pending(user: str, request: Request, server: str = "") -> Response:
    hub = hub_of(request)
    ident = auth.identify(hub, request)
    if ident is None:
        return _login_redirect(request)
    name = users.get_user(hub, user).name
    auth.may_act_for(ident, name)
    base = f"/hub/api/users/{quote(name, safe='@')}/"
    url = base + (f"servers/{servers.valid_server(server)}/progress" if server
                  else "server/progress")
    return render(request, "spawn_pending.html", ident, progress_url=url)


@router.get("/user/{user}/")
@router.get("/user/{user}")
@router.get("/user/{user}/{server}")
async def not_running(user: str, request: Request, server: str = "",
                      redirects: int = 0) -> Response:
    """Where the edge proxy sends requests for a server it has no route for."""
    hub = hub_of(request)
    ident = auth.identify(hub, request)
    if ident is None:
        return _login_redirect(request)
    name = users.get_user(hub, user).name
    server = servers.valid_server(server)
    prefix = server_prefix(name, server)
    message, last_site = "", ""
    try:
        row = servers.get_server(hub, name, server)
        status = ServerStatus(row.status)
        if status is ServerStatus.READY and redirects < 2:
            # The proxy had not seen the route yet: send the browser back once or twice.
            return RedirectResponse(f"{prefix}?redirects={redirects + 1}", 302)
        if status.pending:
            return RedirectResponse(f"/hub/spawn-pending/{quote(name, safe='@')}/{server}", 302)
        message, last_site = row.message, row.site
    except NotFound:
        pass
    api_path = f"/users/{quote(name, safe='@')}/" + (f"servers/{server}" if server else "server")
    return render(request, "not_running.html", ident, status=424, url=prefix, message=message,
                  can_start=ident.name == name or ident.admin, sites=await list_sites(hub),
                  api_path=api_path, last_site=last_site,
                  pending_url=f"/hub/spawn-pending/{quote(name, safe='@')}/{server}")


@router.get("/token")
async def token_page(request: Request) -> Response:
    hub = hub_of(request)
    ident = auth.identify(hub, request)
    if ident is None:
        return _login_redirect(request)
    with hub.sessions() as db:
        rows = db.query(Token).filter(Token.user == ident.name, Token.revoked.is_(False)).all()
        tokens = [{"id": t.id, "note": t.note, "created": users.iso(t.created),
                   "expires_at": users.iso(t.expires_at)} for t in rows]
    return render(request, "token.html", ident, tokens=tokens)
