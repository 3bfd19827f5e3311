"""fedhub's benchmark suite: runs fedhub and its anchors side by side, prints one table.

    python bench/suite.py [--quick] [--only proxy,tunnel,log,hub] [--results FILE]

Reports; asserts nothing about time. Raw figures go to bench/out/raw.json, the table to
stdout and (with --results) to a Markdown file.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, Procs, dump, log, machine  # noqa: E402

FULL = {"reps": 3, "wrk_seconds": 3, "ws_messages": 2000, "ws_reps": 9, "route_pairs": 16,
        "routes_mid": 10_000,
        "routes_big": 100_000, "route_samples": 200, "audit_events": 1_000_000,
        "append_seconds": 10, "spawn_singles": 10, "bursts": [100, 500], "burst_reps": 3,
        "users": 10_000, "users_requests": 300,
        # the slowest items (minutes each) run fewer times to keep the suite under 30 min
        "audit_reps": 1, "rebuild_big_reps": 2, "reps_burst500": 2, "tunnel_big_mib": 100}
QUICK = {"reps": 1, "wrk_seconds": 1, "ws_messages": 500, "ws_reps": 2, "route_pairs": 2,
         "routes_mid": 10_000,
         "routes_big": 100_000, "route_samples": 100, "audit_events": 200_000,
         "append_seconds": 3, "spawn_singles": 5, "bursts": [100], "burst_reps": 1,
         "users": 2_000, "users_requests": 100,
         "audit_reps": 1, "rebuild_big_reps": 1, "reps_burst500": 1, "tunnel_big_mib": 100}
STAGES = ("proxy", "tunnel", "log", "hub")


def anchors() -> str:
    """Versions of what fedhub is compared with."""
    import subprocess

    def out(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    chp = json.loads((BENCH / "node_modules" / "configurable-http-proxy" / "package.json")
                     .read_text()).get("version", "?") if (BENCH / "node_modules").exists() else "?"
    jh = out([str(BENCH / ".venv-jupyterhub" / "bin" / "jupyterhub"), "--version"])
    return (f"configurable-http-proxy {chp} (node {out(['node', '--version'])}), "
            f"JupyterHub {jh}, {out(['nginx', '-v'])}, {out(['wrk', '-v']).split(' Copyright')[0]}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one repetition, smaller sizes")
    ap.add_argument("--only", default=",".join(STAGES), help="stages: proxy,tunnel,log,hub")
    ap.add_argument("--results", type=Path, help="also write the Markdown report here")
    ap.add_argument("--raw", type=Path, default=BENCH / "out" / "raw.json")
    ap.add_argument("--report-only", action="store_true", help="re-print from --raw")
    ap.add_argument("--merge", action="store_true",
                    help="run only --only's stages and replace their figures in --raw")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override one setting, e.g. --set reps=5")
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    for item in args.set:
        key, _, value = item.partition("=")
        cfg[key] = json.loads(value)
    import report

    if args.report_only:
        data = json.loads(args.raw.read_text())
    else:
        previous = json.loads(args.raw.read_text()) if args.merge else None
        data = {"config": cfg, "quick": args.quick, "machine": machine(),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "results": {}, "failures": {}, "durations": {}}
        data["versions"] = {"anchors": anchors()}
        stages = [s for s in args.only.split(",") if s]
        root = Path(tempfile.mkdtemp(prefix="fedhub-bench-"))
        t_start = time.monotonic()
        try:
            for stage in stages:
                procs = Procs()
                t0 = time.monotonic()
                log(f"stage {stage} (work dir {root / stage})")
                try:
                    module = __import__(f"{stage}_bench")
                    module.run(cfg, procs, root / stage, data["results"])
                except Exception as exc:  # noqa: BLE001 - the table says what failed
                    traceback.print_exc()
                    data["failures"][stage] = f"{type(exc).__name__}: {exc}"[:300]
                finally:
                    procs.stop_all()
                data["durations"][stage] = round(time.monotonic() - t0, 1)
        finally:
            data["durations"]["total"] = round(time.monotonic() - t_start, 1)
            if previous is not None:  # keep the other stages' figures from the earlier run
                prefixes = {"log": ("audit_", "append_eps", "append_p"), "tunnel": ("tunnel.",)}
                mine = tuple(p for s in stages for p in prefixes.get(s, ()))
                kept = {k: v for k, v in previous["results"].items()
                        if not (mine and k.startswith(mine))}
                kept.update(data["results"])
                previous["results"] = kept
                previous["durations"].update(
                    {k: v for k, v in data["durations"].items() if k != "total"})
                previous["durations"]["total"] = sum(
                    v for k, v in previous["durations"].items() if k != "total")
                previous["failures"].update(data["failures"])
                previous.setdefault("reruns", []).append(
                    {"stages": stages, "date": data["date"]})
                data = previous
            args.raw.parent.mkdir(parents=True, exist_ok=True)
            dump(args.raw, data)
        if data["failures"]:
            log(f"kept the work dir for the failures: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    text = report.table(data)
    print(text)
    if args.results:
        args.results.write_text(report.markdown(data))
        dump(args.results.with_suffix(".json"), data)  # every sample, beside the table
        log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
