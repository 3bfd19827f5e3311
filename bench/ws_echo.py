"""A WebSocket echo upstream (any path), the same one for every proxy compared."""

import sys

from aiohttp import web


async def echo(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return web.Response(text="ok\n")
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == web.WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == web.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


def main() -> None:
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", echo)
    try:
        import uvloop
        loop_kw = {"loop": uvloop.new_event_loop()}
    except ImportError:
        loop_kw = {}
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                print=None, **loop_kw)


if __name__ == "__main__":
    main()
