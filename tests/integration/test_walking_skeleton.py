"""Issue 2 end to end: real nats-server, coordinator, edge proxy, site agent and
jupyter server, driven over HTTP and WebSocket as a browser or API client would."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import httpx
import pytest

from fedhub.events.jetstream import JetStreamStore
from fedhub.schemas import subjects
from tests.support.hub import ADMIN_PASSWORD, Browser, Hub
from tests.support.kernel import run_code

pytestmark = pytest.mark.integration
PASSWORD = "correct-horse-1"


def make_user(hub: Hub, name: str) -> Browser:
    with hub.admin() as api:
        r = api.post(f"/users/{name}", json={"password": PASSWORD})
        assert r.status_code in (201, 409), r.text
    return Browser(hub, name, PASSWORD)


def spawn(user: Browser, name: str, server: str = "") -> dict:
    path = f"/users/{name}/servers/{server}" if server else f"/users/{name}/server"
    r = user.api("POST", path, json={"site": "local", "user_options": {}})
    assert r.status_code in (201, 202), r.text
    events = []
    with user.client.stream("GET", "/hub/api" + path + "/progress") as stream:
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1].get("ready") or events[-1].get("failed"):
                    break
    assert events[-1].get("ready"), events
    return {"events": events, "model": user.api("GET", f"/users/{name}").json()}


def kernel_2(hub: Hub, user: Browser, prefix: str) -> str:
    r = user.client.post(f"{prefix}api/kernels", json={"name": "python3"},
                         headers={"X-XSRFToken": user.client.cookies.get("_xsrf") or ""})
    assert r.status_code == 201, r.text
    kid = r.json()["id"]
    cookie = "; ".join(f"{k}={v}" for k, v in user.client.cookies.items())
    ws = hub.url.replace("http", "ws") + f"{prefix}api/kernels/{kid}/channels"
    return asyncio.run(run_code(ws, "1+1", {"Cookie": cookie, "Origin": hub.url}))


async def log_events(nats_url: str, subject: str) -> list[tuple[str, dict]]:
    store = await JetStreamStore.connect(nats_url, create_streams=False)
    try:
        return [(i.event.type, i.event.data) async for i in store.read(subject)]
    finally:
        await store.close()


def route_target(hub: Hub, user: str, server: str = "") -> str:
    events = asyncio.run(log_events(hub.nats_url, subjects.route(user, server)))
    kind, data = events[-1]
    assert kind == "RouteAdded", events
    return str(data["target"])


def audit(hub: Hub, *args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "fedhub.coordinator.cli", "audit", "--json",
                          "--nats-url", hub.nats_url, *args], capture_output=True, text=True,
                         timeout=60, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_spawn_use_stop_and_audit(hub: Hub) -> None:
    alice = make_user(hub, "alice")
    result = spawn(alice, "alice")
    messages = [e["message"] for e in result["events"]]
    assert messages[0] == "Server requested" and "ready" in messages[-1]
    assert [e["progress"] for e in result["events"]] == sorted(e["progress"]
                                                             for e in result["events"])
    assert result["model"]["servers"][""]["ready"] is True
    # JupyterLab is served through the proxy, and a kernel runs code over the WebSocket
    lab = alice.client.get("/user/alice/lab")
    assert lab.status_code == 200 and "JupyterLab" in lab.text
    assert kernel_2(hub, alice, "/user/alice/") == "2"
    # stop: 204 (or 202 then gone), route removed, the old URL offers a restart
    r = alice.api("DELETE", "/users/alice/server")
    assert r.status_code in (202, 204)
    for _ in range(100):
        if alice.client.get("/user/alice/api/status").status_code == 302:
            break
        asyncio.run(asyncio.sleep(0.1))
    gone = alice.client.get("/user/alice/api/status", headers={"Accept": "text/html"})
    assert gone.status_code == 302 and gone.headers["location"].startswith("/hub/user/alice")
    page = alice.client.get(gone.headers["location"])
    assert page.status_code == 424 and "not running" in page.text and "Start it again" in page.text
    # the audit shows the whole story, in order
    rows = audit(hub, "--user", "alice")
    kinds = [r["event"] for r in rows]
    for earlier, later in [("UserCreated", "UserLoggedIn"), ("UserLoggedIn", "ServerRequested"),
                           ("ServerRequested", "ServerAccepted"), ("ServerAccepted",
                           "ServerSubmitted"), ("ServerSubmitted", "ServerStarted"),
                           ("ServerStarted", "ServerReady"), ("ServerReady", "RouteAdded"),
                           ("RouteAdded", "ServerStopRequested"), ("ServerStopRequested",
                           "RouteRemoved"), ("RouteRemoved", "ServerStopped")]:
        assert kinds.index(earlier) < kinds.index(later), (earlier, later, kinds)
    assert all(r["signed_by"] != "UNVERIFIED" for r in rows)
    table = subprocess.run([sys.executable, "-m", "fedhub.coordinator.cli", "audit", "--nats-url",
                            hub.nats_url, "--user", "alice", "--site", "local"],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert "ServerReady" in table and "UserCreated" not in table  # site filter applies


def test_users_spawning_at_once_all_get_their_servers(hub: Hub) -> None:
    names = ["carol", "dave", "erin"]
    for name in names:
        make_user(hub, name)

    async def spawn_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=hub.url + "/hub/api", timeout=300, headers={
                "Authorization": f"token {hub.admin_token}"}) as api:
            return await asyncio.gather(*(api.post(f"/users/{n}/server", json={
                "site": "local"}) for n in names))

    answers = asyncio.run(spawn_all())
    assert [r.status_code for r in answers] == [201] * len(names), [r.text for r in answers]
    with hub.admin() as api:
        for name, r in zip(names, answers, strict=True):
            assert r.json()["ready"] is True and r.json()["url"] == f"/user/{name}/"
            assert route_target(hub, name).startswith("http://")
            assert api.delete(f"/users/{name}/server").status_code in (202, 204)


def test_failed_login_is_refused_and_audited(hub: Hub) -> None:
    make_user(hub, "carol")
    r = httpx.post(hub.url + "/hub/login", data={"username": "carol", "password": "nope"})
    assert r.status_code == 403 and "Invalid username or password" in r.text
    r = httpx.post(hub.url + "/hub/login", data={"username": "nobody", "password": "nope"})
    assert r.status_code == 403
    rows = audit(hub, "--user", "carol")
    assert any(r["event"] == "UserLoginFailed" and r["details"]["reason"] == "wrong password"
               for r in rows)
    dump = subprocess.run([sys.executable, "-m", "fedhub.coordinator.cli", "audit", "--json",
                           "--nats-url", hub.nats_url, "--commands"], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert "nope" not in dump and PASSWORD not in dump and ADMIN_PASSWORD not in dump


def test_other_users_and_direct_requests_are_refused(hub: Hub) -> None:
    dave = make_user(hub, "dave")
    eve = make_user(hub, "eve")
    spawn(dave, "dave")
    assert dave.client.get("/user/dave/api/status").status_code == 200
    assert eve.client.get("/user/dave/api/status").status_code == 403
    # the proxy is the only way in: the server's own port refuses requests
    target = route_target(hub, "dave")
    direct = httpx.get(target + "/user/dave/api/contents")
    assert direct.status_code == 403
    forged = httpx.get(target + "/user/dave/api/contents",
                       headers={"X-Fedhub-Assertion": "forged.token"})
    assert forged.status_code == 403
    # an API token works through the proxy for the owner's own server, as in JupyterHub
    with hub.admin() as api:
        token = api.post("/users/dave/tokens", json={"note": "test"}).json()["token"]
    r = httpx.get(hub.url + "/user/dave/api/status", headers={"Authorization": f"token {token}"})
    assert r.status_code == 200
    # scripts write with the token alone: no browser, so no XSRF cookie to show
    r = httpx.post(hub.url + "/user/dave/api/contents", json={"type": "notebook"},
                   headers={"Authorization": f"token {token}"})
    assert r.status_code == 201, r.text
    # ... but a cookie-authenticated write without Jupyter's XSRF token is refused
    r = dave.client.post("/user/dave/api/contents", json={"type": "notebook"})
    assert r.status_code == 403
    r = httpx.get(hub.url + "/user/dave/api/status", headers={"Authorization": "token bogus"})
    assert r.status_code in (401, 403)


def test_edge_proxy_restart_rebuilds_routes_from_the_log(hub: Hub) -> None:
    frank = make_user(hub, "frank")
    spawn(frank, "frank")
    hub.components["edge-proxy"].restart()
    frank = Browser(hub, "frank", PASSWORD)
    assert frank.client.get("/user/frank/api/status").status_code == 200


def test_agent_restart_readopts_running_servers(hub: Hub) -> None:
    gina = make_user(hub, "gina")
    spawn(gina, "gina")
    target = route_target(hub, "gina")
    hub.components["site-agent"].restart()
    assert route_target(hub, "gina") == target  # same server, not restarted
    assert gina.client.get("/user/gina/api/status").status_code == 200
    kinds = [k for k, _ in asyncio.run(log_events(hub.nats_url, subjects.server("gina", "")))]
    assert "ServerStopped" not in kinds and kinds.count("ServerStarted") == 1


def test_coordinator_restart_loses_nothing(hub: Hub) -> None:
    hank = make_user(hub, "hank")
    spawn(hank, "hank", "named")
    with hub.admin() as api:
        before = api.get("/users").json()
    hub.components["coordinator"].restart()
    with hub.admin() as api:
        after = api.get("/users").json()
    assert after == before
    hank = Browser(hub, "hank", PASSWORD)
    assert hank.client.get("/user/hank/named/api/status").status_code == 200
    assert hank.api("DELETE", "/users/hank/servers/named").status_code in (202, 204)


def test_dropped_database_is_rebuilt_from_the_log(hub: Hub) -> None:
    with hub.admin() as api:
        before = api.get("/users").json()
    coordinator = hub.components["coordinator"]
    coordinator.stop()
    subprocess.run([sys.executable, "-c", (
        "import sys; from fedhub.coordinator.db import make_engine, drop_projections;"
        "drop_projections(make_engine(sys.argv[1]))"),
        f"sqlite:///{hub.root / 'coordinator.sqlite'}"], check=True)
    coordinator.start()
    with hub.admin() as api:
        assert api.get("/users").json() == before


def test_bad_input_gets_clear_errors(hub: Hub) -> None:
    ivan = make_user(hub, "ivan")
    with hub.admin() as api:
        for hostile in ["..%2Fx", "%2A", "%3E", "a" * 300, "x%20y", ".hidden"]:
            r = api.post(f"/users/{hostile}", json={})
            assert r.status_code in (400, 404), (hostile, r.status_code, r.text)
            if r.status_code == 400:
                assert "invalid user name" in r.json()["message"]
        r = api.post("/users/jos%C3%A9.d", json={"password": PASSWORD})
        assert r.status_code == 201 and r.json()["name"] == "josé.d"
        assert api.get("/users/nobody-here").status_code == 404
    for bad_server in ["Upper", "has.dot", "-x", "x" * 31, "a*b"]:
        r = ivan.api("POST", f"/users/ivan/servers/{bad_server}", json={"site": "local"})
        assert r.status_code in (400, 404), (bad_server, r.text)
    r = ivan.api("POST", "/users/ivan/server", json={"site": "atlantis"})
    assert r.status_code == 400 and "unknown site 'atlantis'" in r.json()["message"]
    r = ivan.api("POST", "/users/ivan/server", content=b"{not json")
    assert r.status_code == 400
    r = ivan.api("POST", "/users/ivan/server", content=b"x" * (2 << 20))
    assert r.status_code == 413
    spawn(ivan, "ivan")
    r = ivan.api("POST", "/users/ivan/server", json={"site": "local"})
    assert r.status_code == 400 and "already" in r.json()["message"]
    # without the XSRF header a cookie cannot be used to write
    r = ivan.client.post("/hub/api/users/ivan/servers/other", json={"site": "local"})
    assert r.status_code == 403


def test_an_upload_that_asks_first_is_refused_before_it_is_sent(hub: Hub) -> None:
    # A client may send "Expect: 100-continue" with a large body and wait to be told to go
    # on: the coordinator refuses an oversized one at once, so its body is never sent. (The
    # edge proxy, like nginx and CHP, answers 100 itself and streams the body on.)
    url = urlsplit(hub.hub_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as conn:
        conn.sendall(b"POST /hub/api/users/ivan/server HTTP/1.1\r\nHost: hub\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 50000000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        answer = conn.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        while b"\r\n\r\n{" not in answer and (more := conn.recv(65536)):
            answer += more  # the JSON body may come in a write of its own
    assert b"request body larger than" in answer


def test_a_chunked_upload_is_held_to_the_same_limit(hub: Hub) -> None:
    # No Content-Length to refuse it by: the coordinator counts what arrives.
    kim = make_user(hub, "kim")
    r = kim.api("POST", "/users/kim/tokens", content=iter([b'{"note": ', b'"chunked"}']))
    assert r.status_code == 201 and r.json()["note"] == "chunked", r.text
    r = kim.api("POST", "/users/kim/tokens", content=iter([b" " * 65536] * 40))  # 2.5 MiB
    assert r.status_code == 413, r.text
    assert r.json()["message"] == "request body larger than 1048576 bytes"
    tokens = kim.api("GET", "/users/kim/tokens").json()["api_tokens"]
    assert [t["note"] for t in tokens] == ["chunked"]


def test_malformed_events_are_skipped_by_every_consumer(hub: Hub) -> None:
    async def inject() -> None:
        store = await JetStreamStore.connect(hub.nats_url, create_streams=False)
        try:
            for subject in ["fedhub.route.x._", "fedhub.server.x._", "fedhub.cmd.local.start",
                            "fedhub.user.x", "fedhub.key.x"]:
                await store.append_raw(subject, b"\x00 not an event")
                await store.append_raw(subject, json.dumps({"id": "1", "type": "Nope",
                    "time": "2026-01-01T00:00:00Z", "actor": "x", "subject": subject,
                    "data": {}}).encode())
        finally:
            await store.close()

    asyncio.run(inject())
    judy = make_user(hub, "judy")
    spawn(judy, "judy")
    assert judy.client.get("/user/judy/api/status").status_code == 200
    for comp in hub.components.values():
        assert comp.proc is not None and comp.proc.poll() is None, f"{comp.name} crashed"


