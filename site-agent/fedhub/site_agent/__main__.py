"""``python -m fedhub.site_agent`` (and ``fedhub site-agent``): run one site's agent."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from fedhub.events.errors import StoreUnavailable
from fedhub.schemas.bundle import BundleError
from fedhub.schemas.config import ConfigError, load_settings, loop_factory
from fedhub.site_agent.errors import BackendError
from fedhub.site_agent.settings import SiteAgentSettings


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, load settings, run the agent; returns the exit status."""
    parser = argparse.ArgumentParser(prog="fedhub site-agent", description=__doc__)
    parser.add_argument("--config", type=Path, help="TOML file ([site_agent] table)")
    parser.add_argument("--site", help="name of this site")
    parser.add_argument("--nats-url", help="NATS server to connect to")
    parser.add_argument("--data-dir", type=Path, help="keys, logs and notebooks live here")
    parser.add_argument("--credentials", type=Path,
                        help="the site's bundle from `fedhub site add` (site, NATS user, key)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(SiteAgentSettings, args.config, site=args.site,
                                 nats_url=args.nats_url, data_dir=args.data_dir,
                                 credentials=args.credentials)
    except ConfigError as exc:
        print(f"fedhub site-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from fedhub.site_agent.run import run_agent  # imports NATS only when actually running

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(run_agent(settings))
    except StoreUnavailable as exc:
        print(f"fedhub site-agent: cannot reach the event log: {exc}", file=sys.stderr)
        return 1
    except BundleError as exc:
        print(f"fedhub site-agent: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"fedhub site-agent: backend {settings.backend!r}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
