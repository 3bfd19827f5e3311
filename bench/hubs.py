"""A whole fedhub (nats, coordinator, edge proxy, local site agent) and a whole JupyterHub
(with configurable-http-proxy), both spawning the same trivial server."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from common import BENCH, Procs, free_port, wait_http
from services import CHP_BIN, start_nats

JH_VENV = BENCH / ".venv-jupyterhub"
TRIVIAL = [sys.executable, "-I", "-S", str(BENCH / "trivial_server.py")]
JH_TOKEN = "bench-jupyterhub-service-token-0123456789"


@dataclass
class Hub:
    name: str
    api: str  # .../hub/api, straight to the hub (not through its proxy)
    public: str  # the proxy users reach
    token: str
    piddir: Path
    procs: list[object] = field(default_factory=list)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}


def _get_json(url: str, token: str) -> object:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _enroll(api: str, token: str, data_dir: Path, nats_url: str) -> Path:
    """Enroll the site ``local`` as ``fedhub site add`` does; returns the bundle's path."""
    from fedhub.coordinator import sitecli

    def call(method: str, path: str, body: object) -> object:
        req = urllib.request.Request(f"{api}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    path = data_dir / "bundles" / "local.json"
    sitecli.add(call, data_dir, name="local", backend="local", weight=1,  # type: ignore[arg-type]
                description="bench", nats_url=nats_url, bundle_path=path, tunnel=False)
    return path


def start_fedhub(procs: Procs, root: Path) -> Hub:
    root.mkdir(parents=True, exist_ok=True)
    piddir = root / "pids"
    piddir.mkdir(exist_ok=True)
    nats = start_nats(procs, root, "nats")
    cport, pport = free_port(), free_port()
    common = {"FEDHUB_NATS_URL": nats, "FEDHUB_DATA_DIR": str(root / "data")}
    cli = root / "cli-token"
    c = procs.start("coordinator", [sys.executable, "-m", "fedhub.coordinator"],
                    root / "coordinator.log", env={
                        **common, "FEDHUB_PORT": str(cport),
                        "FEDHUB_PUBLIC_URL": f"http://127.0.0.1:{pport}",
                        "FEDHUB_ADMIN_PASSWORD": "bench-admin-password",
                        "FEDHUB_SLOW_SPAWN_TIMEOUT": "600",
                        "FEDHUB_CLI_TOKEN_FILE": str(cli)})
    wait_http(f"http://127.0.0.1:{cport}/hub/api/health", 120, proc=c,
              log=root / "coordinator.log")
    p = procs.start("edge-proxy", [sys.executable, "-m", "fedhub.edge_proxy"],
                    root / "edge-proxy.log", env={
                        **common, "FEDHUB_PORT": str(pport),
                        "FEDHUB_HUB_URL": f"http://127.0.0.1:{cport}"})
    wait_http(f"http://127.0.0.1:{pport}/_fedhub/health", 60, proc=p,
              log=root / "edge-proxy.log")
    token = cli.read_text().strip()
    bundle = _enroll(f"http://127.0.0.1:{cport}/hub/api", token, root / "data", nats)
    a = procs.start("site-agent", [sys.executable, "-m", "fedhub.site_agent"],
                    root / "site-agent.log", env={
                        **common, "FEDHUB_CREDENTIALS": str(bundle),
                        "FEDHUB_HEARTBEAT_INTERVAL": "1",
                        "FEDHUB_JUPYTER_COMMAND": json.dumps(TRIVIAL),
                        "FEDHUB_READY_TIMEOUT": "600", "FEDHUB_STOP_SERVERS_ON_EXIT": "true",
                        "BENCH_PID_DIR": str(piddir)})
    api = f"http://127.0.0.1:{cport}/hub/api"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if a.poll() is not None:
            tail = (root / "site-agent.log").read_text()[-2000:]
            raise RuntimeError("site agent exited: " + tail)
        sites = _get_json(f"{api}/sites", token)
        if any(s["name"] == "local" and s["status"] == "online" for s in sites):  # type: ignore
            break
        time.sleep(0.2)
    else:
        raise RuntimeError("site local never came online")
    return Hub("fedhub", api, f"http://127.0.0.1:{pport}", token, piddir, [c, p, a])


def jupyterhub_version() -> str:
    try:
        out = (JH_VENV / "bin" / "jupyterhub").exists() and os.popen(
            f"{JH_VENV / 'bin' / 'jupyterhub'} --version").read().strip()
        return out or "not installed"
    except OSError:
        return "not installed"


def start_jupyterhub(procs: Procs, root: Path) -> Hub:
    binary = JH_VENV / "bin" / "jupyterhub"
    if not binary.exists():
        raise RuntimeError(f"jupyterhub not installed in {JH_VENV} (bench/run.sh installs it)")
    root.mkdir(parents=True, exist_ok=True)
    piddir = root / "pids"
    piddir.mkdir(exist_ok=True)
    port, hub_port, api_port = free_port(), free_port(), free_port()
    (root / "homes").mkdir(exist_ok=True)
    cfg = root / "jupyterhub_config.py"
    cfg.write_text(f"""
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.command = ["node", {str(CHP_BIN)!r}]
c.ConfigurableHTTPProxy.should_start = True
c.JupyterHub.db_url = "sqlite:///{root / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = {str(root / 'cookie_secret')!r}
c.JupyterHub.pid_file = {str(root / 'jupyterhub.pid')!r}
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.SimpleLocalProcessSpawner.home_dir_template = {str(root / 'homes' / '{username}')!r}
c.Spawner.cmd = {TRIVIAL!r}
c.Spawner.args = []
c.Spawner.default_url = ""
c.Spawner.start_timeout = 600
c.Spawner.http_timeout = 600
c.Spawner.environment = {{"BENCH_PID_DIR": {str(piddir)!r}}}
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 600}}
c.JupyterHub.cleanup_servers = True
c.JupyterHub.log_level = "WARN"
c.JupyterHub.services = [{{"name": "bench", "api_token": {JH_TOKEN!r}}}]
c.JupyterHub.load_roles = [{{"name": "bench-admin", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "list:users", "read:users", "tokens"]}}]
""")
    env = {"PATH": f"{JH_VENV / 'bin'}:{os.environ.get('PATH', '')}"}
    j = procs.start("jupyterhub", [str(binary), "-f", str(cfg)], root / "jupyterhub.log",
                    env=env, cwd=root)
    api = f"http://127.0.0.1:{hub_port}/hub/api"
    wait_http(f"{api}/", 120, proc=j, log=root / "jupyterhub.log")
    wait_http(f"http://127.0.0.1:{port}/hub/api/", 60, proc=j, log=root / "jupyterhub.log")
    return Hub("jupyterhub", api, f"http://127.0.0.1:{port}", JH_TOKEN, piddir, [j])


def kill_spawned(hub: Hub) -> int:
    """Stop every trivial server this hub started (they wrote their pids); returns how many."""
    n = 0
    for f in hub.piddir.iterdir():
        try:
            os.kill(int(f.name), signal.SIGTERM)
            n += 1
        except (ProcessLookupError, ValueError):
            pass
        f.unlink(missing_ok=True)
    return n
