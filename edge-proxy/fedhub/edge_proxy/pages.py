"""The proxy's own answers: error pages (HTML for browsers, JSON otherwise) and redirects."""

from __future__ import annotations

import json
from html import escape

from aiohttp import web
from multidict import CIMultiDict

_TITLES = {
    401: "Not logged in",
    403: "Forbidden",
    404: "Not found",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{status} {title}</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:4em auto;color:#222}}</style>
</head><body><h1>{status} {title}</h1><p>{message}</p>
<p><a href="/hub/home">Back to the hub</a></p></body></html>
"""


def wants_html(request: web.BaseRequest) -> bool:
    """True for a browser navigation: a GET whose Accept mentions text/html."""
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


def error(request: web.BaseRequest, status: int, message: str) -> web.Response:
    """An error answer in the form the client asked for (HTML page or JSON)."""
    headers = CIMultiDict({"Cache-Control": "no-store"})
    if "text/html" in request.headers.get("Accept", ""):
        title = _TITLES.get(status, "Error")
        body = _PAGE.format(status=status, title=title, message=escape(message))
        return web.Response(status=status, text=body, content_type="text/html",
                            headers=headers)
    return web.Response(
        status=status,
        text=json.dumps({"status": status, "message": message}),
        content_type="application/json",
        headers=headers,
    )


def redirect(location: str, *, cookie: str | None = None) -> web.Response:
    """A 302 to ``location`` (optionally setting one Set-Cookie header)."""
    headers = CIMultiDict({"Location": location, "Cache-Control": "no-store"})
    if cookie is not None:
        headers["Set-Cookie"] = cookie
    return web.Response(status=302, headers=headers)


def json_response(status: int, body: object) -> web.Response:
    """A JSON answer (health checks)."""
    return web.Response(status=status, text=json.dumps(body), content_type="application/json",
                        headers={"Cache-Control": "no-store"})
