"""Profile the edge proxy under wrk load, or a fresh rebuild, with py-spy.

    python bench/profile_proxy.py http [--size 1k] [--seconds 10]   # flat profile of requests
    python bench/profile_proxy.py rebuild [--routes 10000]             # flat profile of a rebuild

Prints py-spy's top functions (by own time and by total) and writes a speedscope file
under bench/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, Procs, cpu_seconds, user_sys  # noqa: E402
from fedlog import USER, FedLog  # noqa: E402
from services import start_backend, start_edge_proxy, start_nats  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["http", "rebuild", "tput"])
    ap.add_argument("--size", default="1k")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--routes", type=int, default=10_000)
    ap.add_argument("--native", action="store_true", help="http: include C frames (uvloop)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fedhub-profile-"))
    out = BENCH / "out"
    out.mkdir(exist_ok=True)
    procs = Procs()
    try:
        backend = start_backend(procs, root)
        be = f"http://127.0.0.1:{backend.port}"
        nats = start_nats(procs, root, "nats")

        async def setup() -> str:
            flog = await FedLog.create(nats)
            await flog.append_many([flog.route_event(USER, "", be)])
            if args.what == "rebuild":
                await flog.filler_routes(0, args.routes, be)
            token = flog.token()
            await flog.close()
            return token

        token = asyncio.run(setup())
        if args.what == "tput":  # no profiler: quick before/after throughput
            proxy = start_edge_proxy(procs, root, nats, be, "edge")
            for size in ("1k", "64k"):
                url = f"http://127.0.0.1:{proxy.port}/user/{USER}/{size}.bin"
                for _ in range(3):
                    cpu0 = cpu_seconds(proxy.pid)
                    split0 = user_sys(proxy.pid)
                    out = subprocess.run(["wrk", "-t1", f"-c{args.conns}", f"-d{args.seconds}s",
                                          "-H", f"Authorization: token {token}", url],
                                         capture_output=True, text=True).stdout
                    cpu = cpu_seconds(proxy.pid) - cpu0
                    rps = [ln for ln in out.splitlines() if "Requests/sec" in ln]
                    n = float(rps[0].split()[-1]) * args.seconds if rps else 1
                    split1 = user_sys(proxy.pid)
                    user, system = split1[0] - split0[0], split1[1] - split0[1]
                    print(size, rps[0] if rps else out[-300:],
                          f"cpu/req {cpu / n * 1e6:.0f} us (user {user / n * 1e6:.0f},"
                          f" system {system / n * 1e6:.0f})", flush=True)
        elif args.what == "http":
            proxy = start_edge_proxy(procs, root, nats, be, "edge")
            url = f"http://127.0.0.1:{proxy.port}/user/{USER}/{args.size}.bin"
            native = ["--native"] if args.native else []
            spy = subprocess.Popen(["py-spy", "record", *native, "-p", str(proxy.pid), "-r", "200",
                                    "-d", str(args.seconds + 1), "-f", "raw",
                                    "-o", str(out / "profile-http.txt")])
            time.sleep(0.5)
            subprocess.run(["wrk", "-t1", f"-c{args.conns}", f"-d{args.seconds}s",
                            "-H", f"Authorization: token {token}", url])
            spy.wait()
            summarize(out / "profile-http.txt")
        else:
            prof = out / "profile-rebuild.txt"
            subprocess.run(["py-spy", "record", "-r", "500", "-f", "raw", "-o", str(prof),
                            "--", sys.executable, str(BENCH / "rebuild_probe.py"), nats])
            summarize(prof)
    finally:
        procs.stop_all()


def summarize(path: Path, top: int = 25) -> None:
    """Own and total sample counts per function from py-spy's raw (collapsed) output."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            total[f] = total.get(f, 0) + n
    print(f"{samples} samples")
    print("--- own time")
    for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]:
        print(f"{100 * n / samples:5.1f}%  {f}")
    print("--- total time")
    for f, n in sorted(total.items(), key=lambda x: -x[1])[:top]:
        print(f"{100 * n / samples:5.1f}%  {f}")


if __name__ == "__main__":
    main()
