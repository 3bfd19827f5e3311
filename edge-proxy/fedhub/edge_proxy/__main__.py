"""``python -m fedhub.edge_proxy`` (and ``fedhub edge-proxy``): run one edge proxy."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

from fedhub.edge_proxy.proxy import EdgeProxy
from fedhub.edge_proxy.settings import EdgeProxySettings
from fedhub.events.errors import StoreUnavailable
from fedhub.schemas.config import ConfigError, load_settings, loop_factory

log = logging.getLogger("fedhub.edge_proxy")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line options; each overrides the config file and FEDHUB_* variables."""
    parser = argparse.ArgumentParser(
        prog="fedhub edge-proxy", description="Run a fedhub edge proxy.")
    parser.add_argument("--config", type=Path, help="TOML file ([edge_proxy] table)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--hub-url", help="the coordinator, e.g. http://127.0.0.1:8081")
    parser.add_argument("--nats-url")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--name", help="this proxy instance's name")
    parser.add_argument("--tunnel-host", help="where agents' SSH tunnels connect")
    parser.add_argument("--tunnel-port", type=int, help="0: a free port, -1: no tunnels")
    parser.add_argument("--tunnel-advertise-host", help="the host agents dial (default: "
                        "--tunnel-host)")
    return parser.parse_args(argv)


async def serve(settings: EdgeProxySettings) -> None:
    """Run until SIGINT or SIGTERM, then shut down cleanly."""
    from fedhub.events.jetstream import JetStreamStore

    store = await JetStreamStore.connect(settings.nats_url, name=f"edge-proxy-{settings.name}")
    proxy = EdgeProxy(settings, store)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await proxy.start()
        # The rebuilt state lives as long as the process: keep the cyclic GC from walking
        # it again and again (with many routes, full collections slowed requests down).
        gc.freeze()
        log.info("edge proxy listening on %s (%d routes)", proxy.url, len(proxy.state.routes))
        await stop.wait()
        log.info("edge proxy shutting down")
    finally:
        await proxy.stop()
        await store.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code (2 for unusable settings)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings(
            EdgeProxySettings, args.config, host=args.host, port=args.port,
            hub_url=args.hub_url, nats_url=args.nats_url, data_dir=args.data_dir, name=args.name,
            tunnel_host=args.tunnel_host, tunnel_port=args.tunnel_port,
            tunnel_advertise_host=args.tunnel_advertise_host,
        )
    except ConfigError as exc:
        print(f"fedhub edge-proxy: {exc}", file=sys.stderr)
        return 2
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(settings))
    except StoreUnavailable as exc:
        print(f"fedhub edge-proxy: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"fedhub edge-proxy: cannot listen on {settings.host}:{settings.port} (or the "
              f"tunnel endpoint {settings.tunnel_host}:{settings.tunnel_port}): {exc}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
