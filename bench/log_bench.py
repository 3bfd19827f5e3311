"""The event log: ``fedhub audit`` replaying a large log, and sustained signed appends.

JupyterHub keeps no event log, so these figures have no anchor; the table says so.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import Procs, log, pct
from services import start_nats

from fedhub.events.envelope import Envelope, new_event
from fedhub.events.errors import StoreUnavailable
from fedhub.events.jetstream import JetStreamStore
from fedhub.events.signing import SigningKey
from fedhub.schemas import subjects
from fedhub.schemas.events import KeyPublished, RouteAdded, UserLoggedIn
from fedhub.schemas.names import server_prefix

Results = dict[str, list[Any]]
DISTINCT = 20_000  # distinct signed events; the log repeats them up to its size


def _events(key: SigningKey) -> list[bytes]:
    out = []
    for i in range(DISTINCT):
        user, site = f"u{i % 1000:04d}", f"site{i % 10}"
        if i % 2:
            p: Any = RouteAdded(prefix=server_prefix(user, ""), target="http://10.0.0.1:8888",
                                user=user, server="", site=site)
            subject = subjects.route(user, "")
        else:
            p = UserLoggedIn(name=user, session_id=f"s{i}", remote_addr="10.1.2.3")
            subject = subjects.login(user)
        out.append(new_event(subject, p, actor="coordinator", signer=key).encode())
    return out


async def grow(store: JetStreamStore, events: list[bytes], subjects_: list[str],
               target: int) -> None:
    """Publish (core NATS, pipelined) until the stream holds ``target`` messages."""
    nc = store._nc  # noqa: SLF001 - bulk loading needs the raw connection
    have = await store.last_seq()
    i = have
    while i < target:
        j = i % len(events)
        await nc.publish(subjects_[j], events[j])
        i += 1
        if i % 5000 == 0:
            await nc.flush()
            while await store.last_seq() < i - 20_000:  # noqa: ASYNC110 - polls the server
                await asyncio.sleep(0.01)
    await nc.flush()
    while await store.last_seq() < target:  # noqa: ASYNC110 - polls the server
        await asyncio.sleep(0.05)


def audit(nats_url: str, *args: str) -> tuple[float, float, int]:
    """Run ``fedhub audit``; returns (seconds, peak RSS MiB, rows printed)."""
    argv = [sys.executable, "-c", "import sys; from fedhub.coordinator.cli import main;"
            " sys.exit(main())", "audit", "--nats-url", nats_url, "--json", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rows = 0
    assert proc.stdout is not None
    for _ in proc.stdout:
        rows += 1
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    secs = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"fedhub audit failed: {proc.stderr.read().decode()[-500:]}")  # type: ignore[union-attr]
    return secs, usage.ru_maxrss / 1024, rows


async def appends(nats_url: str, seconds: float, inflight: int) -> tuple[float, list[float]]:
    """Signed appends with expected last subject sequence, ``inflight`` at once."""
    store = await JetStreamStore.connect(nats_url, name="bench-appends")
    key = SigningKey.generate()
    lat: list[float] = []
    deadline = time.perf_counter() + seconds
    count = 0

    async def worker(w: int) -> None:
        nonlocal count
        expected = 0
        user = f"w{os.getpid()}x{w}x{int(time.time())}"
        while time.perf_counter() < deadline:
            ev = new_event(subjects.server(user, ""),
                           UserLoggedIn(name=user, session_id=str(count)),
                           actor="coordinator", signer=key)
            t0 = time.perf_counter()
            try:
                expected = await store.append(ev, expected_seq=expected)
            except StoreUnavailable:
                continue
            lat.append((time.perf_counter() - t0) * 1000)
            count += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(inflight)))
    rate = count / (time.perf_counter() - t0)
    await store.close()
    return rate, lat


async def _build(nats_url: str, size: int, key: SigningKey) -> None:
    """Grow the log to ``size`` events, all signed by ``key`` (published first), so that
    the audit verifies every one of them."""
    store = await JetStreamStore.connect(nats_url, name="bench-loader")
    kp = KeyPublished(kid=key.kid, public_key=key.public_b64, role="coordinator", name="bench")
    if await store.last_seq() == 0:
        await store.append(new_event(subjects.key(key.kid), kp, actor="coordinator:bench",
                                     signer=key))
    t0 = time.perf_counter()
    events = _events(key)
    subs = [Envelope.model_validate_json(e).subject for e in events]
    log(f"  {DISTINCT} signed events made in {time.perf_counter() - t0:.1f}s; loading")
    await grow(store, events, subs, size)
    await store.close()


def run(cfg: dict[str, Any], procs: Procs, root: Path, R: Results) -> None:
    nats = start_nats(procs, root, "nats-audit")
    small = max(cfg["audit_events"] // 10, 10_000)
    key = SigningKey.generate()
    for size, tag in ((small, "small"), (cfg["audit_events"], "big")):
        log(f"audit log of {size} events")
        t0 = time.perf_counter()
        asyncio.run(_build(nats, size, key))
        log(f"  loaded in {time.perf_counter() - t0:.0f}s")
        reps = cfg.get("audit_reps", cfg["reps"]) if tag == "big" else 1
        for _ in range(reps):
            secs, rss, rows = audit(nats, "--user", "u0042")
            log(f"  audit of {size} events: {secs:.0f}s, peak RSS {rss:.0f} MiB")
            R.setdefault(f"audit_{tag}_eps", []).append(size / secs)
            R.setdefault(f"audit_{tag}_rss_mib", []).append(rss)
            R.setdefault(f"audit_{tag}_rows", []).append(rows)
        R[f"audit_{tag}_events"] = [size]
        if tag == "small":
            # Unfiltered, every event is decoded and verified: no subject filter can help,
            # so it runs on the small log only (at 1,000,000 it would take minutes).
            secs, _, rows = audit(nats)
            log(f"  unfiltered audit of {size} events: {secs:.0f}s, {rows} rows")
            R.setdefault("audit_small_all_eps", []).append(size / secs)
    nats2 = start_nats(procs, root, "nats-appends")
    log("sustained appends")
    for _ in range(cfg["reps"]):
        for inflight in (1, 32):
            rate, lat = asyncio.run(appends(nats2, cfg["append_seconds"], inflight))
            R.setdefault(f"append_eps.x{inflight}", []).append(rate)
            R.setdefault(f"append_p50_ms.x{inflight}", []).append(pct(lat, 50))
            R.setdefault(f"append_p99_ms.x{inflight}", []).append(pct(lat, 99))
