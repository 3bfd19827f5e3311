"""Edge proxy vs configurable-http-proxy vs nginx (reverse proxy) vs direct, same run.

Throughput and latency with wrk (keep-alive, 64 and 1 connections, 1 KiB and 64 KiB from
nginx static files), the proxy's CPU per request, 10,000 routes vs 1, WebSocket echo round
trips, route event to served, fresh rebuilds, resident memory with many routes.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import BENCH, Procs, cpu_seconds, log, pct, rss_mib, tree_cpu, wrk
from fedlog import USER, FedLog
from services import (
    chp_add_routes,
    start_backend,
    start_chp,
    start_edge_proxy,
    start_nats,
    start_nginx_proxy,
    start_ws_echo,
    wait_checked,
)

Results = dict[str, list[Any]]
WS_WARMUP = 50  # WebSocket messages sent before the timed ones


async def ws_rtts(url: str, headers: dict[str, str], n: int, size: int = 64) -> list[float]:
    """Round trips (µs) of ``n`` sequential messages on one WebSocket."""
    payload = "m" * size
    out: list[float] = []
    async with aiohttp.ClientSession() as s, s.ws_connect(url, headers=headers) as ws:
        for i in range(n + WS_WARMUP):
            t0 = time.perf_counter_ns()
            await ws.send_str(payload)
            msg = await ws.receive()
            dt = (time.perf_counter_ns() - t0) / 1000
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"echo failed: {msg.type}")
            if i >= WS_WARMUP:  # the first ones warm up connection and caches
                out.append(dt)
    return out


async def route_to_served(flog: FedLog, proxy_port: int, target: str, n: int, token: str,
                          tag: str) -> list[float]:
    """Append a RouteAdded, then poll the proxy until it serves the new route (ms each)."""
    out = []
    headers = {"Authorization": f"token {token}"}
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            server = f"{tag}{i}"
            url = f"http://127.0.0.1:{proxy_port}/user/{USER}/{server}/1k.bin"
            ev = flog.route_event(USER, server, target)
            t0 = time.perf_counter()
            await flog.store.append(ev)
            while True:
                async with s.get(url, headers=headers) as r:
                    await r.read()
                    if r.status == 200:
                        break
                await asyncio.sleep(0.0005)
            out.append((time.perf_counter() - t0) * 1000)
    return out


def rebuild_probe(nats_url: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, str(BENCH / "rebuild_probe.py"), nats_url],
                         capture_output=True, text=True, timeout=600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"rebuild probe failed: {out.stderr[-1500:]}")
    return dict(json.loads(lines[-1]))


def run(cfg: dict[str, Any], procs: Procs, root: Path, results: Results) -> None:
    asyncio.run(_run(cfg, procs, root, results))


async def _run(cfg: dict[str, Any], procs: Procs, root: Path, R: Results) -> None:
    reps, secs = cfg["reps"], cfg["wrk_seconds"]
    backend = start_backend(procs, root)
    be = f"http://127.0.0.1:{backend.port}"
    echo_port = start_ws_echo(procs, root)
    echo = f"http://127.0.0.1:{echo_port}"
    ngx = start_nginx_proxy(procs, root, backend.port)
    chp = start_chp(procs, root, be)
    await chp_add_routes(chp, [(f"/user/{USER}", be), (f"/user/{USER}/ws", echo)])

    log(f"writing the logs (1 route and {cfg['routes_mid']} routes)")
    nats1 = start_nats(procs, root, "nats-1route")
    nats2 = start_nats(procs, root, "nats-manyroutes")
    log1 = await FedLog.create(nats1)
    await log1.append_many([log1.route_event(USER, "", be), log1.route_event(USER, "ws", echo)])
    log2 = await FedLog.create(nats2)
    await log2.append_many([log2.route_event(USER, "", be), log2.route_event(USER, "ws", echo)])
    t0 = time.perf_counter()
    await log2.filler_routes(0, cfg["routes_mid"] - 2, be)
    R["append_bulk_eps"] = [(cfg["routes_mid"] - 2) / (time.perf_counter() - t0)]
    fed = start_edge_proxy(procs, root, nats1, be, "edge-1route")
    fed10k = start_edge_proxy(procs, root, nats2, be, "edge-manyroutes")
    token1, token2 = log1.token(), log2.token()
    for proxy in (fed, fed10k):  # steady state: every rebuilt route signature-checked
        wait_checked(proxy.port)

    targets = {
        "direct": (f"{be}/user/{USER}/%s", None, {}),
        "chp": (f"http://127.0.0.1:{chp.port}/user/{USER}/%s", chp.pid, {}),
        "nginx": (f"http://127.0.0.1:{ngx.port}/user/{USER}/%s", ngx.proc_pid, {}),
        "fedhub": (f"http://127.0.0.1:{fed.port}/user/{USER}/%s", fed.pid,
                   {"Authorization": f"token {token1}"}),
        "fedhub10k": (f"http://127.0.0.1:{fed10k.port}/user/{USER}/%s", fed10k.pid,
                      {"Authorization": f"token {token2}"}),
    }
    for name, (url, _pid, headers) in targets.items():  # warm-up; also proves each path works
        res = wrk(url % "1k.bin", 8, 1, headers)
        if res["non2xx"] or res["errors"] or res["requests"] < 10:
            raise RuntimeError(f"{name} is not serving: {res}")

    # fedhub10k is measured in back-to-back pairs with fedhub below, not here.
    order = ["fedhub", "chp", "nginx", "direct"]
    log(f"HTTP throughput/latency: {reps} reps x {secs} s")
    for rep in range(reps):
        rotated = order[rep % 2:] + order[:rep % 2] if rep % 2 else order
        for conns in (64, 1):
            for size in ("1k", "64k"):
                for name in rotated:
                    url, pid, headers = targets[name]
                    cpu0 = (tree_cpu(pid) if name == "nginx" else cpu_seconds(pid)) if pid else 0
                    res = wrk(url % f"{size}.bin", conns, secs, headers)
                    cpu1 = (tree_cpu(pid) if name == "nginx" else cpu_seconds(pid)) if pid else 0
                    key = f"{name}.c{conns}.{size}"
                    R.setdefault(f"rps.{key}", []).append(res["rps"])
                    R.setdefault(f"lat_mean_us.{key}", []).append(res["lat_mean_us"])
                    R.setdefault(f"lat_p99_us.{key}", []).append(res["lat_p99_us"])
                    if res["errors"] or res["non2xx"]:
                        R.setdefault(f"errors.{key}", []).append(res["errors"] + res["non2xx"])
                    if pid:
                        R.setdefault(f"cpu_us.{key}", []).append(
                            (cpu1 - cpu0) * 1e6 / max(1, res["requests"]))
        log(f"  rep {rep + 1}: fedhub c64 1k {R['rps.fedhub.c64.1k'][-1]:.0f}/s, "
            f"chp {R['rps.chp.c64.1k'][-1]:.0f}/s, nginx {R['rps.nginx.c64.1k'][-1]:.0f}/s, "
            f"direct {R['rps.direct.c64.1k'][-1]:.0f}/s")

    pairs = cfg.get("route_pairs", 8)
    log(f"1 route vs {cfg['routes_mid']} routes: {pairs} back-to-back pairs x 2 s")
    for size in ("1k", "64k"):  # paired runs: this machine's speed drifts between reps
        for i in range(pairs):
            for name in (["fedhub", "fedhub10k"] if i % 2 == 0 else ["fedhub10k", "fedhub"]):
                url, pid, headers = targets[name]
                cpu0 = cpu_seconds(pid)
                res = wrk(url % f"{size}.bin", 64, 2, headers)
                R.setdefault(f"pair_rps.{name}.{size}", []).append(res["rps"])
                R.setdefault(f"pair_cpu_us.{name}.{size}", []).append(
                    (cpu_seconds(pid) - cpu0) * 1e6 / max(1, res["requests"]))

    log("WebSocket echo round trips")
    ws_targets = {
        "direct": (f"ws://127.0.0.1:{echo_port}/user/{USER}/ws/api/kernels/x/channels", {}),
        "chp": (f"ws://127.0.0.1:{chp.port}/user/{USER}/ws/api/kernels/x/channels", {}),
        "fedhub": (f"ws://127.0.0.1:{fed.port}/user/{USER}/ws/api/kernels/x/channels",
                   {"Authorization": f"token {token1}"}),
    }
    # Round trips are short and woken by a noisy scheduler: more, shorter alternating runs
    # than for throughput, each proxy compared with the direct run of its own repetition.
    for rep in range(cfg.get("ws_reps", reps)):
        for name in (["fedhub", "direct", "chp"] if rep % 2 == 0 else ["chp", "direct", "fedhub"]):
            url, headers = ws_targets[name]
            pid = {"chp": chp.pid, "fedhub": fed.pid}.get(name)
            cpu0 = cpu_seconds(pid) if pid else 0.0
            rtts = await ws_rtts(url, headers, cfg["ws_messages"])
            if pid:  # the proxy's own CPU per round trip (warm-up messages included)
                R.setdefault(f"ws_cpu_us.{name}", []).append(
                    (cpu_seconds(pid) - cpu0) * 1e6 / (cfg["ws_messages"] + WS_WARMUP))
            R.setdefault(f"ws_p50_us.{name}", []).append(pct(rtts, 50))
            R.setdefault(f"ws_p99_us.{name}", []).append(pct(rtts, 99))

    log(f"route event -> served, {cfg['routes_mid']} routes present; CHP REST add-route")
    await chp_add_routes(chp, [(f"/user/u{i:06d}", be) for i in range(cfg["routes_mid"] - 2)])
    for rep in range(reps):
        lat = await route_to_served(log2, fed10k.port, be, cfg["route_samples"], token2,
                                    f"r{rep}x")
        R.setdefault("route_served_p50_ms", []).append(pct(lat, 50))
        R.setdefault("route_served_p99_ms", []).append(pct(lat, 99))
        calls = await chp_add_routes(chp, [(f"/user/{USER}/r{rep}x{i}", be)
                                           for i in range(cfg["route_samples"])], concurrency=1)
        R.setdefault("chp_add_p50_ms", []).append(pct([c * 1000 for c in calls], 50))
        R.setdefault("chp_add_p99_ms", []).append(pct([c * 1000 for c in calls], 99))

    log(f"fresh rebuild with {cfg['routes_mid']} routes")
    for _ in range(reps):
        probe = rebuild_probe(nats2)
        R.setdefault("rebuild_mid_s", []).append(probe["rebuild_s"])
        R.setdefault("rebuild_mid_routes", []).append(probe["routes"])

    log(f"growing the log to {cfg['routes_big']} routes")
    fresh_rss = [rss_mib(fed.pid)]
    R["rss_1route_mib.fedhub"] = fresh_rss
    R["rss_1route_mib.chp"] = [rss_mib(chp.pid)]  # after 10k routes: noted in the report
    # A running proxy checks new routes' signatures in the background: stop it, so that it
    # does not compete with the fresh rebuilds below for this machine's two cores.
    procs.stop(fed10k.proc)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    await log2.filler_routes(cfg["routes_mid"] - 2, cfg["routes_big"] - 2, be)
    R["append_bulk_eps"].append((cfg["routes_big"] - cfg["routes_mid"])
                                / (time.perf_counter() - t0))
    for _ in range(cfg.get("rebuild_big_reps", reps)):
        probe = rebuild_probe(nats2)
        R.setdefault("rebuild_big_s", []).append(probe["rebuild_s"])
        R.setdefault("rebuild_big_routes", []).append(probe["routes"])
        R.setdefault("rebuild_big_probe_rss_mib", []).append(probe["maxrss_mib"])
    t0 = time.perf_counter()
    big = start_edge_proxy(procs, root, nats2, be, "edge-bigroutes", timeout=300)
    R["start_to_ready_big_s"] = [time.perf_counter() - t0]
    R["rss_big_ready_mib.fedhub"] = [rss_mib(big.pid)]
    R["checked_after_ready_big_s"] = [wait_checked(big.port)]
    await asyncio.sleep(1)
    R["rss_big_mib.fedhub"] = [rss_mib(big.pid)]
    res = wrk(targets["fedhub10k"][0].replace(str(fed10k.port), str(big.port)) % "1k.bin", 64,
              secs, {"Authorization": f"token {token2}"})
    R["rps.fedhubbig.c64.1k"] = [res["rps"]]
    await chp_add_routes(chp, [(f"/user/u{i:06d}", be)
                               for i in range(cfg["routes_mid"] - 2, cfg["routes_big"] - 2)])
    await asyncio.sleep(1)
    R["rss_big_mib.chp"] = [rss_mib(chp.pid)]
    R["meta.routes_mid"] = [cfg["routes_mid"]]
    R["meta.routes_big"] = [cfg["routes_big"]]
    await log1.close()
    await log2.close()
