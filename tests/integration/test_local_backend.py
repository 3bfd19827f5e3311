"""A real ``jupyter lab`` started by LocalProcessBackend, reached with and without the
edge proxy's assertion, running code in a kernel over its WebSocket."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fedhub.events.signing import KeyRing, SigningKey
from fedhub.site_agent.backends.base import JobStatus, Phase, ServerSpec
from fedhub.site_agent.backends.local import LocalProcessBackend
from fedhub.site_agent.backends.process import proc_state

pytestmark = pytest.mark.integration
PREFIX = "/user/alice/"
HEADER = "X-Fedhub-Assertion"


@dataclass
class Running:
    backend: LocalProcessBackend
    data_dir: Path
    key: SigningKey
    state: dict[str, Any]
    target: str

    def assertion(self, prefix: str = PREFIX, key: SigningKey | None = None, **extra: Any
                  ) -> dict[str, str]:
        claims = {"typ": "assertion", "sub": "alice", "prefix": prefix, "adm": False,
                  "exp": int(time.time()) + 60, **extra}
        return {HEADER: (key or self.key).token(claims)}

    def url(self, path: str) -> str:
        return f"{self.target}{PREFIX}{path}"


def _backend(data_dir: Path) -> LocalProcessBackend:
    return LocalProcessBackend(data_dir, jupyter_command=[sys.executable, "-m", "jupyterlab"],
                               ready_timeout=90)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("site")
    key = SigningKey.generate()
    ring = KeyRing()
    ring.add_signing_key(key, "edge-proxy", "proxy-1")
    (data_dir / "trusted-keys.json").write_text(json.dumps(ring.as_dict()))
    backend = _backend(data_dir)

    async def start() -> list[Any]:
        return [cp async for cp in backend.start(ServerSpec("alice", "", "s1", PREFIX))]

    checkpoints = asyncio.run(start())
    assert [cp.phase for cp in checkpoints] == [Phase.SUBMITTED, Phase.RUNNING]
    running = Running(backend, data_dir, key, checkpoints[-1].state, checkpoints[-1].target)
    yield running
    asyncio.run(backend.stop(running.state))


async def test_ready_server_answers_its_api(server: Running) -> None:
    async with aiohttp.ClientSession() as http, http.get(server.url("api")) as resp:
        assert resp.status == 200
    assert (server.data_dir / "users" / "alice").is_dir()  # noqa: ASYNC240
    assert os.path.exists(server.state["log"])  # noqa: ASYNC240


async def test_requests_without_assertion_are_refused(server: Running) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("api/contents", "lab", "tree", "api/kernels", "login"):
            async with http.get(server.url(path), allow_redirects=False) as resp:
                assert resp.status in (403, 404), path
                assert resp.status != 404 or path == "login"  # no login page at all
        async with http.get(server.url("api/contents"),
                            headers={HEADER: "garbage.token"}) as resp:
            assert resp.status == 403


async def test_valid_assertion_reads_contents(server: Running) -> None:
    async with aiohttp.ClientSession() as http, http.get(
        server.url("api/contents"), headers=server.assertion()
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["type"] == "directory"


async def test_the_lab_page_asks_nobody_about_news_or_updates(server: Running) -> None:
    # Each new user used to get JupyterLab's pop-up asking whether to fetch its news feed,
    # a feed compute nodes rarely reach.
    async with aiohttp.ClientSession() as http, http.get(
        server.url("lab"), headers=server.assertion()
    ) as resp:
        assert resp.status == 200
        page = await resp.text()
    start = page.index('id="jupyter-config-data"')
    config = json.loads(page[page.index(">", start) + 1:page.index("</script>", start)])
    assert config["news"] == {"disabled": True}


async def test_assertion_for_another_prefix_or_key_is_refused(server: Running) -> None:
    async with aiohttp.ClientSession() as http:
        for headers in (server.assertion(prefix="/user/bob/"),
                        server.assertion(key=SigningKey.generate()),
                        server.assertion(exp=int(time.time()) - 5)):
            async with http.get(server.url("api/contents"), headers=headers) as resp:
                assert resp.status == 403


async def test_new_proxy_key_is_picked_up(server: Running) -> None:
    new_key = SigningKey.generate()
    ring = KeyRing()
    ring.add_signing_key(server.key, "edge-proxy", "proxy-1")
    ring.add_signing_key(new_key, "edge-proxy", "proxy-2")
    path = server.data_dir / "trusted-keys.json"
    path.write_text(json.dumps(ring.as_dict()))
    os.utime(path, (time.time() + 1, time.time() + 1))  # a new mtime even on coarse clocks
    async with aiohttp.ClientSession() as http, http.get(
        server.url("api/contents"), headers=server.assertion(key=new_key)
    ) as resp:
        assert resp.status == 200


async def _execute(ws: aiohttp.ClientWebSocketResponse, code: str) -> str:
    msg_id = uuid.uuid4().hex
    await ws.send_json({
        "header": {"msg_id": msg_id, "msg_type": "execute_request", "username": "alice",
                   "session": uuid.uuid4().hex, "date": "", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell",
        "content": {"code": code, "silent": False, "store_history": True,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    })
    async with asyncio.timeout(60):
        while True:
            msg = await ws.receive_json()
            if (msg.get("msg_type") == "execute_result"
                    and msg["parent_header"].get("msg_id") == msg_id):
                return str(msg["content"]["data"]["text/plain"])


async def test_browser_style_kernel_over_websocket(server: Running) -> None:
    """Like JupyterLab behind the proxy: XSRF cookie from a page, then API and WebSocket
    with the Host header kept and a matching Origin."""
    host = "hub.example.org"
    base = {**server.assertion(), "Host": host}
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(server.url("lab"), headers=base) as resp:
            assert resp.status == 200
        xsrf = next(c.value for c in jar if c.key == "_xsrf")
        # Without the XSRF token a cookie-authenticated browser POST is refused...
        async with http.post(server.url("api/kernels"), headers=server.assertion(),
                             json={"name": "python3"}) as resp:
            assert resp.status == 403
        # ...with it (as JupyterLab sends it) the kernel starts.
        async with http.post(server.url("api/kernels"), json={"name": "python3"},
                             headers={**base, "X-XSRFToken": xsrf,
                                      "Origin": f"https://{host}"}) as resp:
            assert resp.status == 201, await resp.text()
            kernel = (await resp.json())["id"]
        ws_url = server.url(f"api/kernels/{kernel}/channels").replace("http", "ws", 1)
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(ws_url)
        assert refused.value.status == 403
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(ws_url, headers={**base, "Origin": "https://evil.example"})
        async with http.ws_connect(ws_url, headers={**base, "Origin": f"https://{host}"}
                                   ) as ws:
            assert await _execute(ws, "1+1") == "2"
        async with http.delete(server.url(f"api/kernels/{kernel}"),
                               headers={**server.assertion(tok=True)}) as resp:
            assert resp.status == 204


async def test_token_style_request_skips_xsrf(server: Running) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url("api/kernels"), json={"name": "python3"},
                             headers=server.assertion(tok=True)) as resp:
            assert resp.status == 201, await resp.text()
            kernel = (await resp.json())["id"]
        ws_url = server.url(f"api/kernels/{kernel}/channels").replace("http", "ws", 1)
        async with http.ws_connect(ws_url, headers=server.assertion(tok=True)) as ws:
            assert await _execute(ws, "40+2") == "42"


async def test_fresh_backend_readopts_from_state(server: Running) -> None:
    fresh = _backend(server.data_dir)
    report = await fresh.status({"alice._": server.state})
    assert report["alice._"].status is JobStatus.RUNNING
    bogus = {**server.state, "starttime": server.state["starttime"] + 1}
    assert (await fresh.status({"x": bogus}))["x"].status is JobStatus.GONE


async def test_stop_never_signals_a_group_whose_leader_reused_the_pid(tmp_path: Path) -> None:
    # A stranger leading its own group under the recorded pid, with another start time:
    # the server it stands for ended long ago, and the stranger must be left alone.
    stranger = await asyncio.create_subprocess_exec("sleep", "30", start_new_session=True)
    try:
        st = proc_state(stranger.pid)
        assert st is not None
        await _backend(tmp_path).stop({"pid": stranger.pid, "starttime": st.starttime + 1})
        assert stranger.returncode is None and proc_state(stranger.pid) is not None
        assert not proc_state(stranger.pid).zombie  # type: ignore[union-attr]
    finally:
        stranger.kill()
        await stranger.wait()


async def test_stop_leaves_no_process(server: Running) -> None:
    """Runs last in this module: it stops the shared server."""
    pid = server.state["pid"]
    await _backend(server.data_dir).stop(server.state)
    assert (await server.backend.status({"k": server.state}))["k"].status is JobStatus.GONE
    assert proc_state(pid) is None or proc_state(pid).zombie  # type: ignore[union-attr]
    # Nothing of the group runs any more (ps, not our own /proc reader). A kernel that
    # died after the server may still be a zombie until init reaps it: that is not running.
    ps = await asyncio.create_subprocess_exec("ps", "-e", "-o", "pgid=,stat=,pid=,args=",
                                              stdout=asyncio.subprocess.PIPE)
    table = (await ps.communicate())[0].decode()
    running = [row for row in table.splitlines()
               if row.split()[0] == str(pid) and not row.split()[1].startswith("Z")]
    assert running == []
    await server.backend.stop(server.state)  # idempotent


async def test_failed_start_reports_the_log(tmp_path: Path) -> None:
    backend = LocalProcessBackend(tmp_path, jupyter_command=[sys.executable, "-c",
                                  "import sys; print('boom: no jupyter here'); sys.exit(3)"],
                                  ready_timeout=30)
    from fedhub.site_agent.errors import BackendError
    with pytest.raises(BackendError) as err:
        async for _ in backend.start(ServerSpec("bob", "", "s2", "/user/bob/")):
            pass
    assert "exit code 3" in str(err.value) and "boom: no jupyter here" in str(err.value)


# A stand-in for Jupyter that starts in milliseconds: binds --ServerApp.port (exiting with
# "Address already in use" if it cannot) and answers 200 to everything.
TINY_SERVER = """
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
port = next(int(a.split('=')[1]) for a in sys.argv if a.startswith('--ServerApp.port='))
class Ok(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b'{"version": "0"}')
HTTPServer(('127.0.0.1', port), Ok).serve_forever()
"""


def test_ports_handed_out_are_never_handed_out_again_soon() -> None:
    from fedhub.site_agent.backends.local import free_port

    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


async def test_a_server_that_lost_its_port_is_started_again_on_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedhub.site_agent.backends import local

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()  # another program got the port between the choice and the bind
    choices = iter([taken.getsockname()[1]])
    real = local.free_port
    monkeypatch.setattr(local, "free_port", lambda host: next(choices, None) or real(host))
    backend = LocalProcessBackend(tmp_path, jupyter_command=[sys.executable, "-c", TINY_SERVER],
                                  ready_timeout=30)
    spec = ServerSpec("bob", "", "s3", "/user/bob/")
    state: Mapping[str, Any] = {}
    try:
        phases = []
        async for cp in backend.start(spec):
            phases.append(cp.phase)
            state = cp.state
        assert phases == [Phase.SUBMITTED, Phase.RUNNING]
        assert state["port"] != taken.getsockname()[1]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{state['port']}/user/bob/api") as r:
                assert r.status == 200
        assert (await backend.status({"k": state}))["k"].status is JobStatus.RUNNING
    finally:
        taken.close()
        if state:  # a start that failed before its first step has nothing to stop
            await backend.stop(state)
    assert (await backend.status({"k": state}))["k"].status is JobStatus.GONE
