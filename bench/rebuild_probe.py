"""A fresh edge proxy's rebuild, timed: connect to the log, fold it, report JSON.

Runs in its own process so that its memory and its caches start cold, as a new proxy's do.
Route signatures are checked after the rebuild (before a route is first used, or in the
background once the proxy is ready); ``--check`` also times checking them all.

    python bench/rebuild_probe.py NATS_URL [--check]
"""

import asyncio
import json
import resource
import sys
import time


async def main(nats_url: str, check: bool) -> None:
    t_import = time.perf_counter()
    from fedhub.edge_proxy.state import ProxyState
    from fedhub.edge_proxy.sync import rebuild
    from fedhub.events.jetstream import JetStreamStore

    t0 = time.perf_counter()
    store = await JetStreamStore.connect(nats_url, name="bench-rebuild", create_streams=False)
    t1, c1 = time.perf_counter(), time.process_time()
    state = ProxyState()
    await rebuild(store, state)
    t2, c2 = time.perf_counter(), time.process_time()
    await store.close()
    # CPU seconds resist the noise of a shared machine better than wall time.
    out = {"routes": len(state.routes), "rebuild_s": t2 - t1, "rebuild_cpu_s": c2 - c1,
           "connect_s": t1 - t0, "import_s": t0 - t_import,
           "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if check:
        unchecked = state.routes.unchecked
        c3 = time.process_time()
        while state.routes.check_some(1024):
            pass
        out.update(checked=unchecked, check_cpu_s=time.process_time() - c3,
                   routes_after_check=len(state.routes))
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main(sys.argv[1], "--check" in sys.argv[2:]))
