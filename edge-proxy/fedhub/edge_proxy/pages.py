"""The proxy's own answers: error pages (HTML for browsers, JSON otherwise) and redirects.

``render_error`` makes an ``Answer`` (status, headers, body) that both paths send: the
fast path as bytes (``Answer.encode``), aiohttp's server as a response.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from html import escape

from aiohttp import web
from multidict import CIMultiDict

from fedhub.edge_proxy.http1 import build_head, status_line

_TITLES = {
    401: "Not logged in",
    403: "Forbidden",
    404: "Not found",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}
_NO_STORE = (("Cache-Control", "no-store"),)
_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{status} {title}</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:4em auto;color:#222}}</style>
</head><body><h1>{status} {title}</h1><p>{message}</p>
<p><a href="/hub/home">Back to the hub</a></p></body></html>
"""


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete answer of the proxy's own: status, headers and body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def encode(self, *, close: bool) -> bytes:
        """The answer as HTTP/1.1 bytes (with ``Connection: close`` if ``close``)."""
        headers = [*self.headers, ("Content-Length", str(len(self.body)))]
        if close:
            headers.append(("Connection", "close"))
        return build_head(status_line(self.status, ""), headers) + self.body

    def response(self) -> web.Response:
        """The answer for aiohttp's server."""
        return web.Response(status=self.status, headers=CIMultiDict(self.headers),
                            body=self.body)


def wants_html(request: web.BaseRequest) -> bool:
    """True for a browser navigation: a GET whose Accept mentions text/html."""
    return request.method == "GET" and "text/html" in request.headers.get("Accept", "")


def render_error(status: int, message: str, accept: str) -> Answer:
    """An error answer in the form the client asked for (``accept``: its Accept header)."""
    if "text/html" in accept:
        title = _TITLES.get(status, "Error")
        body = _PAGE.format(status=status, title=title, message=escape(message))
        return Answer(status, [("Content-Type", "text/html; charset=utf-8"), *_NO_STORE],
                      body.encode())
    return Answer(status, [("Content-Type", "application/json; charset=utf-8"), *_NO_STORE],
                  json.dumps({"status": status, "message": message}).encode())


def error(request: web.BaseRequest, status: int, message: str) -> web.Response:
    """An error answer in the form the client asked for (HTML page or JSON)."""
    return render_error(status, message, request.headers.get("Accept", "")).response()


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
