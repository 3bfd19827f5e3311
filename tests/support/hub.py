"""The hub's components as real processes, each restartable on its own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fedhub.coordinator import sitecli
from tests.support.services import free_port

ADMIN_PASSWORD = "admin-password-123"


@dataclass
class Component:
    name: str
    module: str
    env: dict[str, str]
    log: Path
    health: str
    proc: subprocess.Popen[bytes] | None = None
    argv: list[str] = field(default_factory=list)  # default: this Python, -m ``module``

    def start(self, timeout: float = 90) -> None:
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_")}
        argv = self.argv or [sys.executable, "-m", self.module]
        with open(self.log, "ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(argv, env={**clean, **self.env}, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        if self.health:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
                try:
                    # 200 only: a 4xx may come from another server on that port
                    if httpx.get(self.health, timeout=1).status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            raise RuntimeError(f"{self.name} not healthy: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Hub:
    """A running hub: coordinator, edge proxy and the ``local`` site agent."""

    root: Path
    nats_url: str
    components: dict[str, Component] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.components['edge-proxy'].env['FEDHUB_PORT']}"

    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.components['coordinator'].env['FEDHUB_PORT']}"

    @property
    def admin_token(self) -> str:
        return (self.root / "cli-token").read_text().strip()

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + "/hub/api", timeout=60,
                            headers={"Authorization": f"token {self.admin_token}"})

    def add(self, name: str, module: str, env: dict[str, str], health: str) -> Component:
        common = {"FEDHUB_NATS_URL": self.nats_url, "FEDHUB_DATA_DIR": str(self.root)}
        comp = Component(name, module, {**common, **env}, self.root / f"{name}.log", health)
        self.components[name] = comp
        return comp

    def stop(self) -> None:
        """Stop the components, then every server they left running: an agent leaves its
        servers up on exit by design (a restarted agent re-adopts them), but a test's
        servers must not outlive its hub."""
        for comp in reversed(list(self.components.values())):
            comp.stop()
        kill_processes_of(self.root)


def kill_processes_of(root: Path) -> int:
    """SIGKILL the process group of every process of the hub in ``root``: its components
    (``FEDHUB_DATA_DIR=root``) and the servers and kernels its local site started (which
    get only ``FEDHUB_TRUSTED_KEYS=root/trusted-keys.json`` of that environment); returns
    how many groups."""
    markers = {f"FEDHUB_DATA_DIR={root}".encode(),
               f"FEDHUB_TRUSTED_KEYS={root / 'trusted-keys.json'}".encode()}
    groups = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if markers & set((proc / "environ").read_bytes().split(b"\0")):
                groups.add(os.getpgid(int(proc.name)))
        except (OSError, ProcessLookupError):
            continue
    for group in groups - {os.getpgid(0)}:
        try:
            os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(groups)


def start_hub(root: Path, nats_url: str, *, agent_env: dict[str, str] | None = None,
              coordinator_env: dict[str, str] | None = None) -> Hub:
    root.mkdir(parents=True, exist_ok=True)
    hub = Hub(root, nats_url)
    cport, pport = free_port(), free_port()
    hub.add("coordinator", "fedhub.coordinator", {
        "FEDHUB_PORT": str(cport), "FEDHUB_PUBLIC_URL": f"http://127.0.0.1:{pport}",
        "FEDHUB_ADMIN_PASSWORD": ADMIN_PASSWORD, "FEDHUB_SLOW_SPAWN_TIMEOUT": "30",
        "FEDHUB_CLI_TOKEN_FILE": str(root / "cli-token"), **(coordinator_env or {})},
        f"http://127.0.0.1:{cport}/hub/api/health").start()
    hub.add("edge-proxy", "fedhub.edge_proxy", {
        "FEDHUB_PORT": str(pport), "FEDHUB_HUB_URL": f"http://127.0.0.1:{cport}"},
        f"http://127.0.0.1:{pport}/_fedhub/health").start()
    bundle = enroll(hub, "local", "local", tunnel=False)
    hub.add("site-agent", "fedhub.site_agent", {"FEDHUB_CREDENTIALS": str(bundle),
            "FEDHUB_HEARTBEAT_INTERVAL": "1", **(agent_env or {})}, "").start()
    wait_site_online(hub, "local")
    return hub


def enroll(hub: Hub, site: str, backend: str, *, tunnel: bool, nats_url: str = "") -> Path:
    """``fedhub site add`` through the API; returns the credentials bundle's path."""
    def call(method: str, path: str, body: Any) -> Any:
        with hub.admin() as api:
            r = api.request(method, path, json=body)
            assert r.status_code < 400, r.text
            return r.json()

    path = hub.root / "bundles" / f"{site}.json"
    sitecli.add(call, hub.root, name=site, backend=backend, weight=1, description="test",
                nats_url=nats_url or hub.nats_url, bundle_path=path, tunnel=tunnel)
    return path


def wait_site_online(hub: Hub, site: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with hub.admin() as api:
        while time.monotonic() < deadline:
            sites = {s["name"]: s for s in api.get("/sites").json()}
            if sites.get(site, {}).get("status") == "online":
                return
            time.sleep(0.2)
    raise RuntimeError(f"site {site} never came online")


class Browser:
    """A logged-in user talking to the edge proxy like a browser (cookie + XSRF)."""

    open_clients: list[httpx.Client] = []

    @classmethod
    def close_all(cls) -> None:
        while cls.open_clients:
            cls.open_clients.pop().close()

    def __init__(self, hub: Hub, user: str, password: str) -> None:
        self.client = httpx.Client(base_url=hub.url, timeout=60, follow_redirects=False)
        self.open_clients.append(self.client)
        r = self.client.post("/hub/login", data={"username": user, "password": password,
                                                  "next": "/hub/home"})
        if r.status_code != 302:
            raise AssertionError(f"login as {user} failed: {r.status_code} {r.text[:300]}")
        home = self.client.get("/hub/home")
        match = re.search(r'name="xsrf" content="([^"]*)"', home.text)
        assert match, "home page carries the XSRF token"
        self.xsrf = match.group(1)

    def api(self, method: str, path: str, **kw: object) -> httpx.Response:
        return self.client.request(method, "/hub/api" + path,
                                   headers={"X-XSRFToken": self.xsrf}, **kw)  # type: ignore[arg-type]
