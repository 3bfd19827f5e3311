"""Throughput through a site agent's SSH tunnel vs the same edge proxy's direct path.

One edge proxy (a real ``python -m fedhub.edge_proxy`` process), one nginx serving static
files, and one site agent's tunnel to that nginx: the agent side is the real
``TunnelManager`` (asyncssh, AES-GCM, the agent's enrolled key, the proxy's pinned host
key) in its own process. Two routes lead to the same nginx: ``/user/bench/`` by an
``http://`` target (direct) and ``/user/bench/t/`` by ``tunnel://benchsite/bench.t``. wrk
runs both in the same repetition (direct, tunnel, tunnel, direct); the figures are medians
of the per-repetition tunnel/direct ratios. A large download (curl) gives MB/s both ways.

    python bench/tunnel_bench.py [--reps 3] [--seconds 3] [--profile]   # standalone
    python bench/suite.py --only tunnel                                    # in the suite
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, Procs, cpu_seconds, log, wait_http, wrk  # noqa: E402
from fedlog import USER, FedLog  # noqa: E402
from services import start_edge_proxy, start_nats, start_static  # noqa: E402

from fedhub.events.envelope import new_event  # noqa: E402
from fedhub.events.signing import SigningKey  # noqa: E402
from fedhub.schemas import subjects  # noqa: E402
from fedhub.schemas.config import loop_factory  # noqa: E402
from fedhub.schemas.events import KeyPublished, RouteAdded  # noqa: E402
from fedhub.schemas.names import server_key, server_prefix, subject_token  # noqa: E402

SITE = "benchsite"
SERVER = "t"
Results = dict[str, list[Any]]


def download(url: str, token: str) -> tuple[int, float]:
    """Bytes and seconds of one GET with curl (a C client: no Python on the client side)."""
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-H", f"Authorization: token {token}",
                          "-w", "%{http_code} %{size_download} %{time_total}", url],
                         capture_output=True, text=True, timeout=600)
    code, size, secs = out.stdout.split()
    if code != "200":
        raise RuntimeError(f"download of {url} answered {code}: {out.stderr[-300:]}")
    return int(size), float(secs)


async def _write_log(nats: str, be: str, agent: SigningKey) -> str:
    """Keys, the user, a direct route and a tunnelled route; returns an API token."""
    flog = await FedLog.create(nats)
    enrolled = KeyPublished(kid=agent.kid, public_key=agent.public_b64, role="site-agent",
                            name=SITE)
    tunnelled = RouteAdded(prefix=server_prefix(USER, SERVER), user=USER, server=SERVER,
                           site=SITE,
                           target=f"tunnel://{subject_token(SITE)}/{server_key(USER, SERVER)}")
    await flog.append_many([
        new_event(subjects.key(agent.kid), enrolled, actor="coordinator", signer=flog.key),
        flog.route_event(USER, "", be),
        new_event(subjects.route(USER, SERVER), tunnelled, actor="coordinator",
                  signer=flog.key),
    ], concurrency=1)
    token = flog.token()
    await flog.close()
    return token


class Rig:
    """nginx, NATS, the edge proxy and the agent, started; URLs of both routes."""

    def __init__(self, procs: Procs, root: Path, big_bytes: int) -> None:
        backend = start_static(procs, root, {"1k.bin": 1024, "64k.bin": 65536,
                                             "big.bin": big_bytes})
        be = f"http://127.0.0.1:{backend.port}"
        nats = start_nats(procs, root, "nats-tunnel")
        agent_key = SigningKey.generate()
        self.token = asyncio.run(_write_log(nats, be, agent_key))
        self.auth = {"Authorization": f"token {self.token}"}
        self.proxy = start_edge_proxy(procs, root, nats, be, "edge-tunnel")
        pem = root / "agent-key.pem"
        pem.touch(mode=0o600)
        pem.write_text(agent_key.private_pem())
        self.agent = procs.start("tunnel-agent", [sys.executable, __file__, "agent", nats,
                                                  str(pem), f"{be}/"], root / "agent.log")
        base = f"http://127.0.0.1:{self.proxy.port}/user/{USER}"
        self.urls = {"direct": f"{base}/%s", "tunnel": f"{base}/{SERVER}/%s"}
        for url in self.urls.values():
            # is the tunnel up?
            wait_http(url % "1k.bin", headers={"Authorization": f"token {self.token}"})


def run(cfg: dict[str, Any], procs: Procs, root: Path, R: Results) -> None:
    """The suite's stage: fills R with ``tunnel.*`` figures."""
    reps, secs = cfg["reps"], cfg["wrk_seconds"]
    big = int(cfg.get("tunnel_big_mib", 100)) << 20
    rig = Rig(procs, root, big)
    pids = {"proxy": rig.proxy.pid, "agent": rig.agent.pid}
    for name in ("direct", "tunnel"):  # warm-up; also proves each path works
        res = wrk(rig.urls[name] % "1k.bin", 8, 1, rig.auth)
        if res["non2xx"] or res["errors"] or res["requests"] < 10:
            raise RuntimeError(f"{name} is not serving: {res}")
    # Each repetition runs direct, tunnel, tunnel, direct (half the time each): a load that
    # rises or falls steadily during the repetition weighs on both paths alike.
    half = max(1, math.ceil(secs / 2))  # wrk takes whole seconds
    log(f"tunnel vs direct: {reps} reps x {secs} s (direct, tunnel, tunnel, direct)")
    for rep in range(reps):
        for conns in (64, 1):
            for size in ("1k", "64k"):
                k = f"c{conns}.{size}"
                done = {"direct": [0, 0.0], "tunnel": [0, 0.0]}  # requests, seconds
                cpu = {(p, n): 0.0 for p in pids for n in done}
                for name in ("direct", "tunnel", "tunnel", "direct"):
                    cpu0 = {p: cpu_seconds(pid) for p, pid in pids.items()}
                    res = wrk(rig.urls[name] % f"{size}.bin", conns, half, rig.auth)
                    done[name][0] += res["requests"]
                    done[name][1] += res["duration_us"] / 1e6
                    for p, pid in pids.items():
                        cpu[p, name] += cpu_seconds(pid) - cpu0[p]
                    if res["errors"] or res["non2xx"]:
                        R.setdefault(f"tunnel.errors.{name}.{k}", []).append(
                            res["errors"] + res["non2xx"])
                rps = {n: reqs / max(1e-9, took) for n, (reqs, took) in done.items()}
                for name in done:
                    R.setdefault(f"tunnel.rps.{name}.{k}", []).append(rps[name])
                    for p in pids:
                        R.setdefault(f"tunnel.cpu_us.{p}.{name}.{k}", []).append(
                            cpu[p, name] * 1e6 / max(1, done[name][0]))
                R.setdefault(f"tunnel.ratio.{k}", []).append(rps["tunnel"] / rps["direct"])
        log(f"  rep {rep + 1}: " + ", ".join(
            f"{k} {R[f'tunnel.ratio.{k}'][-1]:.2f}x" for k in
            ("c64.1k", "c64.64k", "c1.1k", "c1.64k")))
    log(f"large download ({big >> 20} MiB), {reps} reps")
    for rep in range(reps):
        mbps = {}
        for name in (("direct", "tunnel") if rep % 2 == 0 else ("tunnel", "direct")):
            cpu0 = {p: cpu_seconds(pid) for p, pid in pids.items()}
            size, secs_taken = download(rig.urls[name] % "big.bin", rig.token)
            if size != big:
                raise RuntimeError(f"{name} download got {size} of {big} bytes")
            mbps[name] = size / 2**20 / secs_taken
            R.setdefault(f"tunnel.mibps.{name}", []).append(mbps[name])
            for p, pid in pids.items():
                R.setdefault(f"tunnel.cpu_s_per_gib.{p}.{name}", []).append(
                    (cpu_seconds(pid) - cpu0[p]) * 2**30 / size)
        R.setdefault("tunnel.ratio.download", []).append(mbps["tunnel"] / mbps["direct"])
        log(f"  rep {rep + 1}: direct {mbps['direct']:.0f} MiB/s, "
            f"tunnel {mbps['tunnel']:.0f} MiB/s")
    R["tunnel.meta.big_mib"] = [big >> 20]


def profile(procs: Procs, root: Path, seconds: int, conns: int, size: str) -> None:
    """py-spy on the proxy and the agent while wrk loads the tunnelled route."""
    from profile_proxy import summarize

    rig = Rig(procs, root, 1 << 20)
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    spies = {}
    for name, pid in (("proxy", rig.proxy.pid), ("agent", rig.agent.pid)):
        spies[name] = subprocess.Popen(
            ["py-spy", "record", "-p", str(pid), "-r", "200", "-d", str(seconds + 1),
             "-f", "raw", "-o", str(out / f"profile-tunnel-{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    res = wrk(rig.urls["tunnel"] % f"{size}.bin", conns, seconds, rig.auth)
    print(f"tunnel c{conns} {size}: {res['rps']:.0f} req/s")
    for name, spy in spies.items():
        spy.wait()
        print(f"=== {name}")
        summarize(out / f"profile-tunnel-{name}.txt")


async def agent_main(nats: str, key: SigningKey, target: str) -> None:
    """The agent side: the real TunnelManager forwarding one server to ``target``."""
    from fedhub.events.jetstream import JetStreamStore
    from fedhub.site_agent.keys import KeyBook
    from fedhub.site_agent.tunnel import TunnelManager

    store = await JetStreamStore.connect(nats, name="bench-agent")
    keys = KeyBook(Path(tempfile.mkdtemp(prefix="bench-agent-")) / "trusted-keys.json")
    manager = TunnelManager(SITE, key, store, keys)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    following = asyncio.gather(keys.follow(store), manager.run())
    await manager.add_server(server_key(USER, SERVER), target, {}, wait=0)
    await stop.wait()
    following.cancel()
    await manager.close()
    await store.close()


def main() -> None:
    if sys.argv[1:2] == ["agent"]:
        nats, pem, target = sys.argv[2:5]
        with asyncio.Runner(loop_factory=loop_factory()) as runner:  # as the real agent's
            runner.run(agent_main(nats, SigningKey.from_pem(Path(pem).read_text()), target))
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=100)
    ap.add_argument("--profile", action="store_true", help="py-spy both sides instead")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--size", default="64k")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fedhub-tunnel-bench-"))
    procs = Procs()
    try:
        if args.profile:
            profile(procs, root, max(args.seconds, 5), args.conns, args.size)
            return
        results: Results = {}
        run({"reps": args.reps, "wrk_seconds": args.seconds, "tunnel_big_mib": args.big_mib},
            procs, root, results)
        print(json.dumps(results, indent=1))
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
