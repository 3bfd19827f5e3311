"""``/hub/api``: JupyterHub's REST API where the two overlap (paths, codes, models)."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from fedhub.coordinator import auth, servers, siteadmin, spawning, users, waiting
from fedhub.coordinator.auth import Identity
from fedhub.coordinator.context import Hub
from fedhub.coordinator.db import Server, Token, User
from fedhub.coordinator.errors import (
    BadRequest,
    Conflict,
    NotFound,
)
from fedhub.coordinator.sites import list_sites
from fedhub.schemas import subjects
from fedhub.schemas.events import ServerStatus, TokenRevoked

router = APIRouter(prefix="/hub/api")
PAGINATION = "application/jupyterhub-pagination+json"
PAGE_DEFAULT, PAGE_MAX = 50, 200  # JupyterHub's api_page_default_limit, api_page_max_limit
VERSION = "0.1.0"
STOP_PATIENCE = 10.0  # seconds a DELETE waits for the stop before answering 202
_V = TypeVar("_V")


def hub_of(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


async def body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"request body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def optional(data: dict[str, Any], key: str, kind: type[_V], what: str) -> _V | None:
    """``data[key]`` if it is a ``kind``, None if absent; BadRequest saying it must be
    ``what`` otherwise (the string "false" must not make anyone an admin)."""
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise BadRequest(f"{key} must be {what}")
    return value


def flag(data: dict[str, Any], key: str) -> bool | None:
    """``data[key]`` if it is a JSON boolean, None if absent; BadRequest otherwise."""
    return optional(data, key, bool, "true or false")


def text(data: dict[str, Any], key: str) -> str | None:
    """``data[key]`` if it is a string, None if absent; BadRequest otherwise."""
    return optional(data, key, str, "a string")


def acting_for(request: Request, name: str) -> tuple[Hub, Identity, User]:
    """The hub, the caller, and user ``name``, whom the caller may act for (the user
    themself or an admin). Raises Unauthorized, Forbidden or NotFound."""
    hub = hub_of(request)
    ident = auth.require(hub, request)
    user = users.get_user(hub, name)
    auth.may_act_for(ident, user.name)
    return hub, ident, user


def user_model(hub: Hub, user: User, rows: list[Server] | None = None,
               down: set[str] | None = None) -> dict[str, Any]:
    """JupyterHub's user model; ``rows`` (the user's servers) and ``down`` (unreachable
    sites) are looked up when not given: a list passes them in, queried once per page."""
    rows = users.servers_of(hub, user.name) if rows is None else rows
    down = servers.unreachable_sites(hub) if down is None else down
    models = {r.name: servers.server_model(hub, r, down) for r in rows
              if ServerStatus(r.status).active}
    default = models.get("")
    return {
        "kind": "user", "name": user.name, "admin": user.admin, "groups": [], "roles": [
            "admin" if user.admin else "user"],
        "server": default["url"] if default and default["ready"] else None,
        "pending": default["pending"] if default else None,
        "created": users.iso(user.created), "last_activity": users.iso(user.last_activity),
        "servers": models,
    }


def token_model(t: Token) -> dict[str, Any]:
    return {"id": t.id, "kind": "api_token", "user": t.user, "note": t.note,
            "created": users.iso(t.created), "expires_at": users.iso(t.expires_at)}


def _actor(ident: Identity) -> str:
    return f"user:{ident.name}"

# The longest expiry a token may ask for (NaN, infinity and 1e12 would not fit a date).
MAX_TOKEN_SECONDS = 10 * 366 * 24 * 3600


@router.get("/")
async def version() -> dict[str, str]:
    return {"version": VERSION}


@router.get("/health")
async def health(request: Request) -> JSONResponse:
    """200 while the coordinator can keep its tables current; 503 while its projection
    cannot reach the database (the driver's error, which may name hosts, is only logged)."""
    hub = hub_of(request)
    stall = hub.projection.stall
    if stall is None:
        return JSONResponse({"status": "ok", "applied": hub.projection.applied})
    return JSONResponse(
        {"status": "unavailable", "applied": hub.projection.applied,
         "message": f"the database cannot be reached: events from {stall.first} have waited "
                    f"{stall.seconds():.0f} s to be applied ({stall.tries} tries)"},
        status_code=503)


@router.get("/user")
async def whoami(request: Request) -> dict[str, Any]:
    hub = hub_of(request)
    ident = auth.require(hub, request)
    model = user_model(hub, users.get_user(hub, ident.name))
    model["scopes"] = ["admin:users", "admin:servers"] if ident.admin else ["self"]
    model["token_id"] = ident.token_id or None
    model["session_id"] = ident.session_id or None
    return model


@router.get("/users")
async def list_all(request: Request, offset: int = 0, limit: int | None = None) -> Response:
    """Users, a page at a time, as JupyterHub pages them: ``limit`` defaults to 50 for
    clients that ask for pages and to the maximum (200) for the others, larger limits are
    cut to the maximum, and ``next`` carries the next page's URL."""
    hub = hub_of(request)
    ident = auth.require(hub, request)
    paginated = PAGINATION in request.headers.get("accept", "")
    if offset < 0:
        raise BadRequest("offset must be >= 0")
    limit = max(1, min(PAGE_MAX, limit if limit is not None else
                       PAGE_DEFAULT if paginated else PAGE_MAX))
    if ident.admin:
        rows, total = users.list_users(hub, offset, limit)
    else:
        rows, total = [users.get_user(hub, ident.name)], 1
    owned = users.servers_of_users(hub, [u.name for u in rows])
    down = servers.unreachable_sites(hub)
    items = [user_model(hub, u, owned.get(u.name, []), down) for u in rows]
    if paginated:
        nxt = None
        if offset + limit < total:
            url = request.url.include_query_params(offset=offset + limit, limit=limit)
            nxt = {"offset": offset + limit, "limit": limit, "url": str(url)}
        return JSONResponse({"items": items, "_pagination": {
            "offset": offset, "limit": limit, "total": total, "next": nxt}})
    return JSONResponse(items)


@router.post("/users", status_code=201)
async def create_many(request: Request) -> Response:
    hub = hub_of(request)
    ident = auth.require(hub, request)
    auth.require_admin(ident)
    data = await body(request)
    names = data.get("usernames")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BadRequest("body must be {\"usernames\": [...], \"admin\": bool}")
    admin = bool(flag(data, "admin"))
    created = []
    for name in names:
        try:
            created.append(await users.create_user(hub, name, admin=admin,
                                                   actor=_actor(ident)))
        except Conflict:
            continue
    if not created and names:
        return JSONResponse({"status": 409, "message": "all users already exist"}, 409)
    return JSONResponse([user_model(hub, u) for u in created], 201)


@router.get("/users/{name}")
async def get_one(name: str, request: Request) -> dict[str, Any]:
    hub, _, user = acting_for(request, name)
    return user_model(hub, user)


@router.post("/users/{name}", status_code=201)
async def create_one(name: str, request: Request) -> Response:
    hub = hub_of(request)
    ident = auth.require(hub, request)
    auth.require_admin(ident)
    data = await body(request)
    user = await users.create_user(hub, name, admin=bool(flag(data, "admin")),
                                   actor=_actor(ident), password=text(data, "password"))
    return JSONResponse(user_model(hub, user), 201)


@router.patch("/users/{name}")
async def update_one(name: str, request: Request) -> dict[str, Any]:
    hub = hub_of(request)
    ident = auth.require(hub, request)
    data = await body(request)
    if "admin" in data:
        auth.require_admin(ident)
    else:
        auth.may_act_for(ident, users.valid_name(name))
    user = await users.update_user(hub, name, admin=flag(data, "admin"),
                                   password=text(data, "password"), actor=_actor(ident))
    return user_model(hub, user)


@router.delete("/users/{name}", status_code=204)
async def delete_one(name: str, request: Request) -> Response:
    hub = hub_of(request)
    ident = auth.require(hub, request)
    auth.require_admin(ident)
    user = users.get_user(hub, name)
    # Deleted first, so no new spawn can slip in; then every server from the log, with
    # spawns still in flight (the reactor stops any placed after this).
    await users.delete_user(hub, user.name, actor=_actor(ident))
    await servers.stop_all(hub, user.name, _actor(ident))
    return Response(status_code=204)


@router.post("/users/{name}/server")
@router.post("/users/{name}/servers/{server}")
async def start_server(name: str, request: Request, server: str = "",
                       wait: float | None = None) -> Response:
    """Start a server: 201 when ready within the wait (``slow_spawn_timeout`` unless
    ``?wait=`` seconds is given; pages use 0 and follow the progress stream), else 202.
    A failed spawn answers 500 with the reason; an unreachable log 503."""
    hub, ident, user = acting_for(request, name)
    data = await body(request)
    # JupyterHub 6 sends {"user_options": {...}}; older clients send the options as the body.
    options = data.get("user_options") if "user_options" in data else dict(data)
    if not isinstance(options, dict):
        raise BadRequest("user_options must be an object")
    site = data.get("site", options.pop("site", None))
    if site is not None and not isinstance(site, str):
        raise BadRequest("site must be a string")
    patience = hub.settings.slow_spawn_timeout if wait is None else min(max(wait, 0.0), 300.0)
    server = servers.valid_server(server)
    return await spawning.spawn(hub, user.name, server, site, options, _actor(ident), patience)


@router.delete("/users/{name}/server")
@router.delete("/users/{name}/servers/{server}")
async def stop_server(name: str, request: Request, server: str = "") -> Response:
    """Stop a server: 204 once it is stopped (or if it was not running), 202 if it is
    still stopping after ``STOP_PATIENCE`` seconds; an unreachable log is a 503."""
    hub, ident, user = acting_for(request, name)
    server = servers.valid_server(server)
    # Watched before the stop is requested, so its end cannot be missed; older events may
    # still arrive while the projection catches up, hence ``after``.
    with hub.projection.watch(subjects.server(user.name, server)) as events:
        after = await hub.store.last_seq()
        if not await servers.stop(hub, user.name, server, _actor(ident)):
            return Response(status_code=204)
        ended = await waiting.settled(events, after, waiting.STOP_ENDED, STOP_PATIENCE)
    return Response(status_code=202 if ended is None else 204)


@router.get("/users/{name}/servers/{server}")
async def get_server(name: str, server: str, request: Request) -> dict[str, Any]:
    hub, _, user = acting_for(request, name)
    return servers.server_model(hub, servers.get_server(hub, user.name,
                                                        servers.valid_server(server)))


@router.get("/users/{name}/server/progress")
@router.get("/users/{name}/servers/{server}/progress")
async def progress(name: str, request: Request, server: str = "") -> Response:
    hub, _, user = acting_for(request, name)
    server = servers.valid_server(server)
    not_starting = (f"{servers.label(user.name, server)} is not starting: start it first "
                    "(POST to the server's URL without /progress)")
    try:
        row = servers.get_server(hub, user.name, server)
    except NotFound as exc:
        raise BadRequest(not_starting) from exc
    status = ServerStatus(row.status)
    if not status.pending and status not in (ServerStatus.READY, ServerStatus.FAILED):
        raise BadRequest(not_starting)
    return StreamingResponse(spawning.progress_stream(hub, user.name, server),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/users/{name}/tokens")
async def list_tokens(name: str, request: Request) -> dict[str, Any]:
    hub, _, user = acting_for(request, name)
    with hub.sessions() as db:
        rows = db.query(Token).filter(Token.user == user.name, Token.revoked.is_(False)).all()
        return {"api_tokens": [token_model(t) for t in rows], "oauth_tokens": []}


@router.post("/users/{name}/tokens", status_code=201)
async def create_token(name: str, request: Request) -> Response:
    hub, ident, user = acting_for(request, name)
    data = await body(request)
    expires = data.get("expires_in")
    if expires is not None and (isinstance(expires, bool) or not isinstance(expires, int | float)
                                or not 0 < expires <= MAX_TOKEN_SECONDS):
        raise BadRequest("expires_in must be a number of seconds, more than 0 and at most "
                         f"{MAX_TOKEN_SECONDS} (ten years); leave it out for no expiry")
    note = str(data.get("note") or "Requested via api")[:256]
    secret, record = await auth.issue_token(hub, user.name, note, expires, _actor(ident))
    return JSONResponse({**token_model(record), "token": secret}, 201)


@router.delete("/users/{name}/tokens/{token_id}", status_code=204)
async def revoke_token(name: str, token_id: str, request: Request) -> Response:
    hub, ident, user = acting_for(request, name)
    with hub.sessions() as db:
        t = db.get(Token, token_id)
        if t is None or t.user != user.name or t.revoked:
            raise NotFound(f"no token {token_id} for {user.name}")
    await hub.emit(subjects.token(user.name), TokenRevoked(user=user.name, token_id=token_id),
                   actor=_actor(ident), wait=True)
    return Response(status_code=204)


@router.get("/sites")
async def sites(request: Request) -> list[dict[str, Any]]:
    hub = hub_of(request)
    auth.require(hub, request)
    return [s.model() for s in await list_sites(hub)]


def _site_model(views: list[Any], name: str) -> dict[str, Any]:
    view = next((s for s in views if s.name == name), None)
    if view is None:
        raise NotFound(f"no such site: {name}")
    model: dict[str, Any] = view.model()
    return model


@router.post("/sites", status_code=201)
async def add_site(request: Request) -> Response:
    """Enroll a site (admin): ``{name, backend, public_key, weight?, description?}``."""
    hub = hub_of(request)
    ident = auth.require(hub, request)
    auth.require_admin(ident)
    data = await body(request)
    for field in ("name", "backend", "public_key"):
        if not isinstance(data.get(field), str):
            raise BadRequest(f"{field} is required (a string)")
    weight = data.get("weight", 1)
    if not isinstance(weight, int) or isinstance(weight, bool):
        raise BadRequest("weight must be a whole number")
    await siteadmin.enroll_site(hub, data["name"], backend=data["backend"],
                                public_key=data["public_key"], weight=weight,
                                description=str(data.get("description") or ""),
                                actor=_actor(ident))
    name = siteadmin.valid_site_name(data["name"])
    return JSONResponse(_site_model(await list_sites(hub), name), 201)


@router.patch("/sites/{name}")
async def change_site(name: str, request: Request) -> dict[str, Any]:
    """Change weight (0 drains) or description (admin)."""
    hub = hub_of(request)
    ident = auth.require(hub, request)
    auth.require_admin(ident)
    data = await body(request)
    weight = data.get("weight")
    if weight is not None and (not isinstance(weight, int) or isinstance(weight, bool)):
        raise BadRequest("weight must be a whole number")
    await siteadmin.update_site(hub, name, weight=weight, description=data.get("description"),
                                actor=_actor(ident))
    return _site_model(await list_sites(hub), siteadmin.valid_site_name(name))


@router.delete("/sites/{name}")
async def delete_site(name: str, request: Request) -> dict[str, Any]:
    """Remove a site (admin): its key is revoked, its servers are marked lost."""
    hub = hub_of(request)
    ident = auth.require(hub, request)
    auth.require_admin(ident)
    lost = await siteadmin.remove_site(hub, name, actor=_actor(ident))
    return {"name": siteadmin.valid_site_name(name), "removed": True, "servers_lost": lost}
