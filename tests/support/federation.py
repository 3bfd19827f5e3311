"""A federation on one machine: the hub (NATS with per-site users, coordinator, two edge
proxies) in this network namespace, each site in its own namespace whose firewall drops
every new inbound connection, its agent dialing out with its credentials bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fedhub.coordinator.natsauth import HUB_USER, AuthFile
from tests.support.hub import ADMIN_PASSWORD, Hub, enroll, wait_site_online
from tests.support.netns import Netns, netns, unavailable
from tests.support.services import free_port, missing, nats_server_with_auth

FIREWALL = """
table inet fedhub_site {
  chain input {
    type filter hook input priority 0; policy accept;
    iif lo accept
    ct state established,related accept
    ct state new drop
  }
}
"""


def no_inbound(ns: Netns) -> None:
    """Drop every new connection into the namespace (answers to its own still pass)."""
    ns.run(["nft", "-f", "-"], input=FIREWALL, text=True, capture_output=True)
    ns.run(["ip", "route", "add", "default", "via", ns.host_ip], capture_output=True)


@dataclass
class Site:
    name: str
    ns: Netns
    bundle: Path
    data_dir: Path
    log: Path
    agent: subprocess.Popen[bytes] | None = None

    def start_agent(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_")}
        env.update({"FEDHUB_CREDENTIALS": str(self.bundle), "FEDHUB_DATA_DIR": str(self.data_dir),
                    "FEDHUB_HEARTBEAT_INTERVAL": "1", "FEDHUB_STOP_SERVERS_ON_EXIT": "true",
                    "FEDHUB_TUNNEL_KEEPALIVE": "2"})
        with open(self.log, "ab") as out:
            self.agent = self.ns.popen([sys.executable, "-m", "fedhub.site_agent"], env=env,
                                       stdout=out, stderr=subprocess.STDOUT)

    def stop_agent(self, crash: bool = False) -> None:
        """Stop the agent (SIGTERM: it stops its servers), or kill it as a crash would."""
        if self.agent is not None and self.agent.poll() is None:
            if crash:
                self.agent.kill()
            else:
                self.agent.terminate()
            try:
                self.agent.wait(60)
            except subprocess.TimeoutExpired:
                self.agent.kill()
        self.agent = None


@dataclass
class Federation:
    hub: Hub
    nats_port: int
    sites: dict[str, Site] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)  # must never appear in the log

    def proxy_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.hub.components[name].env['FEDHUB_PORT']}"


@contextmanager
def federation(root: Path, sites: list[str]) -> Iterator[Federation]:
    """Start the hub and one firewalled namespace with an agent per site name."""
    why = unavailable()
    if why:
        missing(why)
    with ExitStack() as stack:
        spaces = {name: stack.enter_context(netns(name)) for name in sites}
        for ns in spaces.values():
            no_inbound(ns)
        nats_dir = root / "nats"
        auth = AuthFile(nats_dir)
        hub_secret = auth.ensure_hub()
        address, pid = stack.enter_context(nats_server_with_auth(nats_dir, auth.conf_path,
                                                                 host="0.0.0.0"))
        port = int(address.rsplit(":", 1)[1])
        (root / "runtime.json").write_text(json.dumps({"nats_pid": pid}))
        hub = Hub(root, f"nats://{HUB_USER}:{hub_secret}@127.0.0.1:{port}")
        stack.callback(hub.stop)
        cport = free_port()
        first = next(iter(spaces.values()))
        hub.add("coordinator", "fedhub.coordinator", {
            "FEDHUB_PORT": str(cport), "FEDHUB_ADMIN_PASSWORD": ADMIN_PASSWORD,
            "FEDHUB_SITE_OFFLINE_AFTER": "4", "FEDHUB_HEALTH_INTERVAL": "1",
            "FEDHUB_SLOW_SPAWN_TIMEOUT": "60", "FEDHUB_CLI_TOKEN_FILE": str(root / "cli-token")},
            f"http://127.0.0.1:{cport}/hub/api/health").start()
        for proxy in ("edge-proxy", "edge-proxy-2"):
            pport = free_port()
            hub.add(proxy, "fedhub.edge_proxy", {
                "FEDHUB_PORT": str(pport), "FEDHUB_NAME": proxy,
                "FEDHUB_HUB_URL": f"http://127.0.0.1:{cport}", "FEDHUB_TUNNEL_HOST": "0.0.0.0",
                "FEDHUB_TUNNEL_ADVERTISE_HOST": first.host_ip, "FEDHUB_TUNNEL_KEEPALIVE": "2",
                "FEDHUB_UPSTREAM_TIMEOUT": "20"},
                f"http://127.0.0.1:{pport}/_fedhub/health").start()
        fed = Federation(hub, port, secrets=[hub_secret, ADMIN_PASSWORD])
        for name, ns in spaces.items():
            bundle = enroll(hub, name, "local", tunnel=True,
                            nats_url=f"nats://{ns.host_ip}:{port}")
            data = json.loads(bundle.read_text())
            fed.secrets += [data["nats_password"],
                            data["agent_key_pem"].splitlines()[1]]  # the key material
            site = Site(name, ns, bundle, root / name, root / f"agent-{name}.log")
            site.data_dir.mkdir()
            site.start_agent()
            stack.callback(site.stop_agent)
            fed.sites[name] = site
        for name in sites:
            wait_site_online(hub, name, timeout=90)
        yield fed


def wait_until(check: object, timeout: float = 60, interval: float = 0.25) -> object:
    """Poll ``check()`` until it returns something truthy; returns it."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()  # type: ignore[operator]
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
