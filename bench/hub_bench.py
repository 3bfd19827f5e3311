"""Spawning and the users API: fedhub vs JupyterHub, the same trivial server for both.

Each repetition starts a fresh fedhub and a fresh JupyterHub in turn (alternating which
goes first), so neither measures the other's leftovers.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from pathlib import Path
from typing import Any

import aiohttp
from bare_burst import bare_burst
from common import Procs, log, pct
from hubs import Hub, kill_spawned, start_fedhub, start_jupyterhub

Results = dict[str, list[Any]]
PAGINATION = "application/jupyterhub-pagination+json"


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=1200))


async def create_users(hub: Hub, names: list[str], batch: int = 200) -> None:
    async with _session() as s:
        for i in range(0, len(names), batch):
            async with s.post(f"{hub.api}/users", headers=hub.headers(),
                              data=json.dumps({"usernames": names[i:i + batch]})) as r:
                if r.status not in (201, 409):
                    raise RuntimeError(f"{hub.name}: creating users: {r.status} "
                                       f"{(await r.text())[:300]}")
                await r.read()


async def user_token(s: aiohttp.ClientSession, hub: Hub, name: str) -> str:
    async with s.post(f"{hub.api}/users/{name}/tokens", headers=hub.headers(),
                      data=json.dumps({"note": "bench"})) as r:
        if r.status not in (200, 201):
            raise RuntimeError(f"{hub.name}: token for {name}: {r.status} {await r.text()}")
        return str((await r.json())["token"])


async def spawn(s: aiohttp.ClientSession, hub: Hub, name: str) -> float:
    """POST the spawn; seconds until the hub answers that it is ready (201)."""
    body = {"site": "local"} if hub.name == "fedhub" else {}
    t0 = time.perf_counter()
    async with s.post(f"{hub.api}/users/{name}/server", headers=hub.headers(),
                      data=json.dumps(body)) as r:
        text = await r.text()
        status = r.status
    if status == 202:  # pending: either hub may say so; follow the user model until ready
        while True:
            async with s.get(f"{hub.api}/users/{name}", headers=hub.headers()) as r:
                model = await r.json()
            server = (model.get("servers") or {}).get("")
            if server and server.get("ready"):
                break
            if not server or not server.get("pending") and not server.get("ready"):
                raise RuntimeError(f"{hub.name}: spawn {name} ended: {model}")
            await asyncio.sleep(0.05)
    elif status != 201:
        raise RuntimeError(f"{hub.name}: spawn {name}: {status} {text[:300]}")
    return time.perf_counter() - t0


async def stop_all(hub: Hub, names: list[str]) -> None:
    async with _session() as s:
        sem = asyncio.Semaphore(32)

        async def one(name: str) -> None:
            async with sem, s.delete(f"{hub.api}/users/{name}/server",
                                     headers=hub.headers()) as r:
                await r.read()

        await asyncio.gather(*(one(n) for n in names), return_exceptions=True)
    # Both hubs answer 202 when a stop is still under way: give them a moment to finish.
    await asyncio.sleep(2)


async def singles(hub: Hub, names: list[str], R: Results) -> None:
    """One spawn at a time: request to route live (the proxied URL answers 200)."""
    api_times, live_times = [], []
    async with _session() as s:
        for name in names:
            token = await user_token(s, hub, name)
            url = f"{hub.public}/user/{name}/api"
            t0 = time.perf_counter()
            api_times.append(await spawn(s, hub, name))
            while True:
                async with s.get(url, headers={"Authorization": f"token {token}"},
                                 allow_redirects=False) as r:
                    await r.read()
                    if r.status == 200:
                        break
                await asyncio.sleep(0.002)
            live_times.append(time.perf_counter() - t0)
    R.setdefault(f"spawn1_live_p50_s.{hub.name}", []).append(pct(live_times, 50))
    R.setdefault(f"spawn1_api_p50_s.{hub.name}", []).append(pct(api_times, 50))
    await stop_all(hub, names)


async def burst(hub: Hub, names: list[str], R: Results) -> None:
    async with _session() as s:
        t0 = time.perf_counter()
        got = await asyncio.gather(*(spawn(s, hub, n) for n in names), return_exceptions=True)
        wall = time.perf_counter() - t0
    ok = [g for g in got if isinstance(g, float)]
    failed = [g for g in got if not isinstance(g, float)]
    n = len(names)
    R.setdefault(f"burst{n}_ok.{hub.name}", []).append(len(ok))
    if failed:
        R.setdefault(f"burst{n}_error.{hub.name}", []).append(str(failed[0])[:200])
    R.setdefault(f"burst{n}_wall_s.{hub.name}", []).append(wall if not failed else None)
    R.setdefault(f"burst{n}_p50_s.{hub.name}", []).append(pct(ok, 50) if ok else None)
    R.setdefault(f"burst{n}_p99_s.{hub.name}", []).append(pct(ok, 99) if ok else None)
    log(f"  {hub.name} burst {n}: {len(ok)}/{n} ok, wall {wall:.1f}s")
    await stop_all(hub, names)
    kill_spawned(hub)


async def users_api(hub: Hub, total: int, n: int, R: Results) -> None:
    lat = []
    async with _session() as s:
        for _ in range(n):
            offset = random.randrange(0, total - 50)
            t0 = time.perf_counter()
            async with s.get(f"{hub.api}/users", params={"offset": offset, "limit": 50},
                             headers={**hub.headers(), "Accept": PAGINATION}) as r:
                body = await r.json()
                if r.status != 200 or len(body["items"]) != 50:
                    raise RuntimeError(f"{hub.name}: GET users: {r.status}")
            lat.append((time.perf_counter() - t0) * 1000)
    R.setdefault(f"users_p50_ms.{hub.name}", []).append(pct(lat, 50))
    R.setdefault(f"users_p99_ms.{hub.name}", []).append(pct(lat, 99))


def run(cfg: dict[str, Any], procs: Procs, root: Path, R: Results) -> None:
    starters = {"fedhub": start_fedhub, "jupyterhub": start_jupyterhub}
    order = ["fedhub", "jupyterhub"]
    for rep in range(cfg["burst_reps"]):
        bursts = [b for b in cfg["bursts"] if rep < cfg.get(f"reps_burst{b}", 99)]
        for name in (order if rep % 2 == 0 else order[::-1]):
            hub = starters[name](procs, root / f"{name}-{rep}")
            try:
                everyone = [f"a{i}" for i in range(cfg["spawn_singles"])]
                for b in bursts:
                    everyone += [f"b{b}x{i}" for i in range(b)]
                asyncio.run(create_users(hub, everyone))
                log(f"{name} rep {rep + 1}: single spawns")
                asyncio.run(singles(hub, [f"a{i}" for i in range(cfg["spawn_singles"])], R))
                for b in bursts:
                    asyncio.run(burst(hub, [f"b{b}x{i}" for i in range(b)], R))
            finally:
                kill_spawned(hub)
                for p in reversed(hub.procs):
                    procs.stop(p, timeout=60)  # type: ignore[arg-type]
                procs.stop_all()  # its nats-server too
        for b in bursts:  # the floor: the same servers with no hub at all
            wall, cpu = asyncio.run(bare_burst(b))
            R.setdefault(f"burst{b}_wall_s.bare", []).append(wall)
            R.setdefault(f"burst{b}_server_cpu_s.bare", []).append(cpu)
            log(f"  no hub: {b} bare servers all up in {wall:.1f}s")
    log(f"users API with {cfg['users']} users")
    hubs = [start_fedhub(procs, root / "fedhub-users"),
            start_jupyterhub(procs, root / "jupyterhub-users")]
    names = [f"v{i:05d}" for i in range(cfg["users"])]
    for hub in hubs:
        t0 = time.perf_counter()
        asyncio.run(create_users(hub, names))
        R.setdefault(f"create_users_s.{hub.name}", []).append(time.perf_counter() - t0)
    for rep in range(cfg["reps"]):
        for hub in (hubs if rep % 2 == 0 else hubs[::-1]):
            asyncio.run(users_api(hub, cfg["users"], cfg["users_requests"], R))
