"""Network namespaces as test hosts: a namespace joined to this one by a veth pair.

    with netns("sshd") as ns:                    # or netns("sshd", "10.200.7.1", "10.200.7.2")
        proc = ns.popen(["/usr/sbin/sshd", "-D", ...])
        ns.run(["ip", "addr"])                   # runs under ``ip netns exec``
        connect_to(ns.ns_ip)                     # reachable from this namespace

Each namespace gets a unique name per test run (``fh-<name>-<pid>-<random>``) and is always
removed on exit, together with every process still running inside it; namespaces left by
a test process that was killed outright are removed the next time one is made. Without explicit
addresses a free /30 from 10.200.0.0/16 is chosen (one not present on any interface here),
so parallel test runs and other suites don't collide. Needs root and ``ip`` (iproute2);
:func:`unavailable` says why not.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

POOL = ipaddress.IPv4Network("10.200.0.0/16")


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    probe = f"fh-probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout
    nets = []
    for line in out.splitlines():
        words = line.split()
        if "inet" in words:
            nets.append(ipaddress.IPv4Interface(words[words.index("inet") + 1]).network)
    return nets


def free_subnet() -> tuple[str, str]:
    """A /30 from 10.200.0.0/16 that no interface here uses: (host address, ns address)."""
    used = _used_networks()
    subnets = list(POOL.subnets(new_prefix=30))
    for _ in range(200):
        net = random.choice(subnets)
        if not any(net.overlaps(u) for u in used):
            a, b = list(net.hosts())
            return str(a), str(b)
    raise RuntimeError("no free /30 left in 10.200.0.0/16")


@dataclass
class Netns:
    """A live namespace: ``name``, the veth addresses on both sides, helpers to run in it."""

    name: str
    host_ip: str
    ns_ip: str
    host_if: str
    ns_if: str
    prefixlen: int = 30
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` prefixed to run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the namespace (check=True unless told otherwise)."""
        kwargs.setdefault("check", True)
        return subprocess.run(self.argv(argv), **kwargs)

    def popen(self, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside the namespace; killed when the namespace goes."""
        proc = subprocess.Popen(self.argv(argv), **kwargs)
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        """Every process running in the namespace (the pid namespace is shared)."""
        out = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True,
                             text=True).stdout
        return [int(p) for p in out.split()]

    def set_link(self, up: bool) -> None:
        """Cut (or restore) the wire: packets stop flowing, connections hang."""
        subprocess.run(["ip", "link", "set", self.host_if, "up" if up else "down"], check=True)


def _sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True)


@contextmanager
def netns(name: str, host_ip: str | None = None, ns_ip: str | None = None,
          prefixlen: int = 30) -> Iterator[Netns]:
    """Create a namespace with a veth pair, ``host_ip`` here and ``ns_ip`` inside (both
    chosen from a free /30 when omitted); always torn down, processes inside killed."""
    if (host_ip is None) != (ns_ip is None):
        raise ValueError("give both addresses or neither")
    if host_ip is None or ns_ip is None:
        host_ip, ns_ip = free_subnet()
    sweep_stale()
    tag = uuid.uuid4().hex[:6]
    ns = Netns(name=f"fh-{name}-{os.getpid()}-{tag}", host_ip=host_ip, ns_ip=ns_ip,
               host_if=f"fh{tag}h", ns_if=f"fh{tag}n", prefixlen=prefixlen)
    try:
        _sh("ip", "netns", "add", ns.name)
        _sh("ip", "link", "add", ns.host_if, "type", "veth", "peer", "name", ns.ns_if)
        _sh("ip", "link", "set", ns.ns_if, "netns", ns.name)
        _sh("ip", "addr", "add", f"{host_ip}/{prefixlen}", "dev", ns.host_if)
        _sh("ip", "link", "set", ns.host_if, "up")
        ns.run(["ip", "addr", "add", f"{ns_ip}/{prefixlen}", "dev", ns.ns_if],
               capture_output=True)
        ns.run(["ip", "link", "set", ns.ns_if, "up"], capture_output=True)
        ns.run(["ip", "link", "set", "lo", "up"], capture_output=True)
        yield ns
    finally:
        _teardown(ns)


def sweep_stale() -> None:
    """Remove namespaces made here by test processes that no longer exist."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) < 4 or parts[0] != "fh" or not parts[-2].isdigit():
            continue
        try:
            os.kill(int(parts[-2]), 0)
        except ProcessLookupError:
            stale = Netns(name=name, host_ip="", ns_ip="", host_if="", ns_if="")
            _teardown(stale)
        except PermissionError:
            pass


def _teardown(ns: Netns) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in ns.procs:
            if proc.poll() is None:
                proc.send_signal(sig)
        for pid in ns.pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while ns.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not ns.pids():
            break
    for proc in ns.procs:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    if ns.host_if:
        subprocess.run(["ip", "link", "del", ns.host_if], capture_output=True)
    subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)
