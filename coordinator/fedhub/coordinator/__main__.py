"""``python -m fedhub.coordinator`` / ``fedhub coordinator``: run the coordinator."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import uvicorn

from fedhub.coordinator.app import create_app
from fedhub.coordinator.settings import CoordinatorSettings
from fedhub.schemas.config import ConfigError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedhub coordinator",
                                     description="Run the fedhub coordinator.")
    parser.add_argument("--config", type=Path, help="TOML file ([coordinator] table)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--host")
    parser.add_argument("--nats-url")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(CoordinatorSettings, args.config, port=args.port,
                                 host=args.host, nats_url=args.nats_url, data_dir=args.data_dir)
    except ConfigError as exc:
        print(f"fedhub coordinator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level="warning", loop="uvloop", http="httptools",
                forwarded_allow_ips=settings.trusted_proxies)
    return 0


if __name__ == "__main__":
    sys.exit(main())
